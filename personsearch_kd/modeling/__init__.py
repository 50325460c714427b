# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
# Importing this module registers the meta-architectures and the ROI heads.
from .distillation import DistillationRCNN
from .meta_arch import PersonSearchRCNN
from .roi_heads import IDEmbeddingHead, OIMROIHeads, PersonDetectorROIHeads
from .teacher import build_teacher
