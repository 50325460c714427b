# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
A cheap gate for indexing video: a frame that hardly differs from the last frame of its video
that the model ran on takes that frame's detections instead of running the model again (a
static camera with nobody moving). Images are never gated.
"""

from typing import Dict

import cv2
import numpy as np

from .sources import GallerySource

__all__ = ["UnchangedFrameGate"]


class UnchangedFrameGate:
    """
    Decides, frame by frame in reading order, whether a video frame is "unchanged": the mean
    absolute difference of its grey thumbnail (``width`` pixels wide, values 0-255) from that of
    the last frame of the same video the model ran on is below ``max_difference``. Comparing with
    the last frame run, not the previous one, keeps a slow change from creeping past the gate.
    ``max_difference`` 0 turns it off (GALLERY_INDEX.UNCHANGED_FRAME_DIFF).
    """

    def __init__(self, max_difference: float, width: int = 64):
        if max_difference < 0:
            raise ValueError(
                f"GALLERY_INDEX.UNCHANGED_FRAME_DIFF={max_difference}: expected >= 0 "
                "(a mean absolute grey difference, 0-255; 0 turns the gate off)"
            )
        self.max_difference = float(max_difference)
        self.width = width
        self._last_run: Dict[str, np.ndarray] = {}  # video path -> thumbnail of its last frame run

    def _thumbnail(self, image: np.ndarray) -> np.ndarray:
        height = max(1, round(image.shape[0] * self.width / image.shape[1]))
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        return cv2.resize(grey, (self.width, height), interpolation=cv2.INTER_AREA).astype(
            np.float32
        )

    def unchanged(self, source: GallerySource) -> bool:
        """
        True if ``source`` (a video frame) may take the detections of the last frame run of its
        video; False means the model runs on it, and it becomes that reference.
        """
        if self.max_difference == 0 or source.frame < 0:  # off, or an image
            return False
        thumbnail = self._thumbnail(source.image)
        last = self._last_run.get(source.path)
        if last is not None and last.shape == thumbnail.shape:
            if float(np.abs(thumbnail - last).mean()) < self.max_difference:
                return True
        self._last_run[source.path] = thumbnail
        return False
