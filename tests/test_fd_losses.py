# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""Factorized distillation's factor terms (pure torch) against hand-computed cases."""

import pytest
import torch

from personsearch_kd.layers.fd_losses import factor_feature_loss, factor_map_loss, view_of_map


def _rows_map(height=8, width=2):
    """A (1, 1, height, width) map whose value is its row index."""
    return (
        torch.arange(height, dtype=torch.float32).view(1, 1, height, 1).expand(1, 1, height, width)
    )


def test_view_of_map_takes_the_views_rows():
    rows = _rows_map().contiguous()
    # Up1 of 8 rows = rows 0-3, Dn1 = rows 4-7, resampled 1:1.
    assert view_of_map(rows, (0.0, 0.5), (4, 2))[0, 0, :, 0].tolist() == [0, 1, 2, 3]
    assert view_of_map(rows, (0.5, 1.0), (4, 2))[0, 0, :, 0].tolist() == [4, 5, 6, 7]
    # Two rows per output row: their mean.
    assert view_of_map(rows, (0.0, 1.0), (4, 2))[0, 0, :, 0].tolist() == [0.5, 2.5, 4.5, 6.5]


def test_factor_map_loss_compares_only_the_teachers_rows():
    student = _rows_map().contiguous().requires_grad_()
    # The teacher's map equals the student's bottom half: zero for Dn1; for Up1 each element
    # differs by 4, the mean squared difference is 16.
    teacher = torch.arange(4, 8, dtype=torch.float32).view(1, 1, 4, 1).expand(1, 1, 4, 2)
    assert factor_map_loss(student, teacher, (0.5, 1.0)).item() == pytest.approx(0.0)
    loss = factor_map_loss(student, teacher, (0.0, 0.5))
    assert loss.item() == pytest.approx(16.0)
    loss.backward()
    # Only the top rows receive gradient: d/dx mean((x - t)^2) = 2 (x - t) / 8 = -1.
    assert torch.allclose(student.grad[0, 0, :4], torch.full((4, 2), -1.0))
    assert not student.grad[0, 0, 4:].any()


def test_factor_feature_loss_is_scale_free_and_leaves_the_teacher_alone():
    projected = torch.tensor([[2.0, 0.0], [0.0, 5.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 3.0], [0.0, 1.0]], requires_grad=True)
    # Orthogonal: |e1 - e2|^2 = 2; same direction at another scale: 0; mean 1.
    loss = factor_feature_loss(projected, teacher)
    assert loss.item() == pytest.approx(1.0)
    loss.backward()
    assert teacher.grad is None and projected.grad.abs().sum() > 0
