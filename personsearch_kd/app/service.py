# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
What the web app does, without the web: search a read-only gallery index with a query box, list
its sources and their detections, and render a source's frame or a detection's crop. Sources are
addressed by their number in the index and detections by their row, never by a path from a
request, so nothing outside the index's own sources can be read. Pure numpy + OpenCV; the model
comes in as a function.
"""

import math
import os
import threading
from collections import OrderedDict
from typing import Callable, Dict, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..search.gallery_index import GalleryIndex
from ..search.recall_check import describe_recall
from ..search.sources import image_truncation, read_source_image, source_caption

__all__ = ["AppInputError", "GallerySearch", "decode_upload"]

# A (H, W, 3) BGR image and an (x0, y0, x1, y1) box in its pixels -> the (D,) query feature.
EmbedFn = Callable[[np.ndarray, Sequence[float]], np.ndarray]

CROP_HEIGHT = 192  # pixels of a match's crop in the grid
JPEG_QUALITY = 90


class AppInputError(ValueError):
    """Bad input from a request: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def decode_upload(data: bytes, name: str) -> np.ndarray:
    """The (H, W, 3) BGR image of an uploaded file, or a 415 naming the file."""
    truncated = image_truncation(data)  # OpenCV may decode it half grey, with a warning only
    if truncated:
        raise AppInputError(415, f"{name}: {truncated}")
    image = None
    if data:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise AppInputError(415, f"{name}: not an image OpenCV can read (expected JPEG or PNG)")
    return image


def box_problem(box: Sequence[float], width: int, height: int, name: str) -> str:
    """What is wrong with a query box in a ``width`` x ``height`` image; "" when nothing."""
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        return f"box {list(box)}: expected four finite numbers x0, y0, x1, y1"
    x0, y0, x1, y1 = box
    if 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height:
        return ""
    return (
        f"box {list(box)}: expected 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height} "
        f"(pixels of {name}; a box of zero area or outside the image cannot be searched)"
    )


