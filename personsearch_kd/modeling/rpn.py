# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
from typing import List

import torch

from detectron2.modeling.proposal_generator import PROPOSAL_GENERATOR_REGISTRY, RPN
from detectron2.structures import Boxes

from .record import Recorder

__all__ = ["RecordingRPN"]


@PROPOSAL_GENERATOR_REGISTRY.register()
class RecordingRPN(Recorder, RPN):
    """
    detectron2's :class:`RPN`, unchanged, that records its training predictions and anchor
    sampling (the ``anchors`` and ``rpn_*`` fields of :class:`StudentRecord`) for distillation
    losses comparing them with a teacher's (KD_det's :class:`RPNDistillLoss`).
    MODEL.PROPOSAL_GENERATOR.NAME "RecordingRPN" (configs/Base-OIM-C4.yaml).
    """

    def losses(
        self,
        anchors: List[Boxes],
        pred_objectness_logits: List[torch.Tensor],
        gt_labels: List[torch.Tensor],
        pred_anchor_deltas: List[torch.Tensor],
        gt_boxes: List[torch.Tensor],
    ):
        """
        :meth:`RPN.losses`; its arguments are what :meth:`RPN.forward` computed this step:
        anchors per feature map (Hi*Wi*a, 4), objectness logits (N, Hi*Wi*a) and anchor deltas
        (N, Hi*Wi*a, 4) per feature map, per image the sampled labels (A,) and matched
        ground-truth boxes (A, 4).
        """
        self._record(
            anchors=anchors,
            rpn_logits=pred_objectness_logits,
            rpn_deltas=pred_anchor_deltas,
            rpn_labels=torch.stack(gt_labels),
            rpn_gt_boxes=gt_boxes,
        )
        return super().losses(
            anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes
        )
