# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
A cheap gate for indexing video: a frame that hardly differs from the last frame of its video
that the model ran on takes that frame's detections instead of running the model again (a
static camera with nobody moving). Images are never gated.

"Hardly differs" counts changed pixels, not the mean difference: a pedestrian covers under 1 % of
a surveillance frame, so a mean absolute difference small enough to pass frames where people
walked on let most of them through (threshold 4 of 255 gated 54 % of PETS09-S2L1's frames and
cost 35 points of recall; docs/search.md).
"""

from typing import Dict

import cv2
import numpy as np

from .sources import GallerySource

__all__ = ["UnchangedFrameGate"]


class UnchangedFrameGate:
    """
    Decides, frame by frame in reading order, whether a video frame is "unchanged": in its grey
    thumbnail (``width`` pixels wide), the share of pixels whose level differs by more than
    ``level`` (of 255) from the thumbnail of the last frame of the same video the model ran on
    is below ``max_changed_share``. Comparing with the last frame run, not the previous one,
    keeps a slow change from creeping past the gate. ``max_changed_share`` 0 turns it off
    (GALLERY_INDEX.UNCHANGED_FRAME_SHARE).
    """

    def __init__(self, max_changed_share: float, width: int = 128, level: float = 16.0):
        if not 0 <= max_changed_share <= 1:
            raise ValueError(
                f"GALLERY_INDEX.UNCHANGED_FRAME_SHARE={max_changed_share}: expected a share of "
                "pixels in [0, 1] (0 turns the gate off)"
            )
        self.max_changed_share = float(max_changed_share)
        self.width, self.level = width, level
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
        if self.max_changed_share == 0 or source.frame < 0:  # off, or an image
            return False
        thumbnail = self._thumbnail(source.image)
        last = self._last_run.get(source.path)
        if last is not None and last.shape == thumbnail.shape:
            changed = float((np.abs(thumbnail - last) > self.level).mean())
            if changed < self.max_changed_share:
                return True
        self._last_run[source.path] = thumbnail
        return False
