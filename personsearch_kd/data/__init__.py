# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
from . import datasets  # registers the built-in datasets
from .dataset_mapper import PersonSearchDatasetMapper
from .person_crops import PersonCropMapper, build_person_crop_train_loader
from .query_pairs import QueryPairMapper, build_query_pair_train_loader, query_gallery_pairs
from .datasets import person_annotation, query_record, set_metadata

__all__ = [
    "PersonCropMapper",
    "PersonSearchDatasetMapper",
    "QueryPairMapper",
    "build_person_crop_train_loader",
    "build_query_pair_train_loader",
    "datasets",
    "person_annotation",
    "query_gallery_pairs",
    "query_record",
    "set_metadata",
]
