# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
from . import datasets  # registers the built-in datasets
from .dataset_mapper import PersonSearchDatasetMapper
from .datasets import person_annotation, query_record, set_metadata

__all__ = [
    "PersonSearchDatasetMapper",
    "datasets",
    "person_annotation",
    "query_record",
    "set_metadata",
]
