# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
The training behind tools/train_net.py (personsearch_kd.engine) end to end on a tiny registered
dataset: train, checkpoint, resume; and the script's command line.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("detectron2")

import torch  # noqa: E402

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.engine import default_argument_parser  # noqa: E402

from personsearch_kd.engine import Trainer, setup_from_args, train_or_evaluate  # noqa: E402

from helpers import REPO_ROOT, synthetic_record, tiny_cfg  # noqa: E402


@pytest.fixture
def tiny_dataset(tmp_path):
    name = f"ps_synthetic_train_{os.getpid()}_{tmp_path.name}"
    records = [
        synthetic_record(tmp_path, i, pids)
        for i, pids in enumerate([[0, 1, -1], [2, -1], [3, 4], [5, 0, -1]])
    ]
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(thing_classes=["person"])
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_train_then_resume_keeps_oim_memory(tmp_path, tiny_dataset):
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(tiny_cfg(18).dump())
    output_dir = tmp_path / "output"
    common = [
        "DATASETS.TRAIN",
        f"('{tiny_dataset}',)",
        "DATASETS.TEST",
        "()",
        "DATALOADER.NUM_WORKERS",
        "0",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "SOLVER.BASE_LR",
        "0.01",
        "SOLVER.WARMUP_ITERS",
        "0",
        "SOLVER.STEPS",
        "()",
        "SOLVER.CHECKPOINT_PERIOD",
        "1000",
        "OUTPUT_DIR",
        str(output_dir),
    ]
    parser = default_argument_parser()
    args = parser.parse_args(["--config-file", str(config_file), *common, "SOLVER.MAX_ITER", "2"])
    train_or_evaluate(args)

    first = torch.load(output_dir / "model_final.pth", weights_only=False)
    assert first["iteration"] == 1
    lut = first["model"]["roi_heads.oim_loss.lut"]
    assert lut.norm(dim=1).gt(0).sum() >= 3  # several ids seen in 2 steps of 2 images
    metrics = [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(m["loss_oim"])) for m in metrics if "loss_oim" in m)
    assert any("loss_oim" in m for m in metrics)
    # detectron2's writers: tensorboard event file and metrics.json, with the PeakMemory hook's
    # peak RSS (CPU) in every line.
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(output_dir))
    assert all(m["peak_mem_gb"] > 0.1 for m in metrics)

    resumed_args = parser.parse_args(
        ["--config-file", str(config_file), "--resume", *common, "SOLVER.MAX_ITER", "4"]
    )
    trainer = Trainer(setup_from_args(resumed_args))
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 2
    oim = trainer.model.roi_heads.oim_loss
    assert torch.equal(oim.lut, lut)
    assert torch.equal(oim.queue, first["model"]["roi_heads.oim_loss.queue"])
    assert int(oim.queue_ptr) == int(first["model"]["roi_heads.oim_loss.queue_ptr"])
    trainer.train()
    final = torch.load(output_dir / "model_final.pth", weights_only=False)
    assert final["iteration"] == 3
    assert not torch.equal(final["model"]["roi_heads.oim_loss.lut"], lut)


def test_the_script_answers_help_and_bad_input_in_one_line(tmp_path):
    script = os.path.join(REPO_ROOT, "tools", "train_net.py")
    usage = subprocess.run(
        [sys.executable, script, "--help"], capture_output=True, text=True, check=True
    )
    assert "--config-file" in usage.stdout and "--eval-only" in usage.stdout
    missing = str(tmp_path / "missing.yaml")
    bad = subprocess.run(
        [sys.executable, script, "--config-file", missing], capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == f"error: --config-file {missing}: no such file"
