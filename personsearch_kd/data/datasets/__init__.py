# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
# Importing this module registers the built-in datasets (see builtin.py).
from .builtin import register_mot_person_search
from .cuhk_sysu import load_cuhk_sysu, register_cuhk_sysu
from .mot import load_mot_person_search
from .prw import load_prw, register_prw
from .records import PERSON_SEARCH_EVALUATOR
