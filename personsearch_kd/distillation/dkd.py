# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""DKD (Zhang et al., "Diverse Knowledge Distillation for End-to-End Person Search", AAAI 2021)."""

from typing import List

import numpy as np
import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.structures import Boxes

from ..layers.crops import isa_box
from ..layers.dkd_losses import cross_model_triplet_kd, pairwise_relation_kd, probability_kd
from ..modeling.record import StudentRecord
from .losses import DISTILL_LOSS_REGISTRY, _require_equal
from .teachers import CropReIDTeacher

__all__ = ["DKDLoss"]


@DISTILL_LOSS_REGISTRY.register()
class DKDLoss(nn.Module):
    """
    DKD's distillation (Zhang et al., AAAI 2021) from a CropReIDTeacher (MODEL.DKD.TEACHER) on
    the batch's ground-truth boxes, which the student embeds with its own re-ID head
    (:attr:`StudentRecord.embed_boxes`) and the teacher on crops of the same boxes:

    - ``loss_dkd_prob``: beta_p times the probability KD on labeled boxes, plus, with FSA, the same
      term on a jittered copy of each box (the same relative jitter, in ISA's range of
      INPUT.REID_CROP, for the student's ROI and the teacher's crop);
    - ``loss_dkd_relation``: beta_pr times the pair-wise relation KD;
    - ``loss_dkd_triplet``: beta_tr times the cross-model triplet KD (margin m).

    The student's own re-ID loss (MODEL.REID.LOSSES, with "IdentityCrossEntropyLoss" for its
    identity probabilities) and lambda are the re-ID losses' weights. Terms come from
    :mod:`personsearch_kd.layers.dkd_losses`.
    """

    @configurable
    def __init__(
        self,
        *,
        teacher: str,
        prob_weight: float,
        relation_weight: float,
        triplet_weight: float,
        triplet_margin: float,
        fsa: bool,
        alpha: float,
        shift: float,
        crop_size,
    ):
        super().__init__()
        self.teacher = teacher
        self.prob_weight = prob_weight
        self.relation_weight = relation_weight
        self.triplet_weight = triplet_weight
        self.triplet_margin = triplet_margin
        self.fsa = fsa
        self.alpha = alpha
        self.shift = shift
        self.crop_size = tuple(crop_size)

    @classmethod
    def from_config(cls, cfg, student, teachers):
        dkd = cfg.MODEL.DKD
        teacher = teachers.get(dkd.TEACHER)
        if not isinstance(teacher, CropReIDTeacher):
            raise ValueError(
                f"DKDLoss (MODEL.DISTILLATION.LOSSES) reads the CropReIDTeacher MODEL.DKD.TEACHER="
                f"{dkd.TEACHER!r}, but MODEL.TEACHERS has "
                f"{ {k: type(t).__name__ for k, t in teachers.items()} }"
            )
        head, teacher_head = student.roi_heads.reid_head, teacher.model.reid_head
        if dkd.PROB_WEIGHT > 0 and (head.classifier is None or teacher_head.classifier is None):
            raise ValueError(
                "DKDLoss: MODEL.DKD.PROB_WEIGHT > 0 needs identity probabilities from both "
                "networks: add 'IdentityCrossEntropyLoss' to the student's MODEL.REID.LOSSES"
            )
        _require_equal(
            "DKDLoss",
            {
                "MODEL.OIM.NUM_IDS (identity classes)": (
                    head.classifier.out_features if head.classifier is not None else None,
                    (
                        teacher_head.classifier.out_features
                        if teacher_head.classifier is not None
                        else None
                    ),
                ),
                "MODEL.OIM.EMBED_DIM (the triplet compares features)": (
                    head.proj.out_features,
                    teacher_head.proj.out_features,
                ),
            },
        )
        crop = teacher.model.crop_size
        return {
            "teacher": dkd.TEACHER,
            "prob_weight": dkd.PROB_WEIGHT,
            "relation_weight": dkd.RELATION_WEIGHT,
            "triplet_weight": dkd.TRIPLET_WEIGHT,
            "triplet_margin": dkd.TRIPLET_MARGIN,
            "fsa": dkd.FSA,
            "alpha": cfg.INPUT.REID_CROP.EXPAND,
            "shift": cfg.INPUT.REID_CROP.SHIFT,
            "crop_size": crop,
        }

    def _jittered(self, record: StudentRecord) -> List[torch.Tensor]:
        """Each ground-truth box moved within ISA's range (the same boxes for both networks)."""
        rng = np.random.RandomState(np.random.randint(2**31))
        jittered = []
        for gt in record.gt_instances:
            boxes = [
                isa_box(b, self.alpha, self.shift, self.crop_size, gt.image_size, rng)[0]
                for b in gt.gt_boxes.tensor.tolist()
            ]
            jittered.append(gt.gt_boxes.tensor.new_tensor(np.array(boxes).reshape(-1, 4)))
        return jittered

    def forward(self, record: StudentRecord, teacher_outputs, student_losses):
        teacher = teacher_outputs[self.teacher]
        boxes = [gt.gt_boxes.tensor for gt in record.gt_instances]
        pids = cat([gt.gt_pids for gt in record.gt_instances])
        zero = next(iter(record.features.values())).sum() * 0.0
        if len(pids) < 2:  # BatchNorm cannot normalise one box in training
            return {k: zero for k in ("loss_dkd_prob", "loss_dkd_relation", "loss_dkd_triplet")}
        student = record.embed_boxes([Boxes(b) for b in boxes])
        target = teacher.ground_truth
        labeled = pids >= 0
        prob = zero
        if self.prob_weight > 0:
            prob = probability_kd(student.logits[labeled], target.logits[labeled])
            if self.fsa:
                jittered = self._jittered(record)
                moved = record.embed_boxes([Boxes(b) for b in jittered])
                prob = prob + probability_kd(
                    moved.logits[labeled], teacher.embed(jittered).logits[labeled]
                )
        return {
            "loss_dkd_prob": self.prob_weight * prob,
            "loss_dkd_relation": self.relation_weight
            * pairwise_relation_kd(student.embeddings, target.embeddings),
            "loss_dkd_triplet": self.triplet_weight
            * cross_model_triplet_kd(student.embeddings, target.embeddings, self.triplet_margin),
        }
