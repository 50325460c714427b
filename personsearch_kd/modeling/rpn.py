# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
import math
from typing import List, Tuple

import torch

from detectron2.config import configurable
from detectron2.modeling.proposal_generator import PROPOSAL_GENERATOR_REGISTRY, RPN
from detectron2.structures import Boxes, Instances

from .record import Recorder

__all__ = ["RecordingRPN"]


@PROPOSAL_GENERATOR_REGISTRY.register()
class RecordingRPN(Recorder, RPN):
    """
    detectron2's :class:`RPN` that records its training predictions and anchor sampling (the
    ``anchors`` and ``rpn_*`` fields of :class:`StudentRecord`) for distillation losses comparing
    them with a teacher's (KD_det's :class:`RPNDistillLoss`), and at test time can drop the
    proposals of low objectness (MODEL.RPN.MIN_OBJECTNESS_TEST), so that a frame with few persons
    runs res5 on fewer proposals. MODEL.PROPOSAL_GENERATOR.NAME "RecordingRPN"
    (configs/Base-OIM-C4.yaml).
    """

    @configurable
    def __init__(self, *, min_objectness_test: float = 0.0, **kwargs):
        """
        Args:
            min_objectness_test: in inference, proposals whose objectness probability is below
                this are dropped after NMS and the POST_NMS_TOPK_TEST cut (0: none dropped).
            kwargs: arguments of :class:`RPN`.
        """
        super().__init__(**kwargs)
        if not 0.0 <= min_objectness_test < 1.0:
            raise ValueError(
                f"MODEL.RPN.MIN_OBJECTNESS_TEST={min_objectness_test}: expected a probability "
                "in [0, 1)"
            )
        self.min_objectness_test = min_objectness_test

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["min_objectness_test"] = cfg.MODEL.RPN.MIN_OBJECTNESS_TEST
        return ret

    def predict_proposals(
        self,
        anchors: List[Boxes],
        pred_objectness_logits: List[torch.Tensor],
        pred_anchor_deltas: List[torch.Tensor],
        image_sizes: List[Tuple[int, int]],
    ) -> List[Instances]:
        """
        :meth:`RPN.predict_proposals` (per image, at most POST_NMS_TOPK proposals sorted by
        objectness), then in inference those below ``min_objectness_test`` dropped; an image may
        keep none.
        """
        proposals = super().predict_proposals(
            anchors, pred_objectness_logits, pred_anchor_deltas, image_sizes
        )
        if self.training or self.min_objectness_test == 0.0:
            return proposals
        p = self.min_objectness_test
        min_logit = math.log(p / (1.0 - p))
        return [image[image.objectness_logits >= min_logit] for image in proposals]

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
