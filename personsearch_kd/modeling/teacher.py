# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
The frozen teacher of KD_det: building it from its own config, and the predictions of its RPN and
box head that the student's distillation losses compare against.
"""

import os
from typing import Dict, List, Tuple

import torch
from torch import nn

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import GeneralizedRCNN, build_model
from detectron2.modeling.proposal_generator import RPN
from detectron2.modeling.roi_heads import Res5ROIHeads, StandardROIHeads
from detectron2.structures import Boxes

from ..config import add_personsearch_config

__all__ = ["build_teacher", "rpn_predictions", "box_head_predictions"]


def build_teacher(cfg) -> GeneralizedRCNN:
    """
    Build ``cfg.MODEL.TEACHER``'s detector from its own config, load its weights, and freeze it:
    eval mode, ``requires_grad`` off. Errors name the key and what was expected.
    """
    config_file, weights = cfg.MODEL.TEACHER.CONFIG_FILE, cfg.MODEL.TEACHER.WEIGHTS
    if not os.path.isfile(config_file):
        raise FileNotFoundError(
            f"MODEL.TEACHER.CONFIG_FILE={config_file!r}: expected the teacher detector's config file"
        )
    teacher_cfg = get_cfg()
    add_personsearch_config(teacher_cfg)
    teacher_cfg.merge_from_file(config_file)
    teacher_cfg.merge_from_list(list(cfg.MODEL.TEACHER.OPTS))
    teacher_cfg.MODEL.DEVICE = cfg.MODEL.DEVICE
    teacher = build_model(teacher_cfg)
    if not isinstance(teacher, GeneralizedRCNN) or not isinstance(teacher.proposal_generator, RPN):
        raise ValueError(
            f"MODEL.TEACHER.CONFIG_FILE={config_file!r} builds {type(teacher).__name__} with "
            f"{type(teacher.proposal_generator).__name__}; expected a GeneralizedRCNN with an RPN"
        )
    # URLs (detectron2://, https://) are fetched by the checkpointer.
    if "://" not in weights and not os.path.isfile(weights):
        raise FileNotFoundError(
            f"MODEL.TEACHER.WEIGHTS={weights!r}: expected the trained teacher's checkpoint"
        )
    _TeacherCheckpointer(teacher, f"MODEL.TEACHER.WEIGHTS={weights!r}", config_file).load(weights)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


class _TeacherCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that fails, instead of logging, on a checkpoint missing parameters."""

    def __init__(self, model: nn.Module, weights_key: str, config_file: str):
        super().__init__(model)
        self.weights_key = weights_key
        self.config_file = config_file

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        missing = incompatible.missing_keys
        if missing:
            raise ValueError(
                f"{self.weights_key} does not fit MODEL.TEACHER.CONFIG_FILE="
                f"{self.config_file!r}: {len(missing)} teacher parameters are not in it, e.g. "
                f"{missing[:3]}"
            )
        return incompatible


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
        f"KD_det teacher: ROI heads {type(roi_heads).__name__} are neither Res5ROIHeads nor "
        "StandardROIHeads"
    )
