# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
DKD (Zhang et al., AAAI 2021): the OIM_18 student of oim_R_18.py at lambda_oim 0.1, its
re-ID head also giving identity probabilities (identity cross-entropy, weight 0.1), distilled
from the frozen crop re-ID teacher of reid_crop_R_18 (train it first). The LazyConfig of
configs/mot15/dkd_R_18.yaml:
    python tools/lazyconfig_train_net.py --config-file <this file> \
        model.teachers.reid.weights=output/mot15_reid_crop_R_18/model_final.pth
For the paper's separate detection and re-ID heads give the student its own re-ID res5
(model.student.roi_heads.reid_res5, as res5); the measured rows share res5.
"""

from collections import OrderedDict

from detectron2.config import LazyCall as L

from personsearch_kd.distillation import Distiller
from personsearch_kd.distillation.dkd import DKDLoss

from ..common.builders import crop_reid_teacher
from ..common.models import reid_losses
from .oim_R_18 import dataloader, lr_multiplier, optimizer, train  # noqa: F401
from .oim_R_18 import model as _student

_heads = _student.roi_heads
_heads.reid_losses = reid_losses(("OIMReIDLoss", "IdentityCrossEntropyLoss"), num_ids=13)
_heads.reid_losses[0].queue_size = 500
_heads.reid_losses[0].weight = 0.1  # lambda_oim
_heads.reid_losses[1].weight = 0.1
# Identity logits for the probability term (and the identity cross-entropy).
_heads.reid_head.num_classes = "${..reid_losses[0].num_ids}"

model = L(Distiller)(
    student=_student,
    teachers=L(OrderedDict)(
        reid=L(crop_reid_teacher)(
            name="reid",
            config_file="configs/mot15/reid_crop_R_18.yaml",
            weights="output/mot15_reid_crop_R_18/model_final.pth",
            opts=[],
        )
    ),
    distillation_losses=L(OrderedDict)(
        DKDLoss=L(DKDLoss)(
            teacher="reid",
            # beta_p, beta_pr, beta_tr and the cross-model triplet's margin m.
            prob_weight=1.0,
            relation_weight=1.0,
            triplet_weight=1.0,
            triplet_margin=0.3,
            # FSA: the probability term on jittered boxes too, in ISA's range: alpha (pixels the
            # box may grow) and Delta_p (crop pixels), for crops of the teacher's size (H, W).
            fsa=True,
            alpha=10.0,
            shift=2.0,
            crop_size=(128, 64),
        )
    ),
)

dataloader.train.mapper.num_ids = "${model.student.roi_heads.reid_losses[0].num_ids}"
dataloader.train.mapper.image_format = "${model.student.input_format}"
train.output_dir = "output/lazy/mot15_dkd_R_18"
