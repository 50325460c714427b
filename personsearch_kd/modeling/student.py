# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""What every student of the distillation framework shares: its teachers and distillation losses."""

from typing import Dict

import torch
from torch import nn

__all__ = ["DistillationStudent"]


class DistillationStudent(nn.Module):
    """
    A mixin for a meta-architecture that learns from teachers (:class:`PersonSearchRCNN`,
    :class:`CropReIDNet`). Teachers are held outside the module tree: ``model.train()``, the
    optimizer, DDP and checkpoints never see them, so they stay frozen in eval mode and the
    student's checkpoints hold no teacher keys; ``model.to()`` (any ``_apply``) moves them with
    the student. Trainable parts of a distillation loss (an adapter) are student modules under
    ``distillation_losses``, unused by inference.
    """

    def _init_distillation(
        self, teachers: Dict[str, nn.Module], distillation_losses: Dict[str, nn.Module]
    ) -> None:
        """Call at the end of the student's ``__init__``."""
        # A plain dict hides the teachers from nn.Module's registration.
        self._teachers = dict(teachers or {})
        self.distillation_losses = nn.ModuleDict(distillation_losses or {})
        for teacher in self._teachers.values():
            teacher.prepare_student(self)

    @property
    def teachers(self) -> Dict[str, nn.Module]:
        return dict(self._teachers)

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        for teacher in getattr(self, "_teachers", {}).values():
            teacher._apply(fn, *args, **kwargs)
        return self

    def _distill(self, record, losses: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """
        ``losses`` updated with each distillation loss, which reads ``record`` (what the student
        computed this step) and the outputs of every teacher on it.
        """
        teacher_outputs = {name: t.outputs(record) for name, t in self._teachers.items()}
        for loss in self.distillation_losses.values():
            # A distillation loss may replace a student term (KD_det weighs its hard CE by mu).
            losses.update(loss(record, teacher_outputs, losses))
        return losses
