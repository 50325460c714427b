# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Factorized distillation into the end-to-end model: the OIM_18 student of oim_R_18.py at
lambda_oim 0.1, its re-ID head factorized to mimic six partial-view crop teachers
(configs/mot15/reid_crop_partial_R_18.yaml with INPUT.REID_CROP.VIEW Up1 ... Dn2; train them
first) on the ground-truth boxes. The LazyConfig of
configs/mot15/fd_R_18.yaml; each teacher's checkpoint is
``model.teachers.<view>.weights``.
"""

from collections import OrderedDict

from detectron2.config import LazyCall as L

from personsearch_kd.distillation import Distiller
from personsearch_kd.distillation.fd import FactorizedDistillLoss
from personsearch_kd.layers.crops import parse_view

from ..common.builders import crop_reid_teacher
from .oim_R_18 import dataloader, lr_multiplier, optimizer, train  # noqa: F401
from .oim_R_18 import model as _student

_VIEWS = ["Up1", "Mid1", "Dn1", "Up2", "Mid2", "Dn2"]
_PARTIAL = "configs/mot15/reid_crop_partial_R_18.yaml"

_student.roi_heads.reid_losses[0].weight = 0.1  # lambda_oim

model = L(Distiller)(
    student=_student,
    teachers=L(OrderedDict)(
        **{
            view.lower(): L(crop_reid_teacher)(
                name=view.lower(),
                config_file=_PARTIAL,
                weights=f"output/mot15_reid_crop_partial_R_18/{view}/model_final.pth",
                opts=["INPUT.REID_CROP.VIEW", view],
            )
            for view in _VIEWS
        }
    ),
    distillation_losses=L(OrderedDict)(
        FactorizedDistillLoss=L(FactorizedDistillLoss)(
            teachers=[view.lower() for view in _VIEWS],
            # Each teacher's view (its INPUT.REID_CROP.VIEW), channels and width.
            views=[L(parse_view)(view=view) for view in _VIEWS],
            in_channels="${...student.roi_heads.reid_head.in_channels}",
            embed_dim="${...student.roi_heads.reid_head.embed_dim}",
            teacher_channels=[512] * len(_VIEWS),
            teacher_dims=[256] * len(_VIEWS),
            # Each divided among the teachers; 0 switches a term off.
            map_weight=1.0,
            feature_weight=1.0,
        )
    ),
)

dataloader.train.mapper.num_ids = "${model.student.roi_heads.reid_losses[0].num_ids}"
dataloader.train.mapper.image_format = "${model.student.input_format}"
train.output_dir = "output/lazy/mot15_fd_R_18"
