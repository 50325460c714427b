# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
# The plain students and their parts; importing this module registers the meta-architectures,
# the RPN, the ROI heads, the re-ID head and losses. None of them knows of teachers.
from .crop_reid import CropReIDNet
from .meta_arch import PersonSearchRCNN
from .qeeps import QEEPS, SiameseQSSE
from .record import CropRecord, Recorder, StudentRecord, recording
from .reid_head import REID_HEAD_REGISTRY, EmbeddingHead, ReIDOutputs
from .reid_losses import (
    REID_LOSS_REGISTRY,
    IdentityCrossEntropyLoss,
    OIMReIDLoss,
    TripletReIDLoss,
)
from .roi_heads import OIMROIHeads, PersonDetectorROIHeads
from .rpn import RecordingRPN
