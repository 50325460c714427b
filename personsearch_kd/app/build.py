# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""The app's search from a config: the index opened read-only and the model that embeds queries."""

from ..engine import PersonSearchPredictor
from ..search import GalleryIndex, model_fingerprint
from .service import GallerySearch

__all__ = ["build_gallery_search"]


def build_gallery_search(cfg, index_dir: str) -> GallerySearch:
    """
    A :class:`GallerySearch` over the index in ``index_dir``, built with the model of ``cfg``
    (its fingerprint must be the index's), which embeds the queries as tools/search.py does.
    """
    model = model_fingerprint(cfg)
    index = GalleryIndex.load(index_dir, model, read_only=True)
    predictor = PersonSearchPredictor(cfg)
    return GallerySearch(
        index, model, lambda image, box: predictor.embed_query(image, box).numpy()
    )
