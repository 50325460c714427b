# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
# Index once, search many times: the persistent gallery index (numpy + faiss).
from .gallery_index import GalleryIndex, GalleryIndexError

__all__ = ["GalleryIndex", "GalleryIndexError"]
