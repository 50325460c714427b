# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""Two CPU processes (gloo, detectron2's launch) train under DDP and keep identical OIM memories."""

import os
from datetime import timedelta

import pytest

pytest.importorskip("detectron2")

import torch  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from detectron2.engine import launch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import Instances  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from helpers import (  # noqa: E402
    end_distributed_worker,
    model_inputs,
    set_seed,
    synthetic_record,
    tiny_cfg,
)

# Each rank sees its own identities, so a rank that did not gather would miss the other's rows.
RANK_PIDS = {0: [[0, 1, -1], [1, -1]], 1: [[2, 3, -1], [3, 2]]}


def _train_two_steps_and_save_memory(out_dir):
    rank = comm.get_rank()
    set_seed(rank)
    cfg = tiny_cfg(18)
    # detectron2's create_ddp_model pins device_ids (GPU only); on CPU DDP takes none.
    model = DistributedDataParallel(build_model(cfg), broadcast_buffers=False)
    records = [
        synthetic_record(out_dir, 10 * rank + i, pids) for i, pids in enumerate(RANK_PIDS[rank])
    ]
    inputs = model_inputs(cfg, records)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with EventStorage():
        for _ in range(2):
            losses = model(inputs)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
    oim = model.module.roi_heads.oim_loss
    torch.save(dict(oim.state_dict()), os.path.join(out_dir, f"memory_rank{rank}.pth"))
    end_distributed_worker()


def test_ddp_ranks_end_with_identical_lut_and_queue(tmp_path):
    launch(
        _train_two_steps_and_save_memory,
        num_gpus_per_machine=2,
        dist_url="auto",
        args=(str(tmp_path),),
    )
    rank0, rank1 = (torch.load(tmp_path / f"memory_rank{r}.pth") for r in (0, 1))
    for key in ("lut", "queue", "queue_ptr"):
        assert torch.equal(rank0[key], rank1[key]), key
    # Rows of the ids of both ranks were written; the two unused rows stay empty.
    assert rank0["lut"].norm(dim=1).tolist() == pytest.approx([1, 1, 1, 1, 0, 0], abs=1e-5)
    # 3 unlabeled persons over both ranks, each entering at least as its ground-truth box,
    # on each of the 2 steps.
    assert int(rank0["queue_ptr"]) >= 6 or rank0["queue"].norm(dim=1).gt(0).all()


# Foreground person ids of each rank's sampled ROIs on two iterations: rank 1 has no foreground
# ROI on the first (and images without ground truth, so no gt_pids field) and one on the second,
# too few to embed (BatchNorm needs two), while rank 0 embeds on both.
FOREGROUND_PIDS = {0: [[0, 1, -1], [2, -1]], 1: [[], [3]]}
# A gather a rank skipped would leave the other waiting: time out instead of hanging the test.
COLLECTIVE_TIMEOUT = timedelta(seconds=60)


def _sampled_rois(pids, num_background, num_classes, with_gt):
    """Sampled proposals of one image as the box head sees them: foreground first."""
    rois = Instances((64, 64))
    classes = [0] * len(pids) + [num_classes] * num_background
    rois.gt_classes = torch.tensor(classes, dtype=torch.int64)
    if with_gt:
        rois.gt_pids = torch.tensor(list(pids) + [-1] * num_background, dtype=torch.int64)
    return rois


def _oim_steps_with_few_foreground_rois(out_dir):
    rank = comm.get_rank()
    set_seed(rank)
    head = build_model(tiny_cfg(18)).roi_heads
    head.train()
    for pids in FOREGROUND_PIDS[rank]:
        rois = _sampled_rois(pids, 4, head.num_classes, with_gt=bool(pids))
        box_features = torch.randn(len(rois), 512, 2, 2, requires_grad=True)
        reid, fg_pids = head._embed_foreground(box_features, [rois])
        loss = head._reid_losses(reid, fg_pids, box_features)["loss_oim"]
        loss.backward()
        assert torch.isfinite(loss)
    oim = head.oim_loss
    torch.save(dict(oim.state_dict()), os.path.join(out_dir, f"memory_rank{rank}.pth"))
    end_distributed_worker()


def test_ddp_rank_with_fewer_than_two_foreground_rois_does_not_hang(tmp_path):
    launch(
        _oim_steps_with_few_foreground_rois,
        num_gpus_per_machine=2,
        dist_url="auto",
        args=(str(tmp_path),),
        timeout=COLLECTIVE_TIMEOUT,
    )
    rank0, rank1 = (torch.load(tmp_path / f"memory_rank{r}.pth") for r in (0, 1))
    for key in ("lut", "queue", "queue_ptr"):
        assert torch.equal(rank0[key], rank1[key]), key
    # Rank 1 received rank 0's identities 0, 1, 2 and its two unlabeled persons; its own single
    # ROI (id 3) was not embedded.
    assert rank1["lut"].norm(dim=1).tolist() == pytest.approx([1, 1, 1, 0, 0, 0], abs=1e-5)
    assert int(rank1["queue_ptr"]) == 2
