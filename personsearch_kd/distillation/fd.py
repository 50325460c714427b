# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""Factorized distillation (Ren & Li, arXiv 1811.08073) from partial-view crop teachers."""

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.structures import Boxes

from ..layers.fd_losses import factor_feature_loss, factor_map_loss
from ..modeling.record import CropRecord
from ..modeling.reid_head import ReIDOutputs
from .losses import DISTILL_LOSS_REGISTRY
from .teachers import CropReIDTeacher

__all__ = ["FactorizedDistillLoss"]


@DISTILL_LOSS_REGISTRY.register()
class FactorizedDistillLoss(nn.Module):
    """
    Factorized distillation from the CropReIDTeachers named in MODEL.FD.TEACHERS, each trained on
    one view of the person (INPUT.REID_CROP.VIEW of its config: "Up1", ..., "Dn2"). The student's
    re-ID feature map and retrieval feature are factorized into one component per teacher, trained
    to mimic it (terms of :mod:`personsearch_kd.layers.fd_losses`):

    - ``loss_fd_map_<teacher>``: MAP_WEIGHT / K times the map term: a 1x1 conv of the student's
      map (to the teacher's channels), the rows of the teacher's view, against the teacher's map;
    - ``loss_fd_feature_<teacher>``: FEATURE_WEIGHT / K times the feature term: a linear
      projection of the student's embedding against the teacher's.

    K is the number of teachers, so the total weight does not grow with the ensemble; a zero
    weight switches its terms (and their adapters) off. A person-search student is distilled on
    the batch's ground-truth boxes (its re-ID head through :attr:`StudentRecord.embed_boxes`, the
    teachers on crops of the same boxes), a crop student (:class:`CropReIDNet`) on its training
    crops (the teachers on their view of each crop). The adapters are trained with the student,
    unused by inference.
    """

    @configurable
    def __init__(
        self,
        *,
        teachers: List[str],
        views: List[Tuple[float, float]],
        in_channels: int,
        embed_dim: int,
        teacher_channels: List[int],
        teacher_dims: List[int],
        map_weight: float,
        feature_weight: float,
    ):
        """
        Args:
            teachers: the teachers' names; ``views`` their (top, bottom) views.
            in_channels, embed_dim: C of the student's re-ID feature map and D of its embedding.
            teacher_channels, teacher_dims: the same of each teacher.
            map_weight, feature_weight: weights of the two terms, shared by the K teachers.
        """
        super().__init__()
        self.teachers = list(teachers)
        self.views = dict(zip(teachers, views))
        self.map_weight = map_weight / len(teachers)
        self.feature_weight = feature_weight / len(teachers)
        self.map_adapters = nn.ModuleDict()
        self.feature_adapters = nn.ModuleDict()
        for name, channels, dim in zip(teachers, teacher_channels, teacher_dims):
            if map_weight > 0:
                self.map_adapters[name] = nn.Conv2d(in_channels, channels, kernel_size=1)
            if feature_weight > 0:
                self.feature_adapters[name] = nn.Linear(embed_dim, dim)

    @classmethod
    def from_config(cls, cfg, student, teachers):
        names = list(cfg.MODEL.FD.TEACHERS)
        if not names:
            raise ValueError("FactorizedDistillLoss: MODEL.FD.TEACHERS is empty; name its teachers")
        for name in names:
            if not isinstance(teachers.get(name), CropReIDTeacher):
                raise ValueError(
                    f"FactorizedDistillLoss: MODEL.FD.TEACHERS names {name!r}, which is not a "
                    f"CropReIDTeacher of MODEL.TEACHERS "
                    f"{ {k: type(t).__name__ for k, t in teachers.items()} }"
                )
        # A person-search student's re-ID head is in its ROI heads, a crop student's at the top.
        roi_heads = getattr(student, "roi_heads", None)
        head = roi_heads.reid_head if roi_heads is not None else student.reid_head
        models = [teachers[name].model for name in names]
        return {
            "teachers": names,
            "views": [m.view for m in models],
            "in_channels": head.proj.in_features,
            "embed_dim": head.proj.out_features,
            "teacher_channels": [m.reid_head.proj.in_features for m in models],
            "teacher_dims": [m.reid_head.proj.out_features for m in models],
            "map_weight": cfg.MODEL.FD.MAP_WEIGHT,
            "feature_weight": cfg.MODEL.FD.FEATURE_WEIGHT,
        }

    def _student(self, record) -> Optional[ReIDOutputs]:
        """The student's re-ID outputs of the persons the teachers see; None if fewer than 2."""
        if isinstance(record, CropRecord):
            return record.reid
        boxes = [gt.gt_boxes for gt in record.gt_instances]
        if sum(len(b) for b in boxes) < 2:  # BatchNorm cannot normalise one box in training
            return None
        return record.embed_boxes([Boxes(b.tensor) for b in boxes])

    def forward(self, record, teacher_outputs, student_losses) -> Dict[str, torch.Tensor]:
        student = self._student(record)
        losses = {}
        for name in self.teachers:
            target = None if student is None else teacher_outputs[name].ground_truth
            if name in self.map_adapters:
                adapter = self.map_adapters[name]
                losses[f"loss_fd_map_{name}"] = self.map_weight * (
                    self._zero(adapter, record)
                    if target is None
                    else factor_map_loss(
                        adapter(student.feature_map), target.feature_map, self.views[name]
                    )
                )
            if name in self.feature_adapters:
                adapter = self.feature_adapters[name]
                losses[f"loss_fd_feature_{name}"] = self.feature_weight * (
                    self._zero(adapter, record)
                    if target is None
                    else factor_feature_loss(adapter(student.embeddings), target.embeddings)
                )
        return losses

    @staticmethod
    def _zero(adapter: nn.Module, record) -> torch.Tensor:
        # Keeps the adapter and the backbone in the graph with no persons, as DDP requires.
        features = next(iter(record.features.values()))
        return sum(p.sum() for p in adapter.parameters()) * 0.0 + features.sum() * 0.0
