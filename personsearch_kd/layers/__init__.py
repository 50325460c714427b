# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
# Pure torch building blocks: importable without detectron2.
from .lut_file import check_lut_file, identity_means, load_lut_file, save_lut_file
from .oim_loss import UNLABELED_PID, OIMLoss
