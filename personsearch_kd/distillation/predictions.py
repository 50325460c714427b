# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
A detector teacher's raw RPN and box-head predictions, laid out as a student's
:class:`StudentRecord` holds its own (a :class:`RecordingRPN` records them from
:meth:`RPN.forward`; a frozen teacher in eval mode computes only these, without proposals).
"""

from typing import Dict, List, Tuple

import torch
from torch import nn

from detectron2.modeling.proposal_generator import RPN
from detectron2.modeling.roi_heads import Res5ROIHeads, StandardROIHeads
from detectron2.structures import Boxes

__all__ = ["rpn_predictions", "box_head_predictions"]


def rpn_predictions(
    rpn: RPN, features: Dict[str, torch.Tensor]
) -> Tuple[List[Boxes], List[torch.Tensor], List[torch.Tensor]]:
    """
    The anchors and raw predictions of a detectron2 RPN, laid out as in :meth:`RPN.forward`.

    Returns:
        anchors: per feature map, Boxes (Hi*Wi*A, 4);
        objectness logits: per feature map, (N, Hi*Wi*A);
        anchor deltas: per feature map, (N, Hi*Wi*A, 4).
    """
    features = [features[f] for f in rpn.in_features]
    anchors = rpn.anchor_generator(features)
    logits, deltas = rpn.rpn_head(features)
    logits = [score.permute(0, 2, 3, 1).flatten(1) for score in logits]
    box_dim = rpn.anchor_generator.box_dim
    deltas = [
        x.view(x.shape[0], -1, box_dim, x.shape[-2], x.shape[-1])
        .permute(0, 3, 4, 1, 2)
        .flatten(1, -2)
        for x in deltas
    ]
    return anchors, logits, deltas


def box_head_predictions(
    roi_heads: nn.Module, features: Dict[str, torch.Tensor], boxes: List[Boxes]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    The box predictor's outputs on given boxes (the student's sampled proposals), for C4
    (:class:`Res5ROIHeads`) and FPN (:class:`StandardROIHeads`) heads.

    Returns:
        scores (R, K + 1) and deltas (R, 4K) or (R, 4), R = total number of boxes.
    """
    if isinstance(roi_heads, Res5ROIHeads):
        box_features = roi_heads._shared_roi_transform(
            [features[f] for f in roi_heads.in_features], boxes
        )
        return roi_heads.box_predictor(box_features.mean(dim=[2, 3]))
    if isinstance(roi_heads, StandardROIHeads):
        box_features = roi_heads.box_pooler([features[f] for f in roi_heads.box_in_features], boxes)
        return roi_heads.box_predictor(roi_heads.box_head(box_features))
    raise ValueError(
        f"box_head_predictions: ROI heads {type(roi_heads).__name__} are neither Res5ROIHeads "
        "nor StandardROIHeads"
    )
