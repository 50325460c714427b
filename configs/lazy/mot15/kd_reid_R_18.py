# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
KD_reid (seed paper, section 4.2) on the small model: the OIM_18 student of oim_R_18.py,
its OIM lookup table the teacher's (a LUT file of tools/export_lut.py), copied and kept fixed, at
lambda_oim 0.1. The LazyConfig of configs/mot15/kd_reid_R_18.yaml. Export the
table from the trained OIM_18 first (see that file), or point the teacher elsewhere:
    python tools/lazyconfig_train_net.py --config-file <this file> \
        model.teachers.table.weights=output/mot15_oim_R_18/lut.pth
"""

from collections import OrderedDict

from detectron2.config import LazyCall as L

from personsearch_kd.distillation import Distiller

from ..common.builders import lut_file_teacher
from .oim_R_18 import dataloader, lr_multiplier, optimizer, train  # noqa: F401
from .oim_R_18 import model as _student

_oim = _student.roi_heads.reid_losses[0]
_oim.freeze_lut = True
# lambda_oim = 0.1: against a converged table the ID loss needs less weight (seed paper).
_oim.weight = 0.1

model = L(Distiller)(
    student=_student,
    teachers=L(OrderedDict)(
        table=L(lut_file_teacher)(
            name="table",
            weights="output/mot15_oim_R_18/lut.pth",
            # The table is checked against the student: training set, identities, width.
            dataset_names="${dataloader.train.dataset.names}",
            num_ids="${model.student.roi_heads.reid_losses[0].num_ids}",
            embed_dim="${model.student.roi_heads.reid_head.embed_dim}",
        )
    ),
    distillation_losses=L(OrderedDict)(),
)

dataloader.train.mapper.num_ids = "${model.student.roi_heads.reid_losses[0].num_ids}"
dataloader.train.mapper.image_format = "${model.student.input_format}"
train.output_dir = "output/lazy/mot15_kd_reid_R_18"
