# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
# Distillation around a plain student: the Distiller meta-architecture, the teacher kinds and the
# distillation losses; importing this module registers them.
from .dkd import DKDLoss
from .distiller import Distiller, build_student, student_of
from .fd import FactorizedDistillLoss
from .losses import (
    DISTILL_LOSS_REGISTRY,
    HintLoss,
    RCNDistillLoss,
    RPNDistillLoss,
    build_distillation_losses,
)
from .teachers import (
    TEACHER_REGISTRY,
    CropReIDTeacher,
    DetectorTeacher,
    LUTFileTeacher,
    build_teachers,
)

__all__ = [
    "DISTILL_LOSS_REGISTRY",
    "TEACHER_REGISTRY",
    "CropReIDTeacher",
    "DKDLoss",
    "DetectorTeacher",
    "Distiller",
    "FactorizedDistillLoss",
    "HintLoss",
    "LUTFileTeacher",
    "RCNDistillLoss",
    "RPNDistillLoss",
    "build_distillation_losses",
    "build_student",
    "build_teachers",
    "student_of",
]
