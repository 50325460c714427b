# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
KD_det (Munjal et al., BMVC 2019, section 4.1): a person-search student supervised by a frozen
teacher detector at three levels, after Chen et al. (NeurIPS 2017): the backbone feature (hint),
the RPN and the box head (RCN), each by classification and regression.
"""

from typing import Dict, List

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.structures import Boxes, ImageList, Instances

from ..layers.kd_losses import (
    binary_soft_cross_entropy,
    bounded_regression_loss,
    hint_loss,
    soft_cross_entropy,
)
from .meta_arch import PersonSearchRCNN
from .teacher import box_head_predictions, build_teacher, rpn_predictions

__all__ = ["DistillationRCNN"]


@META_ARCH_REGISTRY.register()
class DistillationRCNN(PersonSearchRCNN):
    """
    A :class:`PersonSearchRCNN` student trained with a frozen teacher :class:`GeneralizedRCNN`.

    The teacher is held outside the module tree: ``model.train()``, ``.to()``, the optimizer,
    DDP and checkpoints never see it, so it stays in eval mode without gradients, and student
    checkpoints (and ImageNet-style weights loaded into the student) have no teacher keys. The
    1x1 adaptation layer of the hint loss is a trainable student module that inference does
    not use: inference is exactly :class:`PersonSearchRCNN`'s.

    Training losses: the student's ``loss_rpn_cls``, ``loss_cls`` (each times mu), ``loss_rpn_loc``,
    ``loss_box_reg``, ``loss_oim``, plus ``loss_rpn_cls_kd``, ``loss_cls_kd`` (soft CE, times
    1 - mu), ``loss_rpn_loc_kd``, ``loss_box_reg_kd`` (bounded L2, times gamma) and
    ``loss_hint`` (times lambda_hint).
    """

    @configurable
    def __init__(
        self,
        *,
        teacher: GeneralizedRCNN,
        hint_adapter: nn.Module,
        hint_feature: str,
        hint_weight: float,
        hard_weight: float,
        temperature: float,
        background_weight: float,
        bounded_reg_weight: float,
        bounded_reg_margin: float,
        **kwargs,
    ):
        """
        Args:
            teacher: the frozen teacher detector (see :func:`build_teacher`).
            hint_adapter: maps the student's ``hint_feature`` map to the teacher's channels.
            hint_weight, hard_weight, temperature, background_weight, bounded_reg_weight,
                bounded_reg_margin: lambda_hint, mu, T, w_bg, gamma, m (``MODEL.KD_DET``).
            kwargs: arguments of :class:`PersonSearchRCNN`.
        """
        super().__init__(**kwargs)
        # A tuple hides the teacher from nn.Module's registration (parameters, state_dict, train).
        self._teacher = (teacher,)
        self.hint_adapter = hint_adapter
        self.hint_feature = hint_feature
        self.hint_weight = hint_weight
        self.hard_weight = hard_weight
        self.temperature = temperature
        self.background_weight = background_weight
        self.bounded_reg_weight = bounded_reg_weight
        self.bounded_reg_margin = bounded_reg_margin
        self._check_compatible()

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        teacher = build_teacher(cfg)
        feature = cfg.MODEL.KD_DET.HINT_FEATURE
        shapes = {
            "student": ret["backbone"].output_shape(),
            "teacher": teacher.backbone.output_shape(),
        }
        for who, shape in shapes.items():
            if feature not in shape:
                raise ValueError(
                    f"MODEL.KD_DET.HINT_FEATURE={feature!r}: not an output of the {who}'s "
                    f"backbone, which gives {sorted(shape)}"
                )
        adapter = nn.Conv2d(
            shapes["student"][feature].channels, shapes["teacher"][feature].channels, 1
        )
        nn.init.normal_(adapter.weight, std=0.01)
        nn.init.zeros_(adapter.bias)
        kd = cfg.MODEL.KD_DET
        ret.update(
            teacher=teacher,
            hint_adapter=adapter,
            hint_feature=feature,
            hint_weight=kd.HINT_WEIGHT,
            hard_weight=kd.HARD_WEIGHT,
            temperature=kd.TEMPERATURE,
            background_weight=kd.BACKGROUND_WEIGHT,
            bounded_reg_weight=kd.BOUNDED_REG_WEIGHT,
            bounded_reg_margin=kd.BOUNDED_REG_MARGIN,
        )
        return ret

    @property
    def teacher(self) -> GeneralizedRCNN:
        return self._teacher[0]

    def _check_compatible(self):
        """The losses compare predictions one to one: same anchors, classes and box coding."""
        student, teacher = self, self.teacher
        pairs = {
            "MODEL.ROI_HEADS.NUM_CLASSES": (
                student.roi_heads.num_classes,
                teacher.roi_heads.num_classes,
            ),
            "MODEL.RPN.BBOX_REG_WEIGHTS": (
                tuple(student.proposal_generator.box2box_transform.weights),
                tuple(teacher.proposal_generator.box2box_transform.weights),
            ),
            "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS": (
                tuple(student.roi_heads.box_predictor.box2box_transform.weights),
                tuple(teacher.roi_heads.box_predictor.box2box_transform.weights),
            ),
            "MODEL.ANCHOR_GENERATOR": (
                _anchors(student.proposal_generator.anchor_generator),
                _anchors(teacher.proposal_generator.anchor_generator),
            ),
            "MODEL.RPN.IN_FEATURES": (
                list(student.proposal_generator.in_features),
                list(teacher.proposal_generator.in_features),
            ),
        }
        for key, (mine, theirs) in pairs.items():
            if mine != theirs:
                raise ValueError(
                    f"KD_det: student and teacher differ in {key} ({mine} vs {theirs}); the "
                    "distillation losses compare their predictions one to one"
                )

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        """
        Inference (and query mode): the student's, see :class:`PersonSearchRCNN`. Training:
        the losses listed in the class docstring.
        """
        if not self.training:
            return super().forward(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        features = self.backbone(images.tensor)
        with torch.no_grad():
            teacher_features = self.teacher.backbone(self.teacher_images(batched_inputs).tensor)
        proposals, losses = self._rpn_losses(images, features, teacher_features, gt_instances)
        losses.update(self._rcn_losses(features, teacher_features, proposals, gt_instances))
        adapted = self.hint_adapter(features[self.hint_feature])
        losses["loss_hint"] = self.hint_weight * hint_loss(
            adapted, teacher_features[self.hint_feature]
        )
        return losses

    def teacher_images(self, batched_inputs) -> ImageList:
        """The same images normalised the teacher's way (its INPUT.FORMAT, pixel mean/std)."""
        teacher = self.teacher
        if teacher.input_format == self.input_format:
            return teacher.preprocess_image(batched_inputs)
        if {teacher.input_format, self.input_format} != {"RGB", "BGR"}:
            raise ValueError(
                f"KD_det: cannot convert the student's INPUT.FORMAT {self.input_format} to the "
                f"teacher's {teacher.input_format}"
            )
        return teacher.preprocess_image([{"image": x["image"].flip(0)} for x in batched_inputs])

    def _rpn_losses(self, images, features, teacher_features, gt_instances):
        """
        Returns:
            the student's proposals (from its own predictions), and the RPN losses.
        """
        rpn = self.proposal_generator
        anchors, logits, deltas = rpn_predictions(rpn, features)
        with torch.no_grad():
            _, teacher_logits, teacher_deltas = rpn_predictions(
                self.teacher.proposal_generator, teacher_features
            )
        gt_labels, gt_boxes = rpn.label_and_sample_anchors(anchors, gt_instances)
        losses = rpn.losses(anchors, logits, gt_labels, deltas, gt_boxes)
        proposals = rpn.predict_proposals(anchors, logits, deltas, images.image_sizes)

        gt_labels = torch.stack(gt_labels)  # (N, sum Hi*Wi*A)
        sampled, positive = gt_labels >= 0, gt_labels == 1
        losses["loss_rpn_cls"] = self.hard_weight * losses["loss_rpn_cls"]
        losses["loss_rpn_cls_kd"] = (1 - self.hard_weight) * binary_soft_cross_entropy(
            cat(logits, dim=1)[sampled],
            cat(teacher_logits, dim=1)[sampled],
            self.temperature,
            self.background_weight,
        )
        all_anchors = Boxes.cat(anchors).tensor
        targets = torch.stack([rpn.box2box_transform.get_deltas(all_anchors, b) for b in gt_boxes])
        losses["loss_rpn_loc_kd"] = self.bounded_reg_weight * bounded_regression_loss(
            cat(deltas, dim=1)[positive],
            cat(teacher_deltas, dim=1)[positive],
            targets[positive],
            self.bounded_reg_margin,
            normalizer=rpn.batch_size_per_image * len(gt_labels),
        )
        return proposals, losses

    def _rcn_losses(self, features, teacher_features, proposals, gt_instances):
        """The box head's losses, the teacher's head run on the student's sampled ROIs."""
        roi_heads = self.roi_heads
        losses, sampled, (scores, deltas) = roi_heads.losses_and_predictions(
            features, proposals, gt_instances
        )
        proposal_boxes = [p.proposal_boxes for p in sampled]
        with torch.no_grad():
            teacher_scores, teacher_deltas = box_head_predictions(
                self.teacher.roi_heads, teacher_features, proposal_boxes
            )
        losses["loss_cls"] = self.hard_weight * losses["loss_cls"]
        losses["loss_cls_kd"] = (1 - self.hard_weight) * soft_cross_entropy(
            scores, teacher_scores, self.temperature, self.background_weight
        )
        gt_classes = cat([p.gt_classes for p in sampled])
        foreground = (gt_classes >= 0) & (gt_classes < roi_heads.num_classes)
        box_coder = roi_heads.box_predictor.box2box_transform
        targets = box_coder.get_deltas(
            Boxes.cat(proposal_boxes).tensor[foreground],
            cat([_gt_boxes(p) for p in sampled])[foreground],
        )
        losses["loss_box_reg_kd"] = self.bounded_reg_weight * bounded_regression_loss(
            _class_deltas(deltas, gt_classes, foreground),
            _class_deltas(teacher_deltas, gt_classes, foreground),
            targets,
            self.bounded_reg_margin,
            normalizer=len(gt_classes),
        )
        return losses


def _anchors(anchor_generator) -> list:
    """Cell anchors and strides of each feature map: equal lists mean equal anchors."""
    return [c.tolist() for c in anchor_generator.cell_anchors] + [list(anchor_generator.strides)]


def _gt_boxes(proposals: Instances) -> torch.Tensor:
    """(R, 4) matched ground-truth boxes; an image without ground truth has none (background)."""
    if proposals.has("gt_boxes"):
        return proposals.gt_boxes.tensor
    return proposals.proposal_boxes.tensor.new_zeros((len(proposals), 4))


def _class_deltas(deltas: torch.Tensor, gt_classes: torch.Tensor, foreground: torch.Tensor):
    """(R, 4K) or class-agnostic (R, 4) deltas -> (F, 4) deltas of each foreground ROI's class."""
    if deltas.shape[1] == 4:
        return deltas[foreground]
    return deltas.view(len(deltas), -1, 4)[foreground, gt_classes[foreground]]
