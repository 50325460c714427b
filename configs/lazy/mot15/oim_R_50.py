# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
OIM_50 from scratch on mot15-ps-mini, sized for CPU: the LazyConfig of
configs/mot15/oim_R_50.yaml. The data, schedule and sizes of oim_R_18.py on a
ResNet-50 C4 (Bottleneck res5, detectron2's BGR caffe normalisation).
"""

from ..common.models import oim_c4
from .oim_R_18 import dataloader, lr_multiplier, optimizer, train  # noqa: F401

model = oim_c4(depth=50, norm="BN", freeze_at=0, num_ids=13, rgb=False)
model.proposal_generator.pre_nms_topk = (3000, 3000)
model.proposal_generator.post_nms_topk = (500, 100)
# R50: ~1.5 GFLOPs per ROI forward in res5; 16 ROIs per image keep a step near 2 s on 2 cores.
model.roi_heads.batch_size_per_image = 16
model.roi_heads.reid_losses[0].queue_size = 500

train.output_dir = "output/lazy/mot15_oim_R_50"
