# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""OIM loss core (pure torch): runs without detectron2."""

import io
import math

import pytest
import torch

from personsearch_kd.layers import OIMLoss


def _tiny_oim(**kwargs):
    """P=2 ids, Q=2 queue slots, D=2, scalar 2; LUT = identity, queue = [[0.6, 0.8], [0, 0]]."""
    oim = OIMLoss(feat_dim=2, num_ids=2, queue_size=2, scalar=2.0, **kwargs)
    oim.lut.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    oim.queue.copy_(torch.tensor([[0.6, 0.8], [0.0, 0.0]]))
    return oim


def test_loss_and_gradient_match_hand_computation():
    oim = _tiny_oim()
    x = torch.tensor([[0.6, 0.8]], requires_grad=True)
    loss = oim(x, torch.tensor([0]))
    loss.backward()
    # logits = 2 * [x.lut0, x.lut1, x.q0, x.q1] = [1.2, 1.6, 2.0, 0.0], target column 0.
    logits = [1.2, 1.6, 2.0, 0.0]
    lse = math.log(sum(math.exp(v) for v in logits))
    assert loss.item() == pytest.approx(lse - 1.2, abs=1e-6)
    # d loss / d x = scalar * (sum_j p_j m_j - m_target).
    p = [math.exp(v - lse) for v in logits]
    memory = [(1.0, 0.0), (0.0, 1.0), (0.6, 0.8), (0.0, 0.0)]
    expected = [2.0 * (sum(pj * m[k] for pj, m in zip(p, memory)) - memory[0][k]) for k in (0, 1)]
    assert x.grad[0].tolist() == pytest.approx(expected, abs=1e-6)


def test_unlabeled_boxes_add_no_loss_but_enter_the_queue():
    oim = _tiny_oim()
    x = torch.tensor([[0.6, 0.8], [1.0, 0.0]], requires_grad=True)
    pids = torch.tensor([0, -1])
    loss = oim(x, pids)
    only_labeled = oim(x[:1], pids[:1])
    assert loss.item() == pytest.approx(only_labeled.item(), abs=1e-7)
    loss.backward()
    assert x.grad[1].abs().sum().item() == 0.0  # no gradient through an unlabeled box
    oim.update_memory(x.detach(), pids)
    assert oim.queue[0].tolist() == [1.0, 0.0]  # pushed at slot 0
    assert int(oim.queue_ptr) == 1


def test_all_unlabeled_gives_zero_loss_attached_to_graph():
    oim = _tiny_oim()
    x = torch.tensor([[0.6, 0.8]], requires_grad=True)
    loss = oim(x, torch.tensor([-1]))
    assert loss.item() == 0.0 and loss.requires_grad


def test_lut_momentum_update_renormalises_row_sequentially():
    oim = _tiny_oim()
    x = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    oim.update_memory(x, torch.tensor([0, 0]))
    # first: 0.5*[1,0] + 0.5*[0.6,0.8] = [0.8,0.4] -> /sqrt(0.8)
    r1 = [0.8 / math.sqrt(0.8), 0.4 / math.sqrt(0.8)]
    # second: 0.5*r1 + 0.5*[0,1], renormalised
    r2 = [0.5 * r1[0], 0.5 * r1[1] + 0.5]
    n2 = math.hypot(*r2)
    assert oim.lut[0].tolist() == pytest.approx([r2[0] / n2, r2[1] / n2], abs=1e-6)
    assert oim.lut[1].tolist() == [0.0, 1.0]  # untouched id
    assert oim.lut[0].norm().item() == pytest.approx(1.0, abs=1e-6)


def test_queue_wraps_around_and_keeps_newest():
    oim = OIMLoss(feat_dim=1, num_ids=1, queue_size=3)
    unl = lambda n: torch.full((n,), -1)  # noqa: E731
    oim.update_memory(torch.tensor([[1.0], [2.0]]), unl(2))
    assert oim.queue.flatten().tolist() == [1.0, 2.0, 0.0] and int(oim.queue_ptr) == 2
    oim.update_memory(torch.tensor([[3.0], [4.0]]), unl(2))
    assert oim.queue.flatten().tolist() == [4.0, 2.0, 3.0] and int(oim.queue_ptr) == 1
    # 5 features into 3 slots from slot 1: slots 1,2,0,1,2 -> only the newest 3 survive.
    oim.update_memory(torch.tensor([[5.0], [6.0], [7.0], [8.0], [9.0]]), unl(5))
    assert oim.queue.flatten().tolist() == [7.0, 8.0, 9.0] and int(oim.queue_ptr) == 0


def test_frozen_lut_stays_bit_identical_while_queue_updates():
    oim = _tiny_oim(freeze_lut=True)
    before = oim.lut.clone()
    for _ in range(3):
        x = torch.nn.functional.normalize(torch.randn(4, 2), dim=1)
        oim.update_memory(x, torch.tensor([0, 1, -1, -1]))
    assert torch.equal(oim.lut, before)
    assert not torch.equal(oim.queue, torch.tensor([[0.6, 0.8], [0.0, 0.0]]))


def test_state_dict_round_trip_restores_lut_queue_and_pointer():
    oim = OIMLoss(feat_dim=4, num_ids=5, queue_size=3)
    x = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    oim.update_memory(x, torch.tensor([0, 3, -1, -1, 4, -1]))
    buf = io.BytesIO()
    torch.save(oim.state_dict(), buf)
    buf.seek(0)
    fresh = OIMLoss(feat_dim=4, num_ids=5, queue_size=3)
    fresh.load_state_dict(torch.load(buf))
    assert set(oim.state_dict()) == {"lut", "queue", "queue_ptr"}
    for key, value in oim.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    assert int(fresh.queue_ptr) == 0  # 3 unlabeled pushed into 3 slots


def test_initial_lut(tmp_path):
    lut = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    oim = OIMLoss(feat_dim=4, num_ids=3, queue_size=0, init_lut=lut)
    assert torch.equal(oim.lut, lut)
    with pytest.raises(ValueError, match=r"initial LUT has shape \(3, 4\).*\(5, 4\)"):
        OIMLoss(feat_dim=4, num_ids=5, queue_size=0, init_lut=lut)
