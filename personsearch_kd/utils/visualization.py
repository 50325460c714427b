# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""The ranked-matches picture: a query next to its top-k gallery matches (numpy + OpenCV only)."""

from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np

__all__ = ["draw_ranked_matches"]

# RGB. A match is green when it is the query's identity, red when it is not, and yellow when
# that is unknown (a gallery without annotations, as in tools/search_demo.py).
QUERY_COLOR = (40, 110, 255)
MATCH_COLORS = {True: (0, 200, 0), False: (230, 30, 30), None: (250, 200, 0)}
CAPTION_HEIGHT = 28
GAP = 8


def _panel(image: np.ndarray, box: Sequence[float], caption: str, color, height: int):
    scale = height / image.shape[0]
    width = max(1, int(round(image.shape[1] * scale)))
    panel = cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=cv2.INTER_AREA)
    x0, y0, x1, y1 = (int(round(v * scale)) for v in box)
    cv2.rectangle(panel, (x0, y0), (x1, y1), color, thickness=3)
    strip = np.full((CAPTION_HEIGHT, width, 3), 255, dtype=np.uint8)
    cv2.putText(strip, caption, (4, CAPTION_HEIGHT - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.6, color, 2)
    return np.concatenate([strip, panel], axis=0)


def draw_ranked_matches(
    query_image: np.ndarray,
    query_box: Sequence[float],
    matches: List[Dict],
    height: int = 256,
    title: Optional[str] = None,
) -> np.ndarray:
    """
    Args:
        query_image: (H, W, 3) uint8 RGB image of the query.
        query_box: the query's (x0, y0, x1, y1) in that image's pixels.
        matches: best first; each a dict with "image" ((H, W, 3) uint8 RGB), "box" (x0, y0, x1, y1),
            "score" (similarity), optionally "is_match" (bool, or None when unknown) and
            "caption" (e.g. the source's name, frame and time, after rank and similarity).
        height: height in pixels every image is resized to.
        title: caption of the query panel (default "query").

    Returns:
        (height + 28, W_total, 3) uint8 RGB picture: the query panel, then one panel per match
        captioned with its rank and similarity, separated by white gaps.
    """
    panels = [_panel(query_image, query_box, title or "query", QUERY_COLOR, height)]
    for rank, m in enumerate(matches, start=1):
        color = MATCH_COLORS[m.get("is_match")]
        caption = f"#{rank}  {m['score']:.3f}" + (f"  {m['caption']}" if m.get("caption") else "")
        panels.append(_panel(m["image"], m["box"], caption, color, height))
    gap = np.full((height + CAPTION_HEIGHT, GAP, 3), 255, dtype=np.uint8)
    pieces = [panels[0]]
    for p in panels[1:]:
        pieces += [gap, p]
    return np.concatenate(pieces, axis=1)
