# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Person crops for re-ID networks that see crops, not scenes (the DKD teacher): cutting boxes out
of an image at a fixed size, the image-level spatial augmentation (ISA) of Zhang et al.,
"Diverse Knowledge Distillation for End-to-End Person Search", AAAI 2021, and the partial views
(horizontal stripes of the box) of Ren & Li, "Factorized Distillation", arXiv 1811.08073.

Pure torch/numpy (torchvision's roi_align): no detectron2 import.
"""

from typing import Sequence, Tuple

import numpy as np
import torch
from torchvision.ops import roi_align

__all__ = ["PARTIAL_VIEWS", "crop_boxes", "expand_box", "isa_box", "parse_view", "view_boxes"]

# The six partial views of Factorized Distillation (its Fig. 1), as (top, bottom) fractions of the
# box height. The figure's "Up1 (1/4-2/4)" is read as stripes 1-2 of 4 (1-based), i.e. rows 0-1/2:
# overlapping, roughly square windows, which fits their square 224 x 224 resize; the literal
# reading would drop the head from every view.
PARTIAL_VIEWS = {
    "Up1": (0.0, 2 / 4),
    "Mid1": (1 / 4, 3 / 4),
    "Dn1": (2 / 4, 1.0),
    "Up2": (0.0, 3 / 7),
    "Mid2": (2 / 7, 5 / 7),
    "Dn2": (4 / 7, 1.0),
}


def parse_view(view: str, key: str = "INPUT.REID_CROP.VIEW") -> Tuple[float, float]:
    """
    The (top, bottom) fractions of the box height that a view shows: "holistic" (0, 1), a name of
    :data:`PARTIAL_VIEWS`, or "TOP,BOTTOM" fractions with 0 <= TOP < BOTTOM <= 1.
    """
    if view == "holistic":
        return 0.0, 1.0
    if view in PARTIAL_VIEWS:
        return PARTIAL_VIEWS[view]
    try:
        top, bottom = (float(v) for v in view.split(","))
    except ValueError:
        top = bottom = None
    if top is None or not 0.0 <= top < bottom <= 1.0:
        raise ValueError(
            f"{key}={view!r}: expected 'holistic', one of {sorted(PARTIAL_VIEWS)} or 'TOP,BOTTOM' "
            "fractions of the box height with 0 <= TOP < BOTTOM <= 1"
        )
    return top, bottom


def view_boxes(boxes: torch.Tensor, view: Tuple[float, float]) -> torch.Tensor:
    """
    The rows of each box that a view shows (full width).

    Args:
        boxes: (K, 4) XYXY boxes.
        view: (top, bottom) fractions of the box height.
    Returns:
        (K, 4) boxes ``(x0, y0 + top h, x1, y0 + bottom h)``.
    """
    top, bottom = view
    height = boxes[:, 3] - boxes[:, 1]
    return torch.stack(
        [boxes[:, 0], boxes[:, 1] + top * height, boxes[:, 2], boxes[:, 1] + bottom * height], dim=1
    )


def crop_boxes(image: torch.Tensor, boxes: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """
    Cut boxes out of an image and resize them, by bilinear ROIAlign that averages over each
    output cell (adaptive sampling), so that large boxes shrink without aliasing. Used both to
    make the training crops and to embed boxes at inference, so the two see the same pixels.

    Args:
        image: (C, H, W) float image.
        boxes: (K, 4) XYXY boxes in the image's pixels (may reach outside: zero padding).
        size: (h, w) of the crops.

    Returns:
        (K, C, h, w) crops.
    """
    if len(boxes) == 0:
        return image.new_zeros((0, image.shape[0], *size))
    return roi_align(
        image[None], [boxes.to(image)], output_size=tuple(size), sampling_ratio=-1, aligned=True
    )


def expand_box(box: Sequence[float], pixels: float, width: int, height: int) -> np.ndarray:
    """The box grown by ``pixels`` on each side (alpha of ISA), clipped to the image."""
    x0, y0, x1, y1 = box
    return np.array(
        [
            max(x0 - pixels, 0.0),
            max(y0 - pixels, 0.0),
            min(x1 + pixels, width),
            min(y1 + pixels, height),
        ]
    )


def isa_box(
    box: Sequence[float],
    alpha: float,
    shift: float,
    crop_size: Sequence[int],
    image_size: Tuple[int, int],
    rng: np.random.RandomState,
) -> Tuple[np.ndarray, np.ndarray]:
    """
    One random sub-crop of ISA: each side of the box moves independently, uniformly within
    ``r_w = min(2 w shift / W, alpha)`` (left, right) and ``r_h = min(2 h shift / H, alpha)``
    (top, bottom) pixels, w x h being the box and W x H = ``crop_size`` the re-ID input (the
    figure's range, read with H x W the crop size: ``shift`` is in crop pixels), and the result
    stays inside the box expanded by ``alpha`` and inside the image.

    Args:
        box: (x0, y0, x1, y1) ground-truth box.
        alpha: the expansion in pixels, which also caps the range.
        shift: Delta_p, in pixels of the (H, W) crop; 0 gives the box itself.
        crop_size: (H, W) of the re-ID input.
        image_size: (height, width) of the image.
        rng: the random state.

    Returns:
        the jittered box (4,), and its offsets relative to the box size (4,):
        ``(dx0 / w, dy0 / h, dx1 / w, dy1 / h)``, to apply the same jitter elsewhere (FSA).
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0, y1 - y0
    crop_h, crop_w = crop_size
    r_w = min(2 * w * shift / crop_w, alpha)
    r_h = min(2 * h * shift / crop_h, alpha)
    offsets = rng.uniform(-1.0, 1.0, size=4) * np.array([r_w, r_h, r_w, r_h])
    jittered = np.array(box, dtype=np.float64) + offsets
    bound = expand_box(box, alpha, image_size[1], image_size[0])
    jittered[:2] = np.maximum(jittered[:2], bound[:2])
    jittered[2:] = np.minimum(jittered[2:], bound[2:])
    # Never invert or collapse the box: keep at least half of each side.
    jittered[2] = max(jittered[2], jittered[0] + w / 2)
    jittered[3] = max(jittered[3], jittered[1] + h / 2)
    relative = (jittered - np.array([x0, y0, x1, y1])) / np.array([w, h, w, h])
    return jittered, relative
