# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
OIM_18 from scratch on mot15-ps-mini, sized for CPU: the LazyConfig of
configs/mot15/oim_R_18.yaml (the same network, data, schedule and evaluation; checked by
tests/test_lazy_configs.py). Train with
    python tools/lazyconfig_train_net.py --config-file configs/lazy/mot15/oim_R_18.py
Every method config of this folder starts from this one's student, data and schedule.
"""

from ..common.data import person_search_data
from ..common.models import oim_c4
from ..common.train import sgd_optimizer, train_settings, warmup_multistep

# ResNet-18 C4 from scratch: every layer trainable, BatchNorm learned, torchvision's RGB input.
model = oim_c4(depth=18, norm="BN", freeze_at=0, num_ids=13, rgb=True)
# At most ~10 persons per frame here; res5 runs on every proposal at test time too.
model.proposal_generator.pre_nms_topk = (3000, 3000)
model.proposal_generator.post_nms_topk = (500, 100)
# res5 runs on every sampled ROI and dominates a CPU step: 16 per image (8 foreground).
model.roi_heads.batch_size_per_image = 16
# 13 labeled training identities (9 PETS09-S2L1 + 4 TUD-Stadtmitte tracks); the queue of
# unlabeled persons' features.
model.roi_heads.reid_losses[0].queue_size = 500

dataloader = person_search_data(
    train="mot15_ps_mini_train",
    test="mot15_ps_mini_test",
    min_size_train=(400,),
    max_size_train=680,
    min_size_test=400,
    max_size_test=680,
    image_format="${model.input_format}",
    num_ids="${model.roi_heads.reid_losses[0].num_ids}",
    total_batch_size=2,
    num_workers=2,
)

optimizer = sgd_optimizer(lr=0.01, weight_decay=0.0005)
lr_multiplier = warmup_multistep(steps=[1600], max_iter=2000, warmup_iters=100)
train = train_settings(
    output_dir="output/lazy/mot15_oim_R_18",
    max_iter=2000,
    checkpoint_period=500,
    eval_period=1000,
)
