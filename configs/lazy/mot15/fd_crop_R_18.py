# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Factorized distillation on crops: the holistic crop re-ID network of reid_crop_R_18.py
learning from the six partial-view teachers of configs/mot15/reid_crop_partial_R_18.yaml
(train them first). The LazyConfig of configs/mot15/fd_crop_R_18.yaml.
"""

from detectron2.config import LazyCall as L

from personsearch_kd.distillation import Distiller

from .fd_R_18 import model as _fd
from .reid_crop_R_18 import dataloader, lr_multiplier, optimizer, train  # noqa: F401
from .reid_crop_R_18 import model as _student

model = L(Distiller)(
    student=_student,
    teachers=_fd.teachers,
    distillation_losses=_fd.distillation_losses,
)
# A crop student's re-ID head is at its top.
_losses = model.distillation_losses.FactorizedDistillLoss
_losses.in_channels = "${...student.reid_head.in_channels}"
_losses.embed_dim = "${...student.reid_head.embed_dim}"

dataloader.train.mapper.size = "${model.student.crop_size}"
dataloader.train.mapper.view = "${model.student.view}"
dataloader.train.mapper.image_format = "${model.student.input_format}"
train.output_dir = "output/lazy/mot15_fd_crop_R_18"
