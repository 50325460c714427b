# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""DKD's distillation terms (pure torch) against hand-computed cases."""

import math

import pytest
import torch

from personsearch_kd.layers.dkd_losses import (
    cross_model_triplet_kd,
    pairwise_relation_kd,
    probability_kd,
)


def test_probability_kd_is_kl_of_teacher_to_student_and_leaves_the_teacher_alone():
    student = torch.zeros(1, 2, requires_grad=True)  # p_s = (1/2, 1/2)
    teacher = torch.tensor([[math.log(3.0), 0.0]], requires_grad=True)  # p_t = (3/4, 1/4)
    loss = probability_kd(student, teacher)
    # KL(p_t || p_s) = 3/4 log(3/4 / 1/2) + 1/4 log(1/4 / 1/2); the other direction differs.
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert expected != pytest.approx(0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25))
    loss.backward()
    assert teacher.grad is None
    # d KL / d z_s = p_s - p_t
    assert student.grad[0].tolist() == pytest.approx([-0.25, 0.25], abs=1e-6)
    assert probability_kd(torch.zeros(0, 3), torch.zeros(0, 3)).item() == 0


def test_pairwise_relation_compares_row_normalised_gram_matrices():
    same = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    # Row normalisation removes each row's scale: [[1, 0], [0, 4]] -> [[1, 0], [0, 1]].
    assert pairwise_relation_kd(same, torch.eye(2)).item() == pytest.approx(0.0)
    student = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # Gram [[1, 1], [1, 1]] -> rows / sqrt(2)
    loss = pairwise_relation_kd(student, torch.eye(2))  # teacher Gram rows: [1, 0], [0, 1]
    r = 1 / math.sqrt(2)
    expected = ((r - 1) ** 2 + r**2 + r**2 + (r - 1) ** 2) / 4
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # Different widths: only the relations are compared.
    assert pairwise_relation_kd(torch.eye(2), torch.eye(2)[:, :1].repeat(1, 3)).item() > 0


def test_cross_model_triplet_uses_the_same_box_as_positive_and_the_closest_other_as_negative():
    teacher = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    student = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 4.0]], requires_grad=True)
    loss = cross_model_triplet_kd(student, teacher, margin=0.5)
    # box 0: d+ = 1, closest other teacher: (3, 0) at 2 -> 0.5 + 1 - 2 = -0.5 -> 0;
    # box 1: d+ = 0, closest other: (0, 0) at 3 -> 0.5 - 3 -> 0; box 2: d+ = 0, closest 4 -> 0.
    assert loss.item() == pytest.approx(0.0)
    loss = cross_model_triplet_kd(student, teacher, margin=1.5)  # box 0: 1.5 + 1 - 2 = 0.5
    assert loss.item() == pytest.approx(0.5 / 3)
    assert cross_model_triplet_kd(student[:1], teacher[:1], 0.3).item() == 0  # no negative
