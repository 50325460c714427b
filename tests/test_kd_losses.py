# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""KD_det losses (pure torch) against hand-computed tiny cases."""

import math

import pytest
import torch

from personsearch_kd.layers import (
    binary_soft_cross_entropy,
    bounded_regression_loss,
    hint_loss,
    soft_cross_entropy,
)

LN2 = math.log(2)


def test_soft_cross_entropy_weights_background_and_softens_by_temperature():
    student = torch.zeros(1, 2, requires_grad=True)  # P_s = (0.5, 0.5)
    teacher = torch.tensor([[0.0, math.log(3)]], requires_grad=True)  # P_t = (0.25, 0.75)
    # -(1 * 0.25 * ln 0.5 + 1.5 * 0.75 * ln 0.5), background (last column) weighted 1.5.
    loss = soft_cross_entropy(student, teacher, temperature=1.0, background_weight=1.5)
    assert loss.item() == pytest.approx(1.375 * LN2)
    assert soft_cross_entropy(student, teacher, 1.0, 1.0).item() == pytest.approx(LN2)
    # T = 10 softens logits ten times larger to the same probabilities.
    hot = soft_cross_entropy(student, teacher * 10, temperature=10.0, background_weight=1.5)
    assert hot.item() == pytest.approx(1.375 * LN2)
    loss.backward()
    assert teacher.grad is None and student.grad is not None
    # Mean over samples: a second, identical sample leaves the value.
    both = soft_cross_entropy(student.detach().repeat(2, 1), teacher.repeat(2, 1), 1.0, 1.5)
    assert both.item() == pytest.approx(1.375 * LN2)
    assert soft_cross_entropy(torch.zeros(0, 2), torch.zeros(0, 2), 1.0, 1.5).item() == 0


def test_binary_soft_cross_entropy_for_sigmoid_objectness():
    student = torch.zeros(1)  # p_s = 0.5
    teacher = torch.tensor([math.log(3)])  # p_t = 0.75
    # -(0.75 * ln 0.5 + 1.5 * 0.25 * ln 0.5)
    loss = binary_soft_cross_entropy(student, teacher, temperature=1.0, background_weight=1.5)
    assert loss.item() == pytest.approx(1.125 * LN2)
    hot = binary_soft_cross_entropy(student, teacher * 10, temperature=10.0, background_weight=1.5)
    assert hot.item() == pytest.approx(1.125 * LN2)
    # Stable where sigmoid saturates: a confident, agreeing student costs almost nothing.
    sure = binary_soft_cross_entropy(torch.tensor([200.0]), torch.tensor([200.0]), 1.0, 1.5)
    assert torch.isfinite(sure) and sure.item() < 1e-6


def test_bounded_regression_zero_region_and_normalizer():
    target = torch.zeros(3, 4)
    student = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0], [1.0, 1.0, 0, 0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 0, 0, 0], [2.0, 0, 0, 0], [0, 0, 0, 2.0]])
    # Squared errors: student (1, 0, 2), teacher (0, 4, 4). With m = 0 only sample 0 is worse
    # than its teacher; samples 1 and 2 beat it and cost nothing.
    loss = bounded_regression_loss(student, teacher, target, margin=0.0, normalizer=4)
    assert loss.item() == pytest.approx(1 / 4)
    loss.backward()
    assert student.grad[1:].abs().sum() == 0 and student.grad[0, 0] == pytest.approx(2 / 4)
    # A margin of 3: sample 2 (2 + 3 > 4) is penalised too.
    assert bounded_regression_loss(student, teacher, target, 3.0, 4).item() == pytest.approx(3 / 4)
    # Equal errors with m = 0 are not "worse": zero.
    assert bounded_regression_loss(teacher, teacher, target, 0.0, 1).item() == 0


def test_hint_loss_is_mean_squared_difference_and_checks_shapes():
    student = torch.zeros(1, 2, 2, 2)
    teacher = torch.ones(1, 2, 2, 2) * 2
    assert hint_loss(student, teacher).item() == pytest.approx(4.0)
    with pytest.raises(ValueError, match=r"\(1, 2, 2, 2\) and teacher feature \(1, 4, 2, 2\)"):
        hint_loss(student, torch.zeros(1, 4, 2, 2))
