# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
# Index once, search many times: the persistent gallery index (numpy + faiss), its sources
# (folders, globs, lists, videos) and the fingerprint of the model it was built with.
from importlib.util import find_spec

from .gallery_index import GalleryIndex, GalleryIndexError
from .sources import GallerySource, count_sources, expand_inputs, prefetch, read_sources

if find_spec("detectron2") is not None:
    from .fingerprint import model_fingerprint

__all__ = [
    "GalleryIndex",
    "GalleryIndexError",
    "GallerySource",
    "count_sources",
    "expand_inputs",
    "model_fingerprint",
    "prefetch",
    "read_sources",
]
