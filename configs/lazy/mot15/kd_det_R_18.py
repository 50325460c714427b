# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Model compression with KD_det (seed paper, section 4.1): the OIM_18 student of
oim_R_18.py (lambda_oim 1.0) distilled from the frozen detector DET_50
(configs/mot15/det_R_50.yaml, trained first with tools/train_net.py) by the hint, RPN and
RCN terms. The LazyConfig of configs/mot15/kd_det_R_18.yaml:
    python tools/lazyconfig_train_net.py --config-file <this file> \
        model.teachers.detector.weights=output/mot15_det_R_50/model_final.pth
The teacher is built from its own yacs config and checkpoint. The losses' keys are those of
MODEL.KD_DET (mu = hard_weight, T = temperature, gamma = bounded_reg_weight, ...); a loss
compares its teacher's predictions one to one, so anchors and box coding must match (as the
yacs build checks).
"""

from collections import OrderedDict

from detectron2.config import LazyCall as L

from personsearch_kd.distillation import Distiller
from personsearch_kd.distillation.losses import HintLoss, RCNDistillLoss, RPNDistillLoss

from ..common.builders import detector_teacher, hint_adapter
from .oim_R_18 import dataloader, lr_multiplier, optimizer, train  # noqa: F401
from .oim_R_18 import model as _student

# MODEL.KD_DET, shared by the RPN and RCN terms.
_kd_det = dict(
    teacher="detector",
    hard_weight=0.5,
    temperature=10.0,
    background_weight=1.5,
    soft_t_squared=False,
    bounded_reg_weight=0.5,
    bounded_reg_margin=0.0,
)

model = L(Distiller)(
    student=_student,
    teachers=L(OrderedDict)(
        detector=L(detector_teacher)(
            name="detector",
            config_file="configs/mot15/det_R_50.yaml",
            weights="output/mot15_det_R_50/model_final.pth",
            opts=[],
        )
    ),
    distillation_losses=L(OrderedDict)(
        HintLoss=L(HintLoss)(
            # R18's res4 (256 channels) to R50's (1024) by a 1x1 conv.
            adapter=L(hint_adapter)(in_channels=256, out_channels=1024),
            student_feature="res4",
            teacher_feature="res4",
            teacher="detector",
            weight=0.5,
        ),
        RPNDistillLoss=L(RPNDistillLoss)(
            box2box_transform="${...student.proposal_generator.box2box_transform}",
            anchors_per_image="${...student.proposal_generator.batch_size_per_image}",
            **_kd_det,
        ),
        RCNDistillLoss=L(RCNDistillLoss)(
            box2box_transform="${...student.roi_heads.box_predictor.box2box_transform}",
            num_classes="${...student.roi_heads.num_classes}",
            **_kd_det,
        ),
    ),
)

dataloader.train.mapper.num_ids = "${model.student.roi_heads.reid_losses[0].num_ids}"
dataloader.train.mapper.image_format = "${model.student.input_format}"
# From scratch, the teacher-bounded regression term made CPU KD_det runs diverge; clipping each
# parameter's gradient norm at 10 keeps them stable (SOLVER.CLIP_GRADIENTS of the yacs config).
optimizer.clip_gradients = dict(enabled=True, clip_type="norm", clip_value=10.0, norm_type=2.0)
train.output_dir = "output/lazy/mot15_kd_det_R_18"
