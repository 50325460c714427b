# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""SafeCheckpointer: atomic checkpoint and last_checkpoint files, never a diverged model saved."""

import os
import signal
import subprocess
import sys

import pytest

pytest.importorskip("detectron2")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from personsearch_kd.engine import SafeCheckpointer, Trainer, setup_from_args  # noqa: E402

from helpers import synthetic_record, tiny_cfg  # noqa: E402


def _last_named(save_dir) -> str:
    return (save_dir / "last_checkpoint").read_text()


def _model(scale: float = 1.0) -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    with torch.no_grad():
        model[0].weight.fill_(scale)
    return model


def test_refuses_to_save_a_model_with_non_finite_parameters_or_buffers(tmp_path):
    model = _model()
    checkpointer = SafeCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000004", iteration=4)
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"iteration 7: .*0\.weight"):
        checkpointer.save("model_0000007", iteration=7)
    assert not (tmp_path / "model_0000007.pth").exists()
    assert _last_named(tmp_path) == "model_0000004.pth"

    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[1].running_var[2] = float("inf")  # a buffer
    with pytest.raises(FloatingPointError, match=r"1\.running_var"):
        checkpointer.save("model_final", iteration=9)
    assert _last_named(tmp_path) == "model_0000004.pth"


def test_a_write_interrupted_midway_leaves_the_previous_files_whole(tmp_path, monkeypatch):
    checkpointer = SafeCheckpointer(_model(1.0), str(tmp_path))
    checkpointer.save("model_final", iteration=1)
    real_save = torch.save

    def dies_halfway(obj, f, *args, **kwargs):
        f.write(b"partial bytes of a checkpoint")
        raise KeyboardInterrupt  # the process is stopped in the middle of the write

    monkeypatch.setattr(torch, "save", dies_halfway)
    checkpointer.model[0].weight.data.fill_(2.0)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_final", iteration=2)  # overwriting the file last_checkpoint names
    monkeypatch.setattr(torch, "save", real_save)

    assert _last_named(tmp_path) == "model_final.pth"
    kept = torch.load(tmp_path / "model_final.pth", weights_only=False)
    assert kept["iteration"] == 1
    assert torch.equal(kept["model"]["0.weight"], torch.ones(4, 4))
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]


_KILLED_WHILE_SAVING = """
import sys, time, torch
from torch import nn
from personsearch_kd.engine import SafeCheckpointer
model = nn.Linear(64, 64)
checkpointer = SafeCheckpointer(model, sys.argv[1])
checkpointer.save("model_final", iteration=1)
def stalls_halfway(obj, f, *args, **kwargs):
    f.write(b"partial bytes of a checkpoint")
    f.flush()
    print("writing", flush=True)
    time.sleep(600)
torch.save = stalls_halfway
model.weight.data.fill_(2.0)
checkpointer.save("model_final", iteration=2)
"""


def test_killed_while_saving_last_checkpoint_names_a_complete_checkpoint(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WHILE_SAVING, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.send_signal(signal.SIGKILL)  # no cleanup runs: as a kill or a power cut
        proc.wait()
    assert _last_named(tmp_path) == "model_final.pth"
    assert torch.load(tmp_path / "model_final.pth", weights_only=False)["iteration"] == 1


def test_diverging_training_stops_naming_the_iteration_and_keeps_the_last_good_checkpoint(
    tmp_path,
):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.engine import HookBase, default_argument_parser

    class PoisonRunningVariance(HookBase):
        """A BatchNorm statistic turns NaN before iteration 1: the training loss (batch
        statistics) stays finite, so detectron2's check on the loss does not see it."""

        def before_step(self):
            if self.trainer.iter == 1:
                self.trainer.model.roi_heads.reid_head.norm.running_var[0] = float("nan")

    name = f"ps_diverging_{os.getpid()}"
    records = [synthetic_record(tmp_path, i, pids) for i, pids in enumerate([[0, 1], [2, -1]])]
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(thing_classes=["person"])
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(tiny_cfg(18).dump())
    output_dir = tmp_path / "output"
    opts = [
        *("DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()", "SOLVER.IMS_PER_BATCH", "2"),
        *("SOLVER.BASE_LR", "0.01", "SOLVER.WARMUP_ITERS", "0", "SOLVER.STEPS", "()"),
        *("SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "1", "OUTPUT_DIR", str(output_dir)),
    ]
    args = default_argument_parser().parse_args(["--config-file", str(config_file), *opts])
    try:
        trainer = Trainer(setup_from_args(args))
        trainer.register_hooks([PoisonRunningVariance()])
        trainer.resume_or_load(resume=False)
        with pytest.raises(
            FloatingPointError, match=r"iteration 1: training diverged.*running_var"
        ):
            trainer.train()
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert sorted(f for f in os.listdir(output_dir) if f.endswith(".pth")) == ["model_0000000.pth"]
    assert _last_named(output_dir) == "model_0000000.pth"
    saved = torch.load(output_dir / "model_0000000.pth", weights_only=False)["model"]
    assert all(torch.isfinite(t).all() for t in saved.values() if t.is_floating_point())
