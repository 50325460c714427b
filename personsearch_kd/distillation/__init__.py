# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
# Teachers and distillation losses; importing this module registers the built-in ones.
from .dkd import DKDLoss
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
    "FactorizedDistillLoss",
    "HintLoss",
    "LUTFileTeacher",
    "RCNDistillLoss",
    "RPNDistillLoss",
    "build_distillation_losses",
    "build_teachers",
]
