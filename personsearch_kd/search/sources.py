# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Gallery sources for indexing: image folders, glob patterns, list files and videos (every N-th
frame, read with OpenCV), and a source read back for a match. Pure numpy + OpenCV: no detectron2
import.

A file that cannot be read (unreadable, not an image, truncated, a video that cannot be opened, a
frame that cannot be decoded, a video that ends before its frame count) is not an error of the
whole run: the reader yields a :class:`SkippedSource` saying why, and goes on.
"""

import glob
import math
import os
import queue
import threading
from typing import Callable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

__all__ = [
    "GallerySource",
    "SkippedSource",
    "VIDEO_EXTENSIONS",
    "count_sources",
    "expand_inputs",
    "image_truncation",
    "prefetch",
    "read_source_image",
    "read_sources",
    "source_caption",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")

# What a complete file starts and ends with, by format (the file's first bytes, not its name).
_JPEG_START = b"\xff\xd8"
_JPEG_SCAN, _JPEG_END = b"\xff\xda", b"\xff\xd9"  # start-of-scan, end-of-image markers
_PNG_START = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk: always these 12 bytes
_BMP_START = b"BM"


class GallerySource(NamedTuple):
    """An image (frame -1, time NaN) or a frame of a video and its time in seconds."""

    path: str
    frame: int
    time: float
    image: np.ndarray  # (H, W, 3) uint8 BGR


class SkippedSource(NamedTuple):
    """
    What is not indexed, and why: a whole file (``frame`` None: an image, or a video that cannot
    be opened), a video frame that cannot be decoded, or the rest of a video from ``frame`` on.
    """

    path: str
    frame: Optional[int]
    reason: str


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
            # -1 when OpenCV cannot open the video or does not know its length
            total += math.ceil(max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT))) / every)
            capture.release()
        else:
            total += 1
    return total


def image_truncation(data: bytes) -> str:
    """Why the bytes of an image file are incomplete; "" if they are not or of another format."""
    if data.startswith(_JPEG_START):
        # The last scan must be followed by the end-of-image marker. Neither marker can occur
        # inside a scan's coded data (an FF byte there is followed by 00), and the end marker of
        # an EXIF thumbnail comes before the main image's scans, so the last of each decides.
        if data.rfind(_JPEG_END) < data.rfind(_JPEG_SCAN):
            return "truncated JPEG (no end-of-image marker after its last scan)"
    elif data.startswith(_PNG_START):
        if data.rfind(_PNG_END) < 0:
            return "truncated PNG (no IEND chunk)"
    elif data.startswith(_BMP_START) and len(data) >= 6:
        size = int.from_bytes(data[2:6], "little")
        if len(data) < size:
            return f"truncated BMP ({len(data)} of the {size} bytes its header gives)"
    return ""


def _decode_image(path: str) -> Tuple[Optional[np.ndarray], str]:
    """
    ``(image, "")``, or ``(None, why not)`` for a file that cannot be read, is truncated or that
    OpenCV cannot decode. The file is read once. OpenCV may only warn on a truncated image and
    return it with its missing part grey (cv2.imread does), hence the check of its end marker.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return None, f"cannot be read ({e.strerror or e})"
    problem = "empty file" if not data else image_truncation(data)  # OpenCV asserts on no bytes
    if problem:
        return None, problem
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return None, "OpenCV cannot decode this image (not an image, or damaged)"
    return image, ""


def _read_video(
    path: str, every: int, wanted: Callable[[str, int], bool]
) -> Iterator[Union[GallerySource, SkippedSource]]:
    """:func:`read_sources` for one video."""
    capture = cv2.VideoCapture(path)
    try:
        if not capture.isOpened():
            yield SkippedSource(path, None, "OpenCV cannot open this video")
            return
        fps = capture.get(cv2.CAP_PROP_FPS) or math.nan
        length = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))  # -1: unknown
        frame = 0
        while capture.grab():
            if frame % every == 0 and wanted(path, frame):
                ok, image = capture.retrieve()
                # One bad frame is skipped and the next ones are read: every process of a launch
                # must see the same frames, as the share of each is counted in reading order.
                if ok:
                    yield GallerySource(path, frame, frame / fps, image)
                else:
                    yield SkippedSource(path, frame, f"frame {frame} cannot be decoded")
            frame += 1
        if frame < length:
            yield SkippedSource(
                path, frame, f"frame {frame} cannot be read, but the video has {length} frames "
                "(damaged or cut short); the frames from it on are not indexed"
            )  # fmt: skip
    finally:
        capture.release()


def read_sources(
    files: Sequence[str], every: int, wanted: Callable[[str, int], bool]
) -> Iterator[Union[GallerySource, SkippedSource]]:
    """
    Yields the images and every ``every``-th frame of the videos for which ``wanted(path,
    frame)`` is true (the others are skipped without being decoded), and a
    :class:`SkippedSource` for each of those images, and each video, that cannot be read.
    """
    for path in files:
        if _is_video(path):
            yield from _read_video(path, every, wanted)
        elif wanted(path, -1):
            image, problem = _decode_image(path)
            if image is None:
                yield SkippedSource(path, None, problem)
            else:
                yield GallerySource(path, -1, math.nan, image)


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
        image, problem = _decode_image(path)  # as it was indexed
        if image is None:
            raise FileNotFoundError(f"{path}: {problem}")
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
