# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
The web app: one page (``static/``) and a JSON API under ``/api`` over a :class:`GallerySearch`.
FastAPI documents the API itself at ``/docs`` (OpenAPI: ``/openapi.json``).
"""

import os
import secrets
import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator, List, Optional

import uvicorn

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .service import AppInputError, GallerySearch, decode_upload

__all__ = ["create_app", "served"]

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
TOKEN_COOKIE = "personsearch_token"
DEFAULT_MAX_UPLOAD_MB = 10.0


class SourceBox(BaseModel):
    box: List[float] = Field(..., description="x0, y0, x1, y1 in the source's pixels")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


def _filters(topk, offset, camera, time_start, time_end, all_boxes) -> dict:
    if (time_start is None) != (time_end is None):
        raise AppInputError(422, "time_start and time_end: give both, or neither")
    time_range = None if time_start is None else (time_start, time_end)
    return dict(
        topk=topk, offset=offset, per_image=not all_boxes, cameras=camera, time_range=time_range
    )


def create_app(
    search: GallerySearch,
    token: Optional[str] = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
) -> FastAPI:
    """
    Args:
        search: the index, the query model and the sources' pictures.
        token: when given, every request must carry it (``Authorization: Bearer TOKEN``, or
            ``?token=TOKEN`` once, which sets a cookie for the page's own requests).
        max_upload_mb: the largest query upload accepted (413 above it).
    """
    app = FastAPI(
        title="personsearch_kd gallery search",
        description="Search a gallery index (tools/index_gallery.py) for a person.",
    )
    max_bytes = int(max_upload_mb * 2**20)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        # The token first: without it nothing, not even the page, is served.
        given = None
        if token is not None:
            header = request.headers.get("authorization", "")
            given = (
                request.query_params.get("token")
                or (header[7:] if header.lower().startswith("bearer ") else None)
                or request.cookies.get(TOKEN_COOKIE)
            )
            if given is None or not secrets.compare_digest(given.encode(), token.encode()):
                return _error(401, "a token is required: open the page as /?token=TOKEN")
        if request.method == "POST":
            length = request.headers.get("content-length")
            if length is None:
                return _error(411, "a Content-Length header is required")
            if not length.isdigit() or int(length) > max_bytes:
                return _error(413, f"the upload is larger than {max_upload_mb:g} MB")
        response = await call_next(request)
        if token is not None and request.query_params.get("token") == given:
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return response

    @app.exception_handler(AppInputError)
    async def input_error(request: Request, exc: AppInputError):
        return _error(exc.status, str(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        problems = [
            f"{' '.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        ]  # e.g. "query topk: Input should be greater than or equal to 1"
        return _error(422, "; ".join(problems))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(os.path.join(STATIC, "index.html"))

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/info", summary="The index: sizes, type, recorded recall, cameras, videos")
    def info():
        return search.info()

    @app.get("/api/sources", summary="A page of the indexed images and video frames")
    def sources(
        offset: int = Query(0, ge=0),
        limit: int = Query(50, ge=1, le=500),
        camera: Optional[List[str]] = Query(None, description="only these cameras"),
    ):
        return search.sources(offset, limit, camera)

    @app.get("/api/sources/{source_id:int}", summary="One source and its indexed detections")
    def source(source_id: int):
        return search.source(source_id)

    @app.get("/api/sources/{source_id:int}/image", summary="A source's frame (JPEG)")
    def source_image(source_id: int):
        return Response(search.frame_jpeg(source_id), media_type="image/jpeg")

    @app.get("/api/rows/{row:int}/crop", summary="A detection's crop (JPEG)")
    def crop(row: int):
        return Response(search.crop_jpeg(row), media_type="image/jpeg")

    filter_params = dict(
        topk=Query(10, ge=1, le=200, description="matches on this page"),
        offset=Query(0, ge=0, le=10000, description="matches skipped (paging)"),
        camera=Query(None, description="only these cameras (repeat the parameter)"),
        time_start=Query(None, description="only matches at or after this time (s)"),
        time_end=Query(None, description="only matches at or before this time (s)"),
        all_boxes=Query(False, description="several matches per image (default: the best)"),
    )

    @app.post("/api/search", summary="Search with an uploaded image and a box in it")
    def search_upload(
        image: UploadFile = File(..., description="a JPEG or PNG image"),
        box: Optional[str] = Form(None, description="x0,y0,x1,y1; none: the image is a crop"),
        topk: int = filter_params["topk"],
        offset: int = filter_params["offset"],
        camera: Optional[List[str]] = filter_params["camera"],
        time_start: Optional[float] = filter_params["time_start"],
        time_end: Optional[float] = filter_params["time_end"],
        all_boxes: bool = filter_params["all_boxes"],
    ):
        name = image.filename or "the upload"
        data = image.file.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise AppInputError(413, f"{name}: larger than {max_upload_mb:g} MB")
        decoded = decode_upload(data, name)
        query_box = None
        if box:
            try:
                query_box = [float(v) for v in box.replace(" ", ",").split(",") if v]
            except ValueError:
                raise AppInputError(422, f"box {box!r}: expected four numbers x0,y0,x1,y1")
        filters = _filters(topk, offset, camera, time_start, time_end, all_boxes)
        return search.search(decoded, query_box, name, **filters)

    @app.post(
        "/api/sources/{source_id:int}/search", summary="Search with a box in an indexed source"
    )
    def search_source(
        source_id: int,
        query: SourceBox,
        topk: int = filter_params["topk"],
        offset: int = filter_params["offset"],
        camera: Optional[List[str]] = filter_params["camera"],
        time_start: Optional[float] = filter_params["time_start"],
        time_end: Optional[float] = filter_params["time_end"],
        all_boxes: bool = filter_params["all_boxes"],
    ):
        filters = _filters(topk, offset, camera, time_start, time_end, all_boxes)
        return search.search_source(source_id, query.box, **filters)

    return app


@contextmanager
def served(app: FastAPI, host: str = "127.0.0.1") -> Iterator[str]:
    """
    ``app`` served by uvicorn in a background thread on a free port of ``host`` while the block
    runs (tests, scripts that drive a browser): yields its address, e.g. "http://127.0.0.1:41234".
    """
    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and thread.is_alive() and time.time() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise RuntimeError(f"uvicorn did not start on {host}:{port}")
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
