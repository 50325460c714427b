# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
# Pure torch building blocks: importable without detectron2.
from .batch_norm import call_with_statistics_unchanged
from .kd_losses import (
    binary_soft_cross_entropy,
    bounded_regression_loss,
    hint_loss,
    soft_cross_entropy,
)
from .lut_file import (
    check_lut_file,
    identity_means,
    load_lut_file,
    lut_agreement,
    lut_structure,
    random_lut,
    save_lut_file,
)
from .oim_loss import UNLABELED_PID, OIMLoss
from .qeeps import QSSE, QuerySimilarityNet, query_anchor_labels, query_proposal_labels
from .triplet_loss import batch_hard_triplet_loss
