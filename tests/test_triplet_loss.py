# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""Batch-hard triplet loss (pure torch) against hand-computed cases."""

import pytest
import torch

from personsearch_kd.layers import batch_hard_triplet_loss


def test_hardest_positive_and_negative_per_anchor():
    # Points on a line: ids 0, 0, 1 at 0, 1, 3; margin 0.5.
    emb = torch.tensor([[0.0], [1.0], [3.0]], requires_grad=True)
    loss = batch_hard_triplet_loss(emb, torch.tensor([0, 0, 1]), margin=0.5)
    # anchor 0: d+ = 1, d- = 3 -> relu(1 - 3 + 0.5) = 0; anchor 1: d+ = 1, d- = 2 -> 0;
    # anchor 2 (id 1) has no positive and is left out.
    assert loss.item() == pytest.approx(0.0)
    loss = batch_hard_triplet_loss(emb, torch.tensor([0, 0, 1]), margin=2.5)
    # anchor 0: 1 - 3 + 2.5 = 0.5; anchor 1: 1 - 2 + 2.5 = 1.5 -> mean 1.0
    assert loss.item() == pytest.approx(1.0)
    loss.backward()
    # loss = 0.5 * [(|x0-x1| - |x0-x2| + 2.5) + (|x1-x0| - |x1-x2| + 2.5)], x0 < x1 < x2:
    # d/d x0 = 0.5 * (-1 + 1 - 1) = -0.5; d/d x1 = 0.5 * (1 + 1 + 1) = 1.5; d/d x2 = 0.5 * (-1 - 1)
    assert emb.grad.flatten().tolist() == pytest.approx([-0.5, 1.5, -1.0], abs=1e-6)


def test_no_valid_anchor_gives_an_attached_zero():
    emb = torch.randn(3, 4, requires_grad=True)
    for pids in (torch.tensor([0, 1, 2]), torch.tensor([5, 5, 5])):  # no positive / no negative
        loss = batch_hard_triplet_loss(emb, pids, margin=0.3)
        assert loss.item() == 0.0 and loss.requires_grad
