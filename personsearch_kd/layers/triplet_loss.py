# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Batch-hard triplet loss (Hermans et al., "In Defense of the Triplet Loss for Person
Re-Identification", 2017), as re-ID baselines use it beside identity cross-entropy.

Pure torch: no detectron2 import.
"""

import torch
import torch.nn.functional as F

__all__ = ["batch_hard_triplet_loss"]


def batch_hard_triplet_loss(
    embeddings: torch.Tensor, pids: torch.Tensor, margin: float
) -> torch.Tensor:
    """
    For every anchor, its farthest positive and its nearest negative in the batch:
    ``mean(relu(d(a, p_hardest) - d(a, n_hardest) + margin))`` over the anchors that have both.

    Args:
        embeddings: (N, D) features (L2-normalised by the re-ID heads; any features work).
        pids: (N,) identity labels; only labeled boxes (>= 0) should be passed.
        margin: m > 0.

    Returns:
        Tensor: scalar; 0 (attached to ``embeddings``) when no anchor has a positive and a
        negative.
    """
    dist = torch.cdist(embeddings, embeddings)  # (N, N) Euclidean
    same = pids[:, None] == pids[None, :]
    not_self = ~torch.eye(len(pids), dtype=torch.bool, device=pids.device)
    positive = same & not_self
    negative = ~same
    valid = positive.any(dim=1) & negative.any(dim=1)
    if not valid.any():
        return embeddings.sum() * 0.0
    hardest_positive = dist.masked_fill(~positive, float("-inf")).max(dim=1).values
    hardest_negative = dist.masked_fill(~negative, float("inf")).min(dim=1).values
    return F.relu(hardest_positive - hardest_negative + margin)[valid].mean()
