# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
QEEPS_18 on mot15-ps-mini, sized for CPU: the OIM_18 model of oim_R_18.py made
query-guided (QSSE in res2-res4, a QRPN, QSimNet) and trained on query-gallery pairs from the
trained OIM_18 (``train.init_checkpoint``), 2 pairs a step. The LazyConfig of
configs/mot15/qeeps_R_18.yaml. Its evaluation runs every query-gallery pair: none during
training; run tools/evaluate_pairs.py on the trained model.
"""

import copy

from detectron2.modeling.proposal_generator import RPN

from ..common.builders import qeeps
from ..common.data import query_pair_data
from ..common.train import warmup_multistep
from .oim_R_18 import model, optimizer, train  # noqa: F401

model._target_ = qeeps
# The QRPN starts as a copy of the RPN (when the checkpoint has none); a plain RPN, so that the
# recorded RPN predictions stay the RPN's.
model.qrpn = copy.deepcopy(model.proposal_generator)
model.qrpn._target_ = RPN
model.qsse_stages = ["res2", "res3", "res4"]
model.qsse_reduction = 16
# QSimNet calls a gallery ROI the query's person at this IoU with it.
model.qsim_iou = 0.5

dataloader = query_pair_data(
    train="mot15_ps_mini_train",
    min_size_train=(400,),
    max_size_train=680,
    image_format="${model.input_format}",
    num_ids="${model.roi_heads.reid_losses[0].num_ids}",
    total_batch_size=2,  # pairs
    num_workers=2,
)

optimizer.lr = 0.005
# Each step processes 2 pairs (4 images): half of OIM_18's schedule in steps.
lr_multiplier = warmup_multistep(steps=[800], max_iter=1000, warmup_iters=50)
train.max_iter = 1000
train.eval_period = 0
train.init_checkpoint = "output/mot15_oim_R_18/model_final.pth"
train.output_dir = "output/lazy/mot15_qeeps_R_18"
