# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Distillation losses (:data:`DISTILL_LOSS_REGISTRY`, chosen by MODEL.DISTILLATION.LOSSES). Each is
an nn.Module of the :class:`Distiller` (its trainable parts, such as an adapter, train and
checkpoint with the student), built with ``(cfg, student, teachers)`` and called each training
step as
``loss(record, teacher_outputs, student_losses) -> {key: weighted loss}``: ``record`` is the
:class:`StudentRecord` of the step, ``teacher_outputs`` maps each teacher's name to what its
``outputs(record)`` gave, ``student_losses`` the student's own loss terms. A returned key that is
a student term replaces it (KD_det weighs the hard cross-entropy by mu).

KD_det (Munjal et al., BMVC 2019, section 4.1, after Chen et al., NeurIPS 2017) is three of them,
all reading the DetectorTeacher MODEL.KD_DET.TEACHER: :class:`HintLoss`, :class:`RPNDistillLoss`,
:class:`RCNDistillLoss`. DKD (Zhang et al., AAAI 2021) is :class:`DKDLoss` in ``dkd.py``.
"""

from typing import Dict, Mapping

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances
from detectron2.utils.registry import Registry

from ..layers.kd_losses import (
    binary_soft_cross_entropy,
    bounded_regression_loss,
    hint_loss,
    soft_cross_entropy,
)
from ..modeling.record import StudentRecord
from ..modeling.rpn import RecordingRPN
from .teachers import DetectorTeacher

__all__ = [
    "DISTILL_LOSS_REGISTRY",
    "HintLoss",
    "RPNDistillLoss",
    "RCNDistillLoss",
    "build_distillation_losses",
]

DISTILL_LOSS_REGISTRY = Registry("DISTILL_LOSS")
DISTILL_LOSS_REGISTRY.__doc__ = """
Distillation losses: built with ``(cfg, student, teachers)`` (``student``: the plain student, read
for its shapes only; ``teachers``: name -> teacher), called as
``loss(record, teacher_outputs, student_losses) -> Dict[str, Tensor]``. What a loss needs of the
student's step is in the record (its :attr:`StudentRecord.embed_boxes` embeds other boxes).
"""


def _detector_teacher(cfg, teachers: Mapping[str, nn.Module], loss: str) -> DetectorTeacher:
    name = cfg.MODEL.KD_DET.TEACHER
    teacher = teachers.get(name)
    if not isinstance(teacher, DetectorTeacher):
        raise ValueError(
            f"{loss} (MODEL.DISTILLATION.LOSSES) compares with the DetectorTeacher "
            f"MODEL.KD_DET.TEACHER={name!r}, but MODEL.TEACHERS has "
            f"{ {k: type(t).__name__ for k, t in teachers.items()} }"
        )
    return teacher


def _require_equal(loss: str, pairs: Dict[str, tuple]) -> None:
    """The losses compare predictions one to one: same anchors, classes and box coding."""
    for key, (student, teacher) in pairs.items():
        if student != teacher:
            raise ValueError(
                f"{loss}: student and teacher differ in {key} ({student} vs {teacher}); the loss "
                "compares their predictions one to one"
            )


class _KDDetLoss(nn.Module):
    """The configuration the KD_det losses share (MODEL.KD_DET)."""

    @staticmethod
    def kd_det_args(cfg, teachers, loss: str) -> Dict:
        kd = cfg.MODEL.KD_DET
        return {
            "teacher": _detector_teacher(cfg, teachers, loss).name,
            "hard_weight": kd.HARD_WEIGHT,
            "temperature": kd.TEMPERATURE,
            "background_weight": kd.BACKGROUND_WEIGHT,
            "soft_t_squared": kd.SOFT_T_SQUARED,
            "bounded_reg_weight": kd.BOUNDED_REG_WEIGHT,
            "bounded_reg_margin": kd.BOUNDED_REG_MARGIN,
        }

    def __init__(
        self,
        *,
        teacher: str,
        hard_weight: float,
        temperature: float,
        background_weight: float,
        soft_t_squared: bool,
        bounded_reg_weight: float,
        bounded_reg_margin: float,
    ):
        """
        Args:
            teacher: the name of the DetectorTeacher.
            hard_weight, temperature, background_weight, bounded_reg_weight, bounded_reg_margin:
                mu, T, w_bg, gamma, m (``MODEL.KD_DET``).
            soft_t_squared: multiply the soft CE by T^2 (``MODEL.KD_DET.SOFT_T_SQUARED``).
        """
        super().__init__()
        self.teacher = teacher
        self.hard_weight = hard_weight
        self.temperature = temperature
        self.background_weight = background_weight
        self.soft_scale = temperature**2 if soft_t_squared else 1.0
        self.bounded_reg_weight = bounded_reg_weight
        self.bounded_reg_margin = bounded_reg_margin


@DISTILL_LOSS_REGISTRY.register()
class HintLoss(nn.Module):
    """
    ``loss_hint``: lambda_hint times the mean squared difference between the student's backbone
    map HINT_FEATURE through a 1x1 conv adapter (it also bridges R18's 256 res4 channels to R50's
    1024) and the teacher's HINT_TEACHER_FEATURE map.
    """

    @configurable
    def __init__(
        self,
        *,
        adapter: nn.Module,
        student_feature: str,
        teacher_feature: str,
        teacher: str,
        weight: float,
    ):
        super().__init__()
        self.adapter = adapter
        self.student_feature = student_feature
        self.teacher_feature = teacher_feature
        self.teacher = teacher
        self.weight = weight

    @classmethod
    def from_config(cls, cfg, student, teachers):
        kd = cfg.MODEL.KD_DET
        teacher = _detector_teacher(cfg, teachers, "HintLoss")
        features = {
            "student": (kd.HINT_FEATURE, student.backbone.output_shape(), "HINT_FEATURE"),
            "teacher": (
                kd.HINT_TEACHER_FEATURE or kd.HINT_FEATURE,
                teacher.model.backbone.output_shape(),
                "HINT_TEACHER_FEATURE",
            ),
        }
        for who, (feature, shapes, key) in features.items():
            if feature not in shapes:
                raise ValueError(
                    f"MODEL.KD_DET.{key}={feature!r}: not an output of the {who}'s backbone, "
                    f"which gives {sorted(shapes)}"
                )
        (student_feature, student_shapes, _), (teacher_feature, teacher_shapes, _) = (
            features["student"],
            features["teacher"],
        )
        adapter = nn.Conv2d(
            student_shapes[student_feature].channels, teacher_shapes[teacher_feature].channels, 1
        )
        nn.init.normal_(adapter.weight, std=0.01)
        nn.init.zeros_(adapter.bias)
        return {
            "adapter": adapter,
            "student_feature": student_feature,
            "teacher_feature": teacher_feature,
            "teacher": teacher.name,
            "weight": kd.HINT_WEIGHT,
        }

    def forward(self, record: StudentRecord, teacher_outputs, student_losses):
        adapted = self.adapter(record.features[self.student_feature])
        target = teacher_outputs[self.teacher].features[self.teacher_feature]
        # Padding (to each backbone's size divisibility) is at the bottom and right: compare the
        # part both maps cover.
        height = min(adapted.shape[-2], target.shape[-2])
        width = min(adapted.shape[-1], target.shape[-1])
        loss = hint_loss(adapted[..., :height, :width], target[..., :height, :width])
        return {"loss_hint": self.weight * loss}


@DISTILL_LOSS_REGISTRY.register()
class RPNDistillLoss(_KDDetLoss):
    """
    The RPN's KD_det terms on the student's sampled anchors: ``loss_rpn_cls`` becomes mu times
    the student's; ``loss_rpn_cls_kd`` is (1 - mu) times the binary soft CE against the teacher's
    objectness; ``loss_rpn_loc_kd`` is gamma times the teacher-bounded L2 on positive anchors.
    Student and teacher must share anchors and box coding (an FPN teacher of a C4 student does
    not: leave this loss out and keep the hint and RCN terms).
    """

    @configurable
    def __init__(self, *, box2box_transform: Box2BoxTransform, anchors_per_image: int, **kwargs):
        """
        Args:
            box2box_transform: the student RPN's box coding.
            anchors_per_image: the RPN's sampled anchors per image (its loss normaliser).
            kwargs: see :class:`_KDDetLoss`.
        """
        super().__init__(**kwargs)
        self.box2box_transform = box2box_transform
        self.anchors_per_image = anchors_per_image

    @classmethod
    def from_config(cls, cfg, student, teachers):
        ret = cls.kd_det_args(cfg, teachers, "RPNDistillLoss")
        rpn, teacher_rpn = (
            student.proposal_generator,
            teachers[ret["teacher"]].model.proposal_generator,
        )
        if not isinstance(rpn, RecordingRPN):
            raise ValueError(
                f"RPNDistillLoss reads the student's RPN predictions, which only a RecordingRPN "
                f"records: MODEL.PROPOSAL_GENERATOR.NAME builds {type(rpn).__name__}; expected "
                "'RecordingRPN'"
            )
        _require_equal(
            "RPNDistillLoss",
            {
                "MODEL.RPN.BBOX_REG_WEIGHTS": (
                    tuple(rpn.box2box_transform.weights),
                    tuple(teacher_rpn.box2box_transform.weights),
                ),
                "MODEL.ANCHOR_GENERATOR": (
                    _anchors(rpn.anchor_generator),
                    _anchors(teacher_rpn.anchor_generator),
                ),
                "MODEL.RPN.IN_FEATURES": (list(rpn.in_features), list(teacher_rpn.in_features)),
            },
        )
        ret.update(
            box2box_transform=rpn.box2box_transform, anchors_per_image=rpn.batch_size_per_image
        )
        return ret

    def forward(self, record: StudentRecord, teacher_outputs, student_losses):
        teacher_logits, teacher_deltas = teacher_outputs[self.teacher].rpn
        sampled, positive = record.rpn_labels >= 0, record.rpn_labels == 1  # (N, A)
        soft = binary_soft_cross_entropy(
            cat(record.rpn_logits, dim=1)[sampled],
            cat(teacher_logits, dim=1)[sampled],
            self.temperature,
            self.background_weight,
        )
        anchors = Boxes.cat(record.anchors).tensor
        targets = torch.stack(
            [self.box2box_transform.get_deltas(anchors, boxes) for boxes in record.rpn_gt_boxes]
        )
        bounded = bounded_regression_loss(
            cat(record.rpn_deltas, dim=1)[positive],
            cat(teacher_deltas, dim=1)[positive],
            targets[positive],
            self.bounded_reg_margin,
            normalizer=self.anchors_per_image * len(record.rpn_labels),
        )
        return {
            "loss_rpn_cls": self.hard_weight * student_losses["loss_rpn_cls"],
            "loss_rpn_cls_kd": (1 - self.hard_weight) * self.soft_scale * soft,
            "loss_rpn_loc_kd": self.bounded_reg_weight * bounded,
        }


@DISTILL_LOSS_REGISTRY.register()
class RCNDistillLoss(_KDDetLoss):
    """
    The box head's (RCN) KD_det terms, the teacher's box head run on the student's sampled ROIs:
    ``loss_cls`` becomes mu times the student's; ``loss_cls_kd`` is (1 - mu) times the soft CE
    against the teacher's class probabilities; ``loss_box_reg_kd`` is gamma times the
    teacher-bounded L2 on foreground ROIs. C4 and FPN teachers.
    """

    @configurable
    def __init__(self, *, box2box_transform: Box2BoxTransform, num_classes: int, **kwargs):
        """
        Args:
            box2box_transform: the student box head's box coding.
            num_classes: K, the student's object classes (background is class K).
            kwargs: see :class:`_KDDetLoss`.
        """
        super().__init__(**kwargs)
        self.box2box_transform = box2box_transform
        self.num_classes = num_classes

    @classmethod
    def from_config(cls, cfg, student, teachers):
        ret = cls.kd_det_args(cfg, teachers, "RCNDistillLoss")
        heads, teacher_heads = student.roi_heads, teachers[ret["teacher"]].model.roi_heads
        _require_equal(
            "RCNDistillLoss",
            {
                "MODEL.ROI_HEADS.NUM_CLASSES": (heads.num_classes, teacher_heads.num_classes),
                "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS": (
                    tuple(heads.box_predictor.box2box_transform.weights),
                    tuple(teacher_heads.box_predictor.box2box_transform.weights),
                ),
            },
        )
        ret.update(
            box2box_transform=heads.box_predictor.box2box_transform, num_classes=heads.num_classes
        )
        return ret

    def forward(self, record: StudentRecord, teacher_outputs, student_losses):
        teacher_scores, teacher_deltas = teacher_outputs[self.teacher].boxes
        soft = soft_cross_entropy(
            record.box_scores, teacher_scores, self.temperature, self.background_weight
        )
        gt_classes = cat([r.gt_classes for r in record.rois])
        foreground = (gt_classes >= 0) & (gt_classes < self.num_classes)
        targets = self.box2box_transform.get_deltas(
            Boxes.cat([r.proposal_boxes for r in record.rois]).tensor[foreground],
            cat([_gt_boxes(r) for r in record.rois])[foreground],
        )
        bounded = bounded_regression_loss(
            _class_deltas(record.box_deltas, gt_classes, foreground),
            _class_deltas(teacher_deltas, gt_classes, foreground),
            targets,
            self.bounded_reg_margin,
            normalizer=len(gt_classes),
        )
        return {
            "loss_cls": self.hard_weight * student_losses["loss_cls"],
            "loss_cls_kd": (1 - self.hard_weight) * self.soft_scale * soft,
            "loss_box_reg_kd": self.bounded_reg_weight * bounded,
        }


def _anchors(anchor_generator) -> list:
    """Cell anchors and strides of each feature map: equal lists mean equal anchors."""
    return [c.tolist() for c in anchor_generator.cell_anchors] + [list(anchor_generator.strides)]


def _gt_boxes(rois: Instances) -> torch.Tensor:
    """(R, 4) matched ground-truth boxes; an image without ground truth has none (background)."""
    if rois.has("gt_boxes"):
        return rois.gt_boxes.tensor
    return rois.proposal_boxes.tensor.new_zeros((len(rois), 4))


def _class_deltas(deltas: torch.Tensor, gt_classes: torch.Tensor, foreground: torch.Tensor):
    """(R, 4K) or class-agnostic (R, 4) deltas -> (F, 4) deltas of each foreground ROI's class."""
    if deltas.shape[1] == 4:
        return deltas[foreground]
    return deltas.view(len(deltas), -1, 4)[foreground, gt_classes[foreground]]


def build_distillation_losses(cfg, student, teachers) -> Dict[str, nn.Module]:
    """The losses of MODEL.DISTILLATION.LOSSES, by registry name (an empty dict if none)."""
    losses = {}
    for name in cfg.MODEL.DISTILLATION.LOSSES:
        if name not in DISTILL_LOSS_REGISTRY:
            raise KeyError(
                f"MODEL.DISTILLATION.LOSSES: {name!r} is not a registered distillation loss; "
                f"registered: {sorted(k for k, _ in DISTILL_LOSS_REGISTRY)}"
            )
        losses[name] = DISTILL_LOSS_REGISTRY.get(name)(cfg, student, teachers)
    return losses
