# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Gallery sources for indexing: image folders, glob patterns, list files and videos (every N-th
frame, read with OpenCV), and a source read back for a match. Pure numpy + OpenCV: no detectron2
import.
"""

import glob
import math
import os
import queue
import threading
from typing import Callable, Iterator, List, NamedTuple, Sequence

import cv2
import numpy as np

__all__ = [
    "GallerySource",
    "VIDEO_EXTENSIONS",
    "count_sources",
    "expand_inputs",
    "prefetch",
    "read_source_image",
    "read_sources",
    "source_caption",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")


class GallerySource(NamedTuple):
    """An image (frame -1, time NaN) or a frame of a video and its time in seconds."""

    path: str
    frame: int
    time: float
    image: np.ndarray  # (H, W, 3) uint8 BGR


def expand_inputs(inputs: Sequence[str]) -> List[str]:
    """
    Image and video files of ``inputs``, in order: a folder gives its images and videos sorted by
    name, a glob pattern its matches sorted, a .txt file one path per line (relative to the file),
    an image or a video file itself.
    """
    files = []
    for item in inputs:
        if os.path.isdir(item):
            names = sorted(os.listdir(item))
            files += [
                os.path.join(item, n)
                for n in names
                if n.lower().endswith(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
            ]
        elif any(c in item for c in "*?["):
            files += sorted(glob.glob(item))
        elif item.lower().endswith(".txt"):
            with open(item) as f:
                lines = [line.strip() for line in f if line.strip()]
            base = os.path.dirname(os.path.abspath(item))
            files += [line if os.path.isabs(line) else os.path.join(base, line) for line in lines]
        else:
            files.append(item)
    for path in files:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such gallery file (from the inputs {inputs})")
        if not path.lower().endswith(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS):
            raise ValueError(
                f"{path}: expected an image ({', '.join(IMAGE_EXTENSIONS)}) or a video "
                f"({', '.join(VIDEO_EXTENSIONS)})"
            )
    if not files:
        raise FileNotFoundError(f"{list(inputs)}: no image or video found")
    return files


def _is_video(path: str) -> bool:
    return path.lower().endswith(VIDEO_EXTENSIONS)


def count_sources(files: Sequence[str], every: int) -> int:
    """The number of images plus indexed video frames (every ``every``-th), for progress."""
    total = 0
    for path in files:
        if _is_video(path):
            capture = cv2.VideoCapture(path)
            total += math.ceil(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) / every)
            capture.release()
        else:
            total += 1
    return total


def read_sources(
    files: Sequence[str], every: int, wanted: Callable[[str, int], bool]
) -> Iterator[GallerySource]:
    """
    Yields the images and every ``every``-th frame of the videos for which ``wanted(path,
    frame)`` is true (the others are skipped without being decoded).
    """
    for path in files:
        if not _is_video(path):
            if wanted(path, -1):
                image = cv2.imread(path, cv2.IMREAD_COLOR)
                if image is None:
                    raise ValueError(f"{path}: OpenCV cannot read this image")
                yield GallerySource(path, -1, math.nan, image)
            continue
        capture = cv2.VideoCapture(path)
        if not capture.isOpened():
            raise ValueError(f"{path}: OpenCV cannot open this video")
        fps = capture.get(cv2.CAP_PROP_FPS) or math.nan
        frame = 0
        while capture.grab():
            if frame % every == 0 and wanted(path, frame):
                ok, image = capture.retrieve()
                if not ok:
                    raise ValueError(f"{path}: frame {frame} cannot be decoded")
                yield GallerySource(path, frame, frame / fps, image)
            frame += 1
        capture.release()


def prefetch(sources: Iterator[GallerySource], depth: int = 8) -> Iterator[GallerySource]:
    """
    ``sources`` read up to ``depth`` ahead by a background thread, so that decoding overlaps the
    model (OpenCV releases the GIL); the reader's errors are raised here, in order. Closing the
    generator (or leaving its loop) stops the reader.
    """
    buffer, stop, end = queue.Queue(maxsize=depth), threading.Event(), object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read():
        try:
            for source in sources:
                if not put(source):
                    return
        except BaseException as e:  # handed to the consumer, who raises it
            put(e)
            return
        put(end)

    threading.Thread(target=read, daemon=True).start()
    try:
        while True:
            item = buffer.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def read_source_image(path: str, frame: int = -1) -> np.ndarray:
    """The (H, W, 3) BGR image of a source: the image ``path``, or frame ``frame`` of a video."""
    if frame < 0:
        image = cv2.imread(path, cv2.IMREAD_COLOR)
    else:
        capture = cv2.VideoCapture(path)
        capture.set(cv2.CAP_PROP_POS_FRAMES, frame)
        image = capture.read()[1]
        capture.release()
    if image is None:
        raise FileNotFoundError(f"{path} (frame {frame}): cannot be read")
    return image


def source_caption(path: str, frame: int = -1, time: float = math.nan) -> str:
    """A source's file name, with ``#frame`` and its time for a video frame."""
    name = os.path.basename(path)
    if frame >= 0:
        name += f" #{frame}" + ("" if math.isnan(time) else f" {time:.1f}s")
    return name
