# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""The ranked-matches picture: layout and colours (numpy + OpenCV, no detectron2)."""

import numpy as np

from personsearch_kd.utils.visualization import (
    CAPTION_HEIGHT,
    GAP,
    MATCH_COLORS,
    QUERY_COLOR,
    draw_ranked_matches,
)


def _gray(h, w):
    return np.full((h, w, 3), 128, dtype=np.uint8)


def test_panels_are_resized_to_one_height_and_boxes_coloured_by_match():
    matches = [
        {"image": _gray(200, 100), "box": (10, 20, 60, 180), "score": 0.9, "is_match": True},
        {"image": _gray(100, 100), "box": (10, 10, 50, 90), "score": 0.5, "is_match": False},
        {"image": _gray(100, 200), "box": (0, 0, 100, 100), "score": 0.1},
    ]
    picture = draw_ranked_matches(_gray(100, 50), (5, 5, 40, 90), matches, height=100)
    # Widths at height 100: query 50, then 50, 100 and 200, with 3 gaps.
    assert picture.shape == (100 + CAPTION_HEIGHT, 50 + 50 + 100 + 200 + 3 * GAP, 3)
    top = CAPTION_HEIGHT
    # Left edge of each box, halfway down it, in panel coordinates (scale 1, 0.5, 1, 1).
    assert tuple(picture[top + 50, 5]) == QUERY_COLOR
    x = 50 + GAP
    assert tuple(picture[top + 50, x + 5]) == MATCH_COLORS[True]
    x += 50 + GAP
    assert tuple(picture[top + 50, x + 10]) == MATCH_COLORS[False]
    x += 100 + GAP
    assert tuple(picture[top + 50, x + 1]) == MATCH_COLORS[None]
    # The gaps stay white and the image inside the boxes is untouched.
    assert (picture[:, 50 : 50 + GAP] == 255).all()
    assert tuple(picture[top + 50, 20]) == (128, 128, 128)


def test_no_match_gives_the_query_panel_alone():
    picture = draw_ranked_matches(_gray(60, 30), (0, 0, 29, 59), [], height=120)
    assert picture.shape == (120 + CAPTION_HEIGHT, 60, 3)
