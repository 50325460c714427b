# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
# Pure torch building blocks: importable without detectron2.
from .oim_loss import UNLABELED_PID, OIMLoss, load_lut_file
