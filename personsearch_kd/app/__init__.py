# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
# Search one's own footage in a browser: a local web app (FastAPI) over a gallery index.
from .build import build_gallery_search
from .server import create_app, served
from .service import AppInputError, GallerySearch, decode_upload

__all__ = [
    "AppInputError",
    "GallerySearch",
    "build_gallery_search",
    "create_app",
    "decode_upload",
    "served",
]
