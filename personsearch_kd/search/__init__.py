# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
# Index once, search many times: the persistent gallery index (numpy + faiss), its recall
# self-check, its sources (folders, globs, lists, videos), the fingerprint of the model it was
# built with, and the indexing of a gallery by one process or several.
from importlib.util import find_spec

from .gallery_index import GalleryIndex, GalleryIndexError
from .recall_check import check_recall
from .sources import (
    GallerySource,
    count_sources,
    expand_inputs,
    prefetch,
    read_source_image,
    read_sources,
    source_caption,
)

if find_spec("detectron2") is not None:
    from .fingerprint import model_fingerprint
    from .indexing import index_gallery, indexing_config, merge_shards, open_index

__all__ = [
    "GalleryIndex",
    "GalleryIndexError",
    "GallerySource",
    "check_recall",
    "count_sources",
    "expand_inputs",
    "index_gallery",
    "indexing_config",
    "merge_shards",
    "model_fingerprint",
    "open_index",
    "prefetch",
    "read_source_image",
    "read_sources",
    "source_caption",
]
