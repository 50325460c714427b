# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
The detection distillation losses of KD_det (Munjal et al., BMVC 2019, section 4.1), after Chen et
al., "Learning Efficient Object Detection Models with Knowledge Distillation", NeurIPS 2017:

- classification: ``mu * CE(student, ground truth) + (1 - mu) * soft CE(student, teacher)``, the
  soft CE ``-sum_c w_c P_t[c] log P_s[c]`` on probabilities softened by a temperature, with a
  larger weight on the background class (Chen's w_bg = 1.5); a binary form for sigmoid logits;
- regression: the teacher-bounded L2 loss, ``||R_s - y||^2`` where the student is not better
  than the teacher by the margin, 0 elsewhere;
- hint: L2 between an adapted student feature map and the teacher's.

As the seed paper writes them, the soft terms are not multiplied by T^2 (Hinton et al. do).
Pure torch: no detectron2 import.
"""

import torch
import torch.nn.functional as F

__all__ = [
    "soft_cross_entropy",
    "binary_soft_cross_entropy",
    "bounded_regression_loss",
    "hint_loss",
]


def soft_cross_entropy(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    background_weight: float,
) -> torch.Tensor:
    """
    Args:
        student_logits, teacher_logits: (N, K + 1) class logits, background in the last column
            (detectron2's FastRCNNOutputLayers layout).
        temperature: T of ``softmax(z / T)``, for both.
        background_weight: w of the background column; the K object classes weigh 1.

    Returns:
        Tensor: scalar, ``mean_i -sum_c w_c P_t[i, c] log P_s[i, c]`` (0 for N = 0).
    """
    if len(student_logits) == 0:
        return student_logits.sum() * 0.0
    weights = student_logits.new_ones(student_logits.shape[1])
    weights[-1] = background_weight
    teacher_probs = F.softmax(teacher_logits.detach() / temperature, dim=1)
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    return -(weights * teacher_probs * log_student).sum(dim=1).mean()


def binary_soft_cross_entropy(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    background_weight: float,
) -> torch.Tensor:
    """
    The two-class soft CE for one sigmoid logit per sample (detectron2's RPN objectness).

    Args:
        student_logits, teacher_logits: (N,) objectness logits.

    Returns:
        Tensor: scalar, ``mean_i -[p_t log p_s + w_bg (1 - p_t) log(1 - p_s)]`` with
        ``p = sigmoid(z / T)`` (0 for N = 0).
    """
    if len(student_logits) == 0:
        return student_logits.sum() * 0.0
    teacher_probs = torch.sigmoid(teacher_logits.detach() / temperature)
    scaled = student_logits / temperature
    # log(1 - sigmoid(x)) = logsigmoid(-x), stable for large |x|.
    per_sample = teacher_probs * F.logsigmoid(scaled) + background_weight * (
        1 - teacher_probs
    ) * F.logsigmoid(-scaled)
    return -per_sample.mean()


def bounded_regression_loss(
    student_deltas: torch.Tensor,
    teacher_deltas: torch.Tensor,
    target_deltas: torch.Tensor,
    margin: float,
    normalizer: float,
) -> torch.Tensor:
    """
    Chen et al.'s teacher-bounded regression: the teacher is an upper bound, not a target.

    Args:
        student_deltas, teacher_deltas, target_deltas: (N, 4) box deltas of the positive samples
            (same Box2BoxTransform for all three).
        margin: m; the student is penalised while ``||R_s - y||^2 + m > ||R_t - y||^2``.
        normalizer: the loss sum is divided by it (detectron2 divides box losses by the number of
            sampled anchors / ROIs, positives and negatives).

    Returns:
        Tensor: scalar, ``sum_i [e_s,i + m > e_t,i] * e_s,i / normalizer`` with
        ``e = ||R - y||_2^2`` per sample.
    """
    student_error = (student_deltas - target_deltas).pow(2).sum(dim=1)
    teacher_error = (teacher_deltas.detach() - target_deltas).pow(2).sum(dim=1)
    worse = student_error + margin > teacher_error
    return (student_error * worse).sum() / max(normalizer, 1.0)


def hint_loss(adapted_student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """
    Args:
        adapted_student: (B, C, H, W) student feature after the adaptation layer.
        teacher: (B, C, H, W) the teacher's feature at the hint layer.

    Returns:
        Tensor: scalar, the mean squared difference over all elements.
    """
    if adapted_student.shape != teacher.shape:
        raise ValueError(
            f"hint_loss: adapted student feature {tuple(adapted_student.shape)} and teacher "
            f"feature {tuple(teacher.shape)} differ; both networks must see the same input size"
        )
    return F.mse_loss(adapted_student, teacher.detach())
