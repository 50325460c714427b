# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
The crop re-ID teacher of DKD: a ResNet-18 re-ID network on mot15-ps-mini's labeled training
crops (13 identities), from scratch, 128 x 64 crops in P x K = 4 x 4 batches; evaluated by
searching the test split's ground-truth boxes. The LazyConfig of
configs/mot15/reid_crop_R_18.yaml (configs/Base-ReID-Crop.yaml).
"""

from ..common.data import person_crop_data
from ..common.models import crop_reid_net
from ..common.train import sgd_optimizer, train_settings, warmup_multistep

model = crop_reid_net(depth=18, num_ids=13, crop_size=(128, 64), view="holistic")

dataloader = person_crop_data(
    train="mot15_ps_mini_train",
    test="mot15_ps_mini_test",
    # CPU size: 128 x 64 crops; ISA's Delta_p is in crop pixels (half of the 256 x 128 value).
    crop_size="${model.crop_size}",
    expand=10.0,
    shift=2.0,
    erase_prob=0.5,
    view="holistic",
    total_batch_size=16,
    instances_per_id=4,
    num_workers=2,
)
# The crops show what the network was built for.
dataloader.train.mapper.view = "${model.view}"
dataloader.train.mapper.image_format = "${model.input_format}"

optimizer = sgd_optimizer(lr=0.01, weight_decay=0.0005)
lr_multiplier = warmup_multistep(steps=[1200], max_iter=1500, warmup_iters=100)
train = train_settings(
    output_dir="output/lazy/mot15_reid_crop_R_18",
    max_iter=1500,
    checkpoint_period=500,
    eval_period=0,
)
