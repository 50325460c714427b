# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
The distillation terms of DKD (Zhang et al., "Diverse Knowledge Distillation for End-to-End Person
Search", AAAI 2021), as transcribed from the authors' overview figure
(../shared/papers/method-notes-qeeps-dkd-fd.md, section 2.3), on B ground-truth boxes embedded by
the student (H) and by the teacher (M):

- probability KD: ``(1/B) sum_i KL(p_i^M || p_i^H)`` over the identity probabilities. The figure
  writes the student first inside KL; we use the usual direction, teacher first (the student
  matches the teacher's distribution), with the teacher detached;
- pair-wise relation KD: ``(1/B^2) ||S^H - S^M||_F^2`` where ``S = F F^T`` has each row
  L2-normalised;
- cross-model triplet KD:
  ``(1/B) sum_i [m + ||f_i^H - f_i^M|| - min_{j != i} ||f_i^H - f_j^M||]_+``, the anchor the
  student's feature, the positive the teacher's feature of the same box, the negative the
  teacher's closest feature of any other box (as the figure writes it).

Pure torch: no detectron2 import.
"""

import torch
import torch.nn.functional as F

__all__ = ["probability_kd", "pairwise_relation_kd", "cross_model_triplet_kd"]


def probability_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """
    Args:
        student_logits, teacher_logits: (B, P) identity logits of the same B boxes.
    Returns:
        Tensor: scalar, the mean over boxes of KL(softmax(teacher) || softmax(student));
        0 for B = 0.
    """
    if len(student_logits) == 0:
        return student_logits.sum() * 0.0
    teacher = F.log_softmax(teacher_logits.detach(), dim=1)
    student = F.log_softmax(student_logits, dim=1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean")


def _row_normalised_gram(feats: torch.Tensor) -> torch.Tensor:
    return F.normalize(feats @ feats.t(), dim=1)


def pairwise_relation_kd(student_feats: torch.Tensor, teacher_feats: torch.Tensor) -> torch.Tensor:
    """
    Args:
        student_feats, teacher_feats: (B, D) and (B, D') features of the same B boxes (the widths
            may differ: only the B x B relations are compared).
    Returns:
        Tensor: scalar, the mean over the B^2 entries of the squared difference of the
        row-normalised Gram matrices; 0 for B = 0.
    """
    if len(student_feats) == 0:
        return student_feats.sum() * 0.0
    difference = _row_normalised_gram(student_feats) - _row_normalised_gram(teacher_feats.detach())
    return difference.pow(2).mean()


def cross_model_triplet_kd(
    student_feats: torch.Tensor, teacher_feats: torch.Tensor, margin: float
) -> torch.Tensor:
    """
    Args:
        student_feats, teacher_feats: (B, D) features of the same B boxes, in one space.
        margin: m.
    Returns:
        Tensor: scalar (see the module docstring); 0 when B < 2 (no negative).
    """
    if len(student_feats) < 2:
        return student_feats.sum() * 0.0
    dist = torch.cdist(student_feats, teacher_feats.detach())  # (B, B): student i to teacher j
    positive = dist.diagonal()
    others = dist.masked_fill(
        torch.eye(len(dist), dtype=torch.bool, device=dist.device), float("inf")
    )
    return F.relu(margin + positive - others.min(dim=1).values).mean()
