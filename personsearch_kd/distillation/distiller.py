# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""The distillation meta-architecture: a plain student, its frozen teachers, the losses between."""

from typing import Dict, List

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY

from ..modeling.record import recording
from .losses import build_distillation_losses
from .teachers import build_teachers

__all__ = ["Distiller", "build_student", "student_of"]

STUDENT_PREFIX = "student."


def build_student(cfg) -> nn.Module:
    """
    The plain student of ``cfg``: MODEL.DISTILLATION.STUDENT_ARCHITECTURE for a Distiller,
    else MODEL.META_ARCHITECTURE. No teacher is built, so teacher files may be gone.
    """
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch == Distiller.__name__:
        arch = cfg.MODEL.DISTILLATION.STUDENT_ARCHITECTURE
        if arch in ("", Distiller.__name__):
            raise ValueError(
                f"MODEL.DISTILLATION.STUDENT_ARCHITECTURE={arch!r}: a Distiller needs its "
                "student's meta-architecture, e.g. 'PersonSearchRCNN' or 'CropReIDNet'"
            )
    model = META_ARCH_REGISTRY.get(arch)(cfg)
    return model.to(torch.device(cfg.MODEL.DEVICE))


def student_of(model: nn.Module) -> nn.Module:
    """The plain student inside a (DDP-wrapped) Distiller; any other model itself."""
    model = getattr(model, "module", model)
    return model.student if isinstance(model, Distiller) else model


@META_ARCH_REGISTRY.register()
class Distiller(nn.Module):
    """
    Distillation around a plain student (MODEL.META_ARCHITECTURE "Distiller"): the student of
    MODEL.DISTILLATION.STUDENT_ARCHITECTURE (:class:`PersonSearchRCNN`, :class:`CropReIDNet`,
    :class:`QEEPS`), the frozen teachers of MODEL.TEACHERS and the distillation losses of
    MODEL.DISTILLATION.LOSSES.

    A training step runs the student inside :func:`recording`, so that its parts record the step
    (the student's ``RECORD`` type), then adds every distillation loss, each reading the record
    and the teachers' outputs on it. Inference is the student's.

    Teachers are held outside the module tree: ``train()``, the optimizer, DDP and checkpoints
    never see them, so they stay frozen in eval mode; ``to()`` (any ``_apply``) moves them with
    the student. Trainable parts of a distillation loss (an adapter) are under
    ``distillation_losses``. A checkpoint names the student's tensors as the plain student does
    (no ``student.`` prefix), so it loads into the student built alone from the same config.
    """

    @configurable
    def __init__(
        self,
        *,
        student: nn.Module,
        teachers: Dict[str, nn.Module],
        distillation_losses: Dict[str, nn.Module],
    ):
        """
        Args:
            student: the plain student; its class has ``RECORD``, the record type of a step.
            teachers: name -> frozen teacher (:func:`build_teachers`).
            distillation_losses: name -> distillation loss (:func:`build_distillation_losses`).
        """
        super().__init__()
        if not hasattr(type(student), "RECORD"):
            raise ValueError(
                f"Distiller: the student {type(student).__name__} does not record its training "
                "steps (no RECORD type); expected PersonSearchRCNN, CropReIDNet or QEEPS"
            )
        self.student = student
        # A plain dict hides the teachers from nn.Module's registration.
        self._teachers = dict(teachers)
        self.distillation_losses = nn.ModuleDict(distillation_losses)
        for teacher in self._teachers.values():
            teacher.prepare_student(student)
        self._register_state_dict_hook(_drop_student_prefix)
        self._register_load_state_dict_pre_hook(_add_student_prefix)

    @classmethod
    def from_config(cls, cfg):
        # The order keeps a seeded run's initialisation: student, teachers, then loss adapters.
        student = build_student(cfg)
        teachers = build_teachers(cfg)
        return {
            "student": student,
            "teachers": teachers,
            "distillation_losses": build_distillation_losses(cfg, student, teachers),
        }

    @property
    def teachers(self) -> Dict[str, nn.Module]:
        return dict(self._teachers)

    @property
    def device(self) -> torch.device:
        return self.student.device

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        for teacher in getattr(self, "_teachers", {}).values():
            teacher._apply(fn, *args, **kwargs)
        return self

    def forward(self, batched_inputs: List[Dict]):
        """
        Training: the student's losses updated with each distillation loss (a returned key that
        is a student term replaces it: KD_det weighs the hard cross-entropy by mu).
        Inference: the student's outputs.
        """
        if not self.training:
            return self.student(batched_inputs)
        with recording(self.student) as fields:
            losses = self.student(batched_inputs)
        fields.setdefault("batched_inputs", batched_inputs)
        record = type(self.student).RECORD(**fields)
        teacher_outputs = {name: t.outputs(record) for name, t in self._teachers.items()}
        for loss in self.distillation_losses.values():
            losses.update(loss(record, teacher_outputs, losses))
        return losses


def _without_student_prefix(name: str) -> str:
    return name[len(STUDENT_PREFIX) :] if name.startswith(STUDENT_PREFIX) else name


def _with_student_prefix(name: str) -> str:
    if not name or name.startswith((STUDENT_PREFIX, "distillation_losses")):
        return name
    return STUDENT_PREFIX + name


def _drop_student_prefix(module, state_dict, prefix, local_metadata):
    """State-dict hook: ``<prefix>student.<key>`` -> ``<prefix><key>``, as the plain student."""
    _rename_in_place(state_dict, prefix, _without_student_prefix)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:  # module versions, by module name (BatchNorm reads its own)
        _rename_in_place(metadata, prefix, _without_student_prefix)


def _add_student_prefix(state_dict, prefix, *args):
    """Load pre-hook, the inverse of :func:`_drop_student_prefix`."""
    _rename_in_place(state_dict, prefix, _with_student_prefix)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        _rename_in_place(metadata, prefix, _with_student_prefix)


def _rename_in_place(mapping, prefix: str, rename) -> None:
    """Rename each key ``prefix + name`` of ``mapping`` to ``prefix + rename(name)``, in order."""
    items = [(k, mapping.pop(k)) for k in list(mapping) if k.startswith(prefix)]
    for key, value in items:
        mapping[prefix + rename(key[len(prefix) :])] = value
