# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
# Importing this module registers the built-in datasets (see builtin.py). The helpers of
# records.py build the dicts of a user's own dataset (datasets/README.md, "Registering your own
# dataset").
from .builtin import register_mot_person_search
from .checks import AnnotationError
from .cuhk_sysu import load_cuhk_sysu, register_cuhk_sysu
from .mot import load_mot_person_search
from .prw import load_prw, register_prw
from .records import PERSON_SEARCH_EVALUATOR, person_annotation, query_record, set_metadata

__all__ = [
    "AnnotationError",
    "PERSON_SEARCH_EVALUATOR",
    "load_cuhk_sysu",
    "load_mot_person_search",
    "load_prw",
    "person_annotation",
    "query_record",
    "register_cuhk_sysu",
    "register_mot_person_search",
    "register_prw",
    "set_metadata",
]
