# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
# Importing this module registers the meta-architecture and the ROI heads.
from .meta_arch import PersonSearchRCNN
from .roi_heads import IDEmbeddingHead, OIMROIHeads
