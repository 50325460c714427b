# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
The query-guidance blocks of QEEPS (Munjal et al., "Query-guided End-to-End Person Search",
CVPR 2019). The architecture is confirmed by the authors' figure; the internals below are not
(../shared/papers/method-notes-qeeps-dkd-fd.md, section 1) and are this project's design:

- :class:`QSSE`: squeeze-and-excitation over a query/gallery pair of residual branches. One
  excitation, computed from both branches' pooled descriptors concatenated, re-weights both, so
  the Siamese branches stay weight-shared and each sees the other.
- :class:`QuerySimilarityNet` (QSimNet): the squared difference of the query's and a proposal's
  L2-normalised ID features -> BatchNorm -> Linear -> 2 logits (different, same person).
- :func:`query_anchor_labels` (QRPN) and :func:`query_proposal_labels` (QSimNet): only the query's
  own person in the gallery image is positive; every other person is a negative.

Pure torch: no detectron2 import.
"""

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["QSSE", "QuerySimilarityNet", "query_anchor_labels", "query_proposal_labels"]


class QSSE(nn.Module):
    """
    Query-guided Siamese squeeze-and-excitation for one residual block.

    Args:
        channels: C, the residual branch's output channels.
        reduction: r, the bottleneck of the excitation (C/r units; 16 as in SE networks).
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.squeeze = nn.Linear(2 * channels, hidden)
        self.excite = nn.Linear(hidden, channels)

    def forward(self, query: torch.Tensor, gallery: torch.Tensor):
        """
        Args:
            query, gallery: (N, C, Hq, Wq) and (N, C, Hg, Wg): the residual branches of N pairs
                (the sizes of the two images may differ).
        Returns:
            (query, gallery) re-weighted by the same (N, C) excitation, shapes unchanged.
        """
        pooled = torch.cat([query.mean(dim=(2, 3)), gallery.mean(dim=(2, 3))], dim=1)
        scale = torch.sigmoid(self.excite(F.relu(self.squeeze(pooled))))[:, :, None, None]
        return query * scale, gallery * scale


class QuerySimilarityNet(nn.Module):
    """
    QSimNet: scores whether a gallery proposal shows the query's person.

    Args:
        dim: D, the ID feature size.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim)
        self.classify = nn.Linear(dim, 2)

    def forward(self, query: torch.Tensor, proposals: torch.Tensor) -> torch.Tensor:
        """
        Args:
            query: (D,) or (M, D) L2-normalised ID feature(s) of the query (one, or one per
                proposal).
            proposals: (M, D) L2-normalised ID features of the gallery proposals.
        Returns:
            (M, 2) logits: column 1 "the same person".
        """
        return self.classify(self.norm((proposals - query) ** 2))

    @torch.no_grad()
    def similarity(self, query: torch.Tensor, proposals: torch.Tensor) -> torch.Tensor:
        """(M,) the probability that each proposal is the query's person."""
        return F.softmax(self(query, proposals), dim=1)[:, 1]


def query_anchor_labels(
    iou_with_query_person: torch.Tensor, positive: float = 0.7, negative: float = 0.3
) -> torch.Tensor:
    """
    QRPN anchor labels against the query's person in the gallery image.

    Args:
        iou_with_query_person: (A,) each anchor's IoU with that person's box.
        positive, negative: IoU at or above which an anchor is positive, below which negative.
    Returns:
        (A,) int64: 1 positive, 0 negative, -1 ignored. The best-matching anchors are positive
        even under ``positive`` (as detectron2's RPN matcher allows low-quality matches), so a
        small person still has one. Anchors on other people are negatives: only the query's
        IoU is given.
    """
    labels = torch.full_like(iou_with_query_person, -1, dtype=torch.int64)
    labels[iou_with_query_person < negative] = 0
    labels[iou_with_query_person >= positive] = 1
    best = iou_with_query_person.max() if len(iou_with_query_person) else 0.0
    if best > 0:
        labels[iou_with_query_person == best] = 1
    return labels


def query_proposal_labels(iou_with_query_person: torch.Tensor, threshold: float = 0.5):
    """(M,) int64 QSimNet labels: 1 where a proposal's IoU with the query's person >= threshold."""
    return (iou_with_query_person >= threshold).to(torch.int64)
