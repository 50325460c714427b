# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
The training losses of OIM_18, KD_reid R18 and KD_det R18 (tiny sizes, fixed seeds, one thread,
3 SGD steps) equal, to 1e-5, those recorded in ``regression_losses.json``, which was written by
the implementation before the distillation framework (``python3 tests/test_regression_losses.py
--write`` at the commit named in the file).
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("detectron2")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from personsearch_kd import add_teacher  # noqa: E402
from personsearch_kd.layers import save_lut_file  # noqa: E402

from helpers import (  # noqa: E402
    NUM_IDS,
    REPO_ROOT,
    det_teacher,
    model_inputs,
    set_seed,
    synthetic_record,
    tiny_cfg,
)

REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "regression_losses.json")
STEPS = 3
PERSONS = [[0, 1, -1], [2, -1, 0], [3, 4], [5, -1]]


def _oim_18(tmp_path):
    return tiny_cfg(18)


def _kd_reid_r18(tmp_path):
    set_seed(7)
    lut = F.normalize(torch.randn(NUM_IDS, 256), dim=1)
    lut_file = str(tmp_path / "teacher_lut.pth")
    cfg = tiny_cfg(18, **{"MODEL.OIM.FREEZE_LUT": True, "MODEL.OIM.LOSS_WEIGHT": 0.1})
    save_lut_file(lut_file, lut, cfg.DATASETS.TRAIN, range(NUM_IDS), "compute", "", "teacher")
    return add_teacher(cfg, "table", "LUTFileTeacher", lut_file)


def _kd_det_r18(tmp_path):
    config_file, weights = det_teacher(tmp_path, depth=50)
    cfg = tiny_cfg(
        18,
        **{
            "MODEL.DISTILLATION.LOSSES": ["HintLoss", "RPNDistillLoss", "RCNDistillLoss"],
            # An untrained teacher's boxes are worse than any student's: with the default margin
            # the bounded terms would be 0 and untested. This margin makes every positive count.
            "MODEL.KD_DET.BOUNDED_REG_MARGIN": 1e6,
        },
    )
    return add_teacher(cfg, "detector", "DetectorTeacher", weights, config_file)


STUDENTS = {"OIM_18": _oim_18, "KD_reid R18": _kd_reid_r18, "KD_det R18": _kd_det_r18}


def training_losses(name, tmp_path):
    """Per step, the loss dict of ``STUDENTS[name]`` trained for STEPS SGD steps."""
    cfg = STUDENTS[name](tmp_path)
    records = [synthetic_record(tmp_path, 100 + i, pids) for i, pids in enumerate(PERSONS)]
    set_seed(0)
    model = build_model(cfg).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001)
    steps = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one summation order for the CPU kernels
    with EventStorage():
        for step in range(STEPS):
            set_seed(step)  # the mapper's flips, the anchor and ROI sampling
            batch = records[2 * (step % 2) : 2 * (step % 2) + 2]
            losses = model(model_inputs(cfg, batch))
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
            steps.append({k: v.item() for k, v in losses.items()})
    torch.set_num_threads(threads)
    return steps


@pytest.mark.parametrize("name", list(STUDENTS))
def test_losses_equal_the_recorded_ones(name, tmp_path):
    with open(REFERENCE) as f:
        expected = json.load(f)["losses"][name]
    actual = training_losses(name, tmp_path)
    for step, (mine, theirs) in enumerate(zip(actual, expected)):
        assert set(mine) == set(theirs), step
        for key in theirs:
            assert mine[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-5), (step, key)


if __name__ == "__main__":  # pragma: no cover
    import tempfile
    from pathlib import Path

    if sys.argv[1:] != ["--write"]:
        sys.exit(f"usage: python3 {sys.argv[0]} --write   (records the current code's losses)")
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    losses = {}
    for name in STUDENTS:
        with tempfile.TemporaryDirectory() as tmp:
            losses[name] = training_losses(name, Path(tmp))
    with open(REFERENCE, "w") as f:
        json.dump({"recorded_at": commit, "steps": STEPS, "losses": losses}, f, indent=1)
        f.write("\n")
    print(f"wrote {REFERENCE} at {commit}")
