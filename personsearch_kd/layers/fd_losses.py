# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
The two factor terms of Factorized Distillation (Ren & Li, arXiv 1811.08073), whose formulas were
not recovered (../shared/papers/method-notes-qeeps-dkd-fd.md, section 3.3); our choices, for N
persons seen whole by the student and through one partial view by a teacher:

- map factor: the student's feature map, adapted to the teacher's channels, restricted to the rows
  of the teacher's view and resampled to the teacher's map size, against the teacher's map: the
  mean over all elements of the squared difference (a FitNets hint, as KD_det's hint loss);
- feature factor: a projection of the student's retrieval feature against the teacher's: the mean
  over persons of the squared distance of the two L2-normalised features (= 2 - 2 cos), so the
  term does not depend on either feature's scale.

Pure torch (torchvision's roi_align): no detectron2 import.
"""

from typing import Tuple

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

__all__ = ["view_of_map", "factor_map_loss", "factor_feature_loss"]


def view_of_map(
    feature_map: torch.Tensor, view: Tuple[float, float], size: Tuple[int, int]
) -> torch.Tensor:
    """
    The rows of a whole-person feature map that a view shows, resampled (bilinear ROIAlign).

    Args:
        feature_map: (N, C, H, W) maps of N whole persons.
        view: (top, bottom) fractions of the person's height.
        size: (h, w) of the output.
    Returns:
        (N, C, h, w).
    """
    n, _, height, width = feature_map.shape
    top, bottom = view
    box = feature_map.new_tensor([0.0, top * height, float(width), bottom * height])
    # One box per map, in roi_align's (batch index, x0, y0, x1, y1) rows.
    index = torch.arange(n, dtype=box.dtype, device=box.device)[:, None]
    boxes = torch.cat([index, box.expand(n, 4)], dim=1)
    return roi_align(feature_map, boxes, tuple(size), sampling_ratio=-1, aligned=True)


def factor_map_loss(
    adapted_map: torch.Tensor, teacher_map: torch.Tensor, view: Tuple[float, float]
) -> torch.Tensor:
    """
    Args:
        adapted_map: (N, C_t, H, W) the student's whole-person map in the teacher's channels.
        teacher_map: (N, C_t, h, w) the teacher's map of its view of the same persons.
        view: (top, bottom) of the teacher's view.
    Returns:
        the mean squared difference over the N * C_t * h * w elements (teacher detached).
    """
    student = view_of_map(adapted_map, view, teacher_map.shape[-2:])
    return F.mse_loss(student, teacher_map.detach())


def factor_feature_loss(projected: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """
    Args:
        projected: (N, D_t) the student's retrieval feature projected to the teacher's width.
        teacher_feature: (N, D_t) the teacher's retrieval feature of the same persons.
    Returns:
        the mean over N of ``||normalize(projected) - normalize(teacher)||^2`` (teacher detached).
    """
    difference = F.normalize(projected, dim=1) - F.normalize(teacher_feature.detach(), dim=1)
    return difference.pow(2).sum(dim=1).mean()