class GallerySearch:
    """
    Args:
        index: the gallery index, opened read-only.
        model: the fingerprint of the model that embeds queries (the index's).
        embed: embeds a query box (e.g. ``PersonSearchPredictor.embed_query``). Calls are
            serialised: a CPU runs one forward pass best at a time.
        cache_size: decoded frames kept in memory (the crops of one result page share frames).
    """

    def __init__(
        self, index: GalleryIndex, model: Dict[str, str], embed: EmbedFn, cache_size: int = 32
    ):
        self.index, self.model, self._embed = index, dict(model), embed
        self._embed_lock, self._cache_lock = threading.Lock(), threading.Lock()
        self._frames: "OrderedDict[int, np.ndarray]" = OrderedDict()
        self._cache_size = cache_size
        self.records = index.arrays()  # built once here, then only read by every thread
        num_sources = len(self.records["path"])
        # add() appends each source's rows after the last's: row -> source is sorted.
        self._row_start = np.searchsorted(self.records["source"], np.arange(num_sources + 1))
        self._durations = self._video_durations()

    # --- the index's contents -------------------------------------------------------------

    def _video_durations(self) -> Dict[str, float]:
        """Per video path, the time of its last indexed frame (seconds)."""
        durations: Dict[str, float] = {}
        for path, frame, time in zip(
            self.records["path"].tolist(), self.records["frame"].tolist(), self.records["time"]
        ):
            if frame >= 0 and math.isfinite(time):
                durations[path] = max(durations.get(path, 0.0), float(time))
        return durations

    def info(self) -> Dict:
        """What the page shows first: sizes, index type, recorded recall, cameras, videos."""
        times = self.records["time"][np.isfinite(self.records["time"])]
        return {
            "count": len(self.index),
            "num_sources": len(self.records["path"]),
            "factory": self.index.factory,
            "search_params": self.index.search_params,
            "recall_check": self.index.recall_check,
            "recall": describe_recall(self.index),  # how far results can be trusted, one line
            "cameras": sorted(set(self.records["camera"].tolist())),
            "time_range": [float(times.min()), float(times.max())] if len(times) else None,
            "videos": [
                {"path": path, "name": os.path.basename(path), "duration": duration}
                for path, duration in sorted(self._durations.items())
            ],
        }

    def _check_source(self, source_id: int) -> int:
        if not 0 <= source_id < len(self.records["path"]):
            raise AppInputError(404, f"source {source_id}: no such source in the index")
        return int(source_id)

    def _source_dict(self, source_id: int) -> Dict:
        path = str(self.records["path"][source_id])
        frame, time = int(self.records["frame"][source_id]), float(self.records["time"][source_id])
        return {
            "source_id": source_id,
            "path": path,
            "name": source_caption(path, frame, time),
            "frame": frame,
            "time": None if math.isnan(time) else time,
            "camera": str(self.records["camera"][source_id]),
            "num_boxes": int(self._row_start[source_id + 1] - self._row_start[source_id]),
            "video_duration": self._durations.get(path) if frame >= 0 else None,
        }

    def sources(
        self, offset: int = 0, limit: int = 50, cameras: Optional[Sequence[str]] = None
    ) -> Dict:
        """A page of the indexed images and frames, in indexing order."""
        ids = np.arange(len(self.records["path"]))
        if cameras:
            ids = ids[np.isin(self.records["camera"], list(cameras))]
        page = ids[offset : offset + limit].tolist()
        return {"total": len(ids), "sources": [self._source_dict(i) for i in page]}

    def source(self, source_id: int) -> Dict:
        """One source and its indexed detections (row, box, detection score)."""
        source_id = self._check_source(source_id)
        start, stop = self._row_start[source_id], self._row_start[source_id + 1]
        detections = [
            {"row": int(row), "box": self.records["box"][row].tolist(),
             "det_score": float(self.records["det_score"][row])}
            for row in range(start, stop)
        ]  # fmt: skip
        return dict(self._source_dict(source_id), detections=detections)

    # --- pictures -------------------------------------------------------------------------

    def frame(self, source_id: int) -> np.ndarray:
        """The (H, W, 3) BGR image of a source, read from its file (a few kept in memory)."""
        source_id = self._check_source(source_id)
        with self._cache_lock:
            if source_id in self._frames:
                self._frames.move_to_end(source_id)
                return self._frames[source_id]
        path, frame = str(self.records["path"][source_id]), int(self.records["frame"][source_id])
        try:
            image = read_source_image(path, frame)
        except FileNotFoundError:
            raise AppInputError(404, f"source {source_id}: its file can no longer be read")
        with self._cache_lock:
            self._frames[source_id] = image
            while len(self._frames) > self._cache_size:
                self._frames.popitem(last=False)
        return image

    def frame_jpeg(self, source_id: int) -> bytes:
        return _jpeg(self.frame(source_id))

    def crop_jpeg(self, row: int) -> bytes:
        """A detection's crop (a little context around its box), CROP_HEIGHT pixels high."""
        if not 0 <= row < len(self.records["source"]):
            raise AppInputError(404, f"row {row}: no such detection in the index")
        image = self.frame(int(self.records["source"][row]))
        x0, y0, x1, y1 = self.records["box"][row].tolist()
        pad = 0.1 * (y1 - y0)
        height, width = image.shape[:2]
        x0, y0 = max(int(x0 - pad), 0), max(int(y0 - pad), 0)
        x1, y1 = min(int(math.ceil(x1 + pad)), width), min(int(math.ceil(y1 + pad)), height)
        crop = image[y0 : max(y1, y0 + 1), x0 : max(x1, x0 + 1)]
        scale = CROP_HEIGHT / crop.shape[0]
        crop = cv2.resize(crop, (max(int(round(crop.shape[1] * scale)), 1), CROP_HEIGHT))
        return _jpeg(crop)

    # --- search ---------------------------------------------------------------------------

    def search(
        self,
        image: np.ndarray,
        box: Optional[Sequence[float]],
        name: str,
        topk: int = 10,
        offset: int = 0,
        per_image: bool = True,
        cameras: Optional[Sequence[str]] = None,
        time_range: Optional[Tuple[float, float]] = None,
    ) -> Dict:
        """
        The ranked matches of the person in ``box`` of ``image`` (BGR; no box: the whole image
        is the crop), as :func:`tools/search.py` ranks them: matches ``offset`` to
        ``offset + topk`` of the list.
        """
        height, width = image.shape[:2]
        box = [0.0, 0.0, float(width), float(height)] if box is None else list(map(float, box))
        problem = box_problem(box, width, height, name)
        if problem:
            raise AppInputError(422, problem)
        with self._embed_lock:
            feature = np.asarray(self._embed(image, box), np.float32)
        (matches,) = self.index.search(
            feature, self.model, offset + topk, per_image=per_image, cameras=cameras or None,
            time_range=time_range,
        )  # fmt: skip
        page = matches[offset:]
        for rank, match in enumerate(page, start=offset + 1):
            source_id = int(self.records["source"][match["row"]])
            match.update(self._source_dict(source_id), rank=rank)  # NaN time -> None (JSON)
        return {
            "query": {"box": box, "name": name},
            "offset": offset,
            "matches": page,
            "more": len(matches) == offset + topk,  # there may be a next page
        }

    def search_source(self, source_id: int, box: Sequence[float], **kwargs) -> Dict:
        """Search with a box in an indexed source (a detected person, or a match)."""
        source_id = self._check_source(source_id)
        name = source_caption(
            str(self.records["path"][source_id]), int(self.records["frame"][source_id])
        )
        return self.search(self.frame(source_id), box, name, **kwargs)


def _jpeg(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    assert ok, "OpenCV could not encode a decoded image"
    return data.tobytes()
