# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
OIM R50-C4 as a LazyConfig model, the counterpart of configs/oim_R_50_C4.yaml (ImageNet R-50 from
detectron2's model zoo: caffe BGR input, frozen BatchNorm, stem and res2 frozen) for users of
detectron2's LazyConfig system: ``instantiate(LazyConfig.load(this_file).model)``.
Identity settings live in ``model.roi_heads.reid_losses[0]`` (num_ids, queue_size, ...). The
tree is common/models.py's, as every config under mot15/ (complete, trainable LazyConfigs of
each method, tools/lazyconfig_train_net.py).
"""

from .common.models import oim_c4

model = oim_c4(depth=50, norm="FrozenBN", freeze_at=2, num_ids=5532)
