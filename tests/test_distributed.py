# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""Two CPU processes (gloo, detectron2's launch) train under DDP and keep identical OIM memories."""

import os

import pytest

pytest.importorskip("detectron2")

import torch  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from detectron2.engine import launch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from helpers import (
    end_distributed_worker,
    model_inputs,
    set_seed,
    synthetic_record,
    tiny_cfg,
)  # noqa: E402

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
