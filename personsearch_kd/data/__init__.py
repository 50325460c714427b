# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
from . import datasets  # registers the built-in datasets
from .dataset_mapper import PersonSearchDatasetMapper
from .person_crops import PersonCropMapper, build_person_crop_train_loader
from .datasets import person_annotation, query_record, set_metadata

__all__ = [
    "PersonCropMapper",
    "PersonSearchDatasetMapper",
    "build_person_crop_train_loader",
    "datasets",
    "person_annotation",
    "query_record",
    "set_metadata",
]
