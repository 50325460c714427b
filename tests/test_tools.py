# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""Command-line tools (tools/) and the lab scripts (dev/) run end to end on tiny inputs."""

import argparse
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("detectron2")

from personsearch_kd import add_teacher  # noqa: E402
from personsearch_kd.modeling.precision import native_precisions  # noqa: E402

from helpers import CONFIGS, REPO_ROOT, det_teacher, load_tool, tiny_cfg  # noqa: E402


def test_benchmark_train_step_prints_a_row_per_config_and_the_kd_teacher_share(tmp_path):
    # A baseline and a KD_det student (R18 DET teacher), both tiny, stepped in turns.
    baseline = os.path.join(CONFIGS, "scratch", "oim_R_18_C4_scratch.yaml")
    config_file, weights = det_teacher(tmp_path, depth=18)
    student = tmp_path / "kd_det.yaml"
    kd = {"MODEL.DISTILLATION.LOSSES": ["HintLoss", "RPNDistillLoss", "RCNDistillLoss"]}
    kd_cfg = add_teacher(tiny_cfg(18, **kd), "detector", "DetectorTeacher", weights, config_file)
    student.write_text(kd_cfg.dump())
    opts = [
        "MODEL.DEVICE", "cpu", "MODEL.OIM.NUM_IDS", "4", "MODEL.OIM.QUEUE_SIZE", "8",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16",
    ]  # fmt: skip
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "dev", "benchmark_train_step.py")]
        + ["--config-file", baseline, str(student), "--height", "96", "--width", "128"]
        + ["--precision", "fp32", "bf16"]
        + ["--batch", "1", "--persons", "2", "--warmup", "0", "--iters", "1"]
        + opts,
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows = [
        line for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line
    ]
    assert rows[0].startswith("| config | precision | depth |") and rows[0].endswith(
        "teacher forward s median |"
    )
    # Every config at every precision (bf16 under CPU autocast), stepped in turns.
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows[1:]]
    assert [(c[0], c[1]) for c in cells] == [
        (baseline, "fp32"), (baseline, "bf16"), (str(student), "fp32"), (str(student), "bf16")
    ]  # fmt: skip
    first, second = cells[0], cells[2]
    assert all(c[2:5] == ["R18", "cpu", "16"] for c in cells)
    assert float(first[5]) > 0 and first[7] == "1.000"
    # The student's ratio is its own median over the first row's.
    assert float(second[7]) == pytest.approx(float(second[5]) / float(first[5]), rel=0.05, abs=0.01)
    # Only the KD_det student has a teacher, whose forward pass is timed.
    assert first[8] == "-" and float(second[8]) > 0


def test_benchmark_train_step_steps_crop_networks_on_their_crop_batches():
    # The holistic crop network and a partial-view one (square crops): no ROIs, no teacher.
    configs = [
        os.path.join(CONFIGS, "mot15", f"reid_crop{v}_R_18.yaml") for v in ("", "_partial")
    ]
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "dev", "benchmark_train_step.py")]
        + ["--config-file", *configs, "--warmup", "0", "--iters", "1"]
        + ["SOLVER.IMS_PER_BATCH", "8", "INPUT.REID_CROP.SIZE", "(32, 16)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows = [row for row in result.stdout.splitlines() if row.startswith("| ") and ".yaml" in row]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    assert [c[0] for c in cells] == configs
    assert all(c[4] == "-" and c[8] == "-" and float(c[5]) > 0 for c in cells)


def test_benchmark_trains_evaluates_and_prints_one_row_per_config(tmp_path):
    # A tiny R18 OIM model and a tiny R18 DET detector on the shipped sample: 5 training
    # iterations each (detectron2 times those after the first 3), then the full test set (85
    # gallery images, 32 queries; the detector runs the gallery only) at short side 128.
    det = {
        "MODEL.META_ARCHITECTURE": "GeneralizedRCNN",
        "MODEL.ROI_HEADS.NAME": "PersonDetectorROIHeads",
        "TEST.PERSON_SEARCH.DETECTION_ONLY": True,
    }
    config_files = [tmp_path / "tiny.yaml", tmp_path / "tiny_det.yaml"]
    config_files[0].write_text(tiny_cfg(18, OUTPUT_DIR=str(tmp_path / "oim")).dump())
    config_files[1].write_text(tiny_cfg(18, OUTPUT_DIR=str(tmp_path / "det"), **det).dump())
    env = dict(os.environ, DETECTRON2_DATASETS=os.path.join(REPO_ROOT, "datasets"))
    opts = [
        "DATASETS.TRAIN", "('mot15_ps_sample_train',)", "DATASETS.TEST", "()",
        "MODEL.OIM.NUM_IDS", "13", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "5",
        "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "0",
    ]  # fmt: skip
    # Training evaluates nothing (DATASETS.TEST empty); the benchmark's evaluation needs a test
    # set, which its own opts give.
    for config_file in config_files:
        subprocess.run(
            [sys.executable, os.path.join(REPO_ROOT, "tools", "train_net.py"), "--config-file"]
            + [str(config_file)] + opts,
            env=env, check=True, capture_output=True,
        )  # fmt: skip
    benchmark = (
        [sys.executable, os.path.join(REPO_ROOT, "dev", "benchmark.py"), "--config-files"]
        + [str(f) for f in config_files]
        + ["--opts"] + opts + ["DATASETS.TEST", "('mot15_ps_sample_test',)"]
    )  # fmt: skip
    result = subprocess.run(benchmark, env=env, capture_output=True, text=True, check=True)
    table = result.stdout[result.stdout.index("Hardware: CPU") :]
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| config | iters | mAP | top-1 | random feats mAP / top-1")
    assert len(rows) == 3
    cells = [c.strip() for c in rows[1].strip("|").split("|")]
    assert cells[1] == "5"  # iterations read from metrics.json, not retrained
    values = [float(cells[i]) for i in (2, 3, 5, 6)] + [float(v) for v in cells[4].split(" / ")]
    assert all(0.0 <= v <= 100.0 for v in values)
    assert float(cells[7]) > 0 and float(cells[9]) > 0  # train s/iter, inference s/image
    assert cells[8] != "n/a"  # training wall time from log.txt
    train_mem, eval_mem = (float(v) for v in cells[10].split(" / "))
    assert train_mem > 0.1 and eval_mem > 0.1
    det_cells = [c.strip() for c in rows[2].strip("|").split("|")]
    assert det_cells[1] == "5" and det_cells[2:5] == ["n/a", "n/a", "n/a"]
    assert 0.0 <= float(det_cells[5]) <= 100.0 and float(det_cells[9]) > 0

    # A second run reuses both saved evaluations: same table, benchmark.json files untouched.
    saved = [tmp_path / name / "benchmark.json" for name in ("oim", "det")]
    mtimes = [f.stat().st_mtime_ns for f in saved]
    again = subprocess.run(benchmark, env=env, capture_output=True, text=True, check=True)
    assert again.stdout[again.stdout.index("Hardware: CPU") :] == table
    assert [f.stat().st_mtime_ns for f in saved] == mtimes


def test_benchmark_reuses_an_evaluation_only_of_the_same_config_and_checkpoint(tmp_path):
    benchmark = load_tool("benchmark", folder="dev")
    cfg = tiny_cfg(18, OUTPUT_DIR=str(tmp_path))
    checkpoint, json_file = tmp_path / "model_final.pth", tmp_path / "benchmark.json"
    checkpoint.write_bytes(b"weights")
    json_file.write_text(json.dumps({"results": {}, "config_sha1": benchmark.config_digest(cfg)}))
    assert benchmark.reusable_evaluation(str(json_file), cfg)["results"] == {}

    other = cfg.clone()
    other.TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH = 0.6
    assert benchmark.reusable_evaluation(str(json_file), other) is None

    # A checkpoint written after the evaluation (a retrained model) is evaluated anew.
    later = json_file.stat().st_mtime + 10
    os.utime(checkpoint, (later, later))
    assert benchmark.reusable_evaluation(str(json_file), cfg) is None


def test_benchmark_resumes_an_interrupted_training_from_its_last_checkpoint(tmp_path):
    # A 2-iteration run stands for a training killed at iteration 2 of 4: the benchmark's
    # training command continues it from last_checkpoint instead of starting over.
    benchmark = load_tool("benchmark", folder="dev")
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(tiny_cfg(18, OUTPUT_DIR=str(tmp_path / "out")).dump())
    env = dict(os.environ, DETECTRON2_DATASETS=os.path.join(REPO_ROOT, "datasets"))
    opts = [
        "DATASETS.TRAIN", "('mot15_ps_sample_train',)", "DATASETS.TEST", "()",
        "MODEL.OIM.NUM_IDS", "13", "SOLVER.IMS_PER_BATCH", "1", "SOLVER.STEPS", "()",
        "SOLVER.WARMUP_ITERS", "0", "SOLVER.CHECKPOINT_PERIOD", "1",
    ]  # fmt: skip
    first = benchmark.train_command(str(config_file), opts + ["SOLVER.MAX_ITER", "2"], False)
    subprocess.run(first, env=env, check=True, capture_output=True)
    (tmp_path / "out" / "model_final.pth").unlink()
    (tmp_path / "out" / "last_checkpoint").write_text("model_0000001.pth")

    second = benchmark.train_command(str(config_file), opts + ["SOLVER.MAX_ITER", "4"], False)
    subprocess.run(second, env=env, check=True, capture_output=True)
    # Two segments of one run: iterations 0-1, then 2-3 (a restart would start at 0 again).
    log = (tmp_path / "out" / "log.txt").read_text()
    starts = re.findall(r"Starting training from iteration (\d+)", log)
    assert starts == ["0", "2"]
    assert "--resume" not in benchmark.train_command(str(config_file), opts, True)


def test_benchmark_index_rows_per_type_with_exact_recall_for_flat(tmp_path):
    rows = load_tool("benchmark_index").main(
        ["--sizes", "3000", "--dim", "32", "--types", "Flat", "HNSW16:efSearch=64",
         "--queries", "50", "--train-size", "1000"]
    )  # fmt: skip
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("synthetic 3000", "Flat", 3000),
        ("synthetic 3000", "HNSW16:efSearch=64", 3000),
    ]
    flat, hnsw = rows
    assert flat[-2:] == (1.0, 1.0) and 0.8 <= hnsw[-1] <= 1.0
    assert all(v > 0 for v in flat[5:10])  # latencies and throughput measured
    # A real index's features (Flat) are read back and benchmarked the same way.
    from personsearch_kd.search import GalleryIndex

    from personsearch_kd.search.index_benchmark import synthetic_features

    feats = synthetic_features(500, 32, seed=1)
    index = GalleryIndex(32, {"model": "m"})
    index.add(feats, np.zeros((500, 4)), np.ones(500), "image.jpg")
    index.save(str(tmp_path / "real"))
    (row,) = load_tool("benchmark_index").main(
        ["--index", str(tmp_path / "real"), "--types", "Flat", "--queries", "20"]
    )
    assert row[0] == "real" and row[2] == 500 and row[-1] == 1.0


def test_benchmark_inference_rows_per_setting_with_stage_shares(tmp_path, native_bf16):
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(tiny_cfg(18).dump())
    rows = load_tool("benchmark_inference").main(
        ["--config-files", str(config_file), "--height", "96", "--width", "128",
         "--precision", "fp32", "bf16", "--reid-on-proposals", "0", "1", "--iters", "1",
         "--warmup", "0"]
    )  # fmt: skip
    assert [(r[1], r[2]) for r in rows] == [(0, "fp32"), (0, "bf16"), (1, "fp32"), (1, "bf16")]
    for _, on_proposals, _, _, rate, seconds, found, shares, _ in rows:
        assert rate > 0 and seconds > 0 and found >= 0
        assert sum(shares.values()) == pytest.approx(1.0, abs=0.02)
        assert shares["backbone"] > 0 and shares["res5 detection"] > 0
        # Re-ID on the proposals needs no second res5 pass.
        assert (shares.get("res5 re-ID", 0.0) > 0) == (not on_proposals)


def test_gpu_session_script_runs_its_steps_at_toy_sizes_on_cpu(tmp_path):
    # The script a GPU session runs, end to end on CPU: benchmarks, a training and its evaluation.
    env = dict(os.environ, OUT=str(tmp_path / "out"), DATASETS=os.path.join(REPO_ROOT, "datasets"))
    subprocess.run(
        ["bash", os.path.join(REPO_ROOT, "dev", "gpu_session.sh"), "--tiny"],
        env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    out = tmp_path / "out"
    step = (out / "train_step_R18_96x128.md").read_text()
    assert "| fp32 |" in step and "| bf16 |" in step
    inference = (out / "inference_R18_96x128.md").read_text()
    # fp32 and auto (bf16 where native, else fp32 once) x re-ID placement
    native = 2 if "bf16" in native_precisions("cpu") else 1
    assert inference.count("oim_R_18_C4_scratch.yaml") == 2 * native
    table = (out / "train_and_evaluate.md").read_text()
    row = [line for line in table.splitlines() if line.startswith("| configs/mot15/oim_R_18")]
    assert len(row) == 1 and row[0].split("|")[2].strip() == "2"  # iterations trained


def test_benchmark_train_step_under_two_processes_times_the_oim_memory_sync():
    # Two CPU processes under DDP: the OIM all-gather runs in every step and is timed from its
    # profiler label.
    baseline = os.path.join(CONFIGS, "scratch", "oim_R_18_C4_scratch.yaml")
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "dev", "benchmark_train_step.py")]
        + ["--config-file", baseline, "--height", "96", "--width", "128", "--num-gpus", "2"]
        + ["--batch", "1", "--persons", "2", "--warmup", "0", "--iters", "2"]
        + ["MODEL.DEVICE", "cpu", "MODEL.OIM.NUM_IDS", "4", "MODEL.OIM.QUEUE_SIZE", "8"]
        + ["MODEL.RPN.POST_NMS_TOPK_TRAIN", "50", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16"],
        capture_output=True, text=True, check=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )  # fmt: skip
    assert "2 processes (DDP)" in result.stdout
    rows = [
        line for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line
    ]
    assert len(rows) == 2  # the header and one row: only the main process prints
    assert rows[0].endswith("| OIM sync ms | OIM sync share |")
    cells = [c.strip() for c in rows[1].strip("|").split("|")]
    sync_ms, share = float(cells[9]), float(cells[10].rstrip(" %"))
    assert sync_ms > 0 and 0 < share < 100


SEQNET_STAND_IN = {
    "defaults.py": """
from yacs.config import CfgNode as CN
_C = CN()
_C.INPUT = CN()
_C.INPUT.MIN_SIZE, _C.INPUT.MAX_SIZE = 900, 1500
_C.MODEL = CN()
_C.MODEL.ROI_HEAD = CN()
_C.MODEL.ROI_HEAD.SCORE_THRESH_TEST = 0.5
_C.MODEL.ROI_HEAD.DETECTIONS_PER_IMAGE_TEST = 300
def get_default_cfg():
    return _C.clone()
""",
    "models/__init__.py": "",
    "models/resnet.py": """
def build_resnet(name="resnet50", pretrained=True):
    if pretrained:
        raise RuntimeError("would download ImageNet weights")
    return name
""",
    "models/seqnet.py": """
import torch
from torch import nn
from models.resnet import build_resnet
class SeqNet(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.backbone = build_resnet(name="resnet50", pretrained=True)
        self.cfg = cfg
        self.weight = nn.Parameter(torch.ones(1))
    def forward(self, images, targets=None):
        if self.training:
            self.targets = targets
            return {"loss_box_reid": self.weight * sum(i.mean() for i in images)}
        head = self.cfg.MODEL.ROI_HEAD
        n = min(int(100 * (1 - head.SCORE_THRESH_TEST)), head.DETECTIONS_PER_IMAGE_TEST)
        return [{"boxes": torch.zeros(n, 4), "size": tuple(i.shape), "max": float(i.max())}
                for i in images]
""",
}


def test_benchmark_inference_times_seqnet_from_a_checkout_without_downloading(tmp_path):
    # A stand-in for a serend1p1ty/SeqNet checkout with the names the benchmark uses.
    root = tmp_path / "SeqNet"
    for name, text in SEQNET_STAND_IN.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    from personsearch_kd.utils import seqnet_reference as baseline
    model = baseline.build_seqnet(str(root), height=96, width=128, score_thresh=0.25, detections=50)
    assert model.backbone == "resnet50" and not model.training  # random weights, eval mode
    assert (model.cfg.INPUT.MIN_SIZE, model.cfg.INPUT.MAX_SIZE) == (96, 128)  # no resize
    import torch

    images = torch.full((2, 3, 96, 128), 255, dtype=torch.uint8)
    (out, _) = model(baseline.seqnet_gallery_inputs(images, "cpu"))
    assert out["size"] == (3, 96, 128) and out["max"] == 1.0  # floats in [0, 1]
    assert len(out["boxes"]) == 50  # at most `detections`
    default = baseline.build_seqnet(str(root), height=96, width=128)  # no --score-thresh
    assert default.cfg.MODEL.ROI_HEAD.SCORE_THRESH_TEST == 0.5

    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(tiny_cfg(18).dump())
    rows = load_tool("benchmark_inference").main(
        ["--config-files", str(config_file), "--height", "96", "--width", "128", "--iters", "1",
         "--warmup", "0", "--seqnet-root", str(root), "--score-thresh", "0.25"]
    )  # fmt: skip
    assert [r[0] for r in rows] == [str(config_file), "SeqNet"]
    seqnet = rows[1]
    assert seqnet[4] > 0 and seqnet[6] == 75  # images/s; its detections at score_thresh 0.25
    assert seqnet[7] == {}  # no stage shares


def test_calibrated_batchnorm_statistics_come_from_the_inputs_and_end_in_eval_mode():
    import torch

    from personsearch_kd.engine.inference_benchmark import calibrate_batchnorm

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)).eval()
    model[0].bias.data.fill_(5.0)  # outputs centred near 5, not at the initial mean 0
    images = torch.randn(2, 3, 8, 8)
    calibrate_batchnorm(model, images, passes=2)
    norm = model[1]
    assert not norm.training and norm.num_batches_tracked == 2
    expected = model[0](images).transpose(0, 1).reshape(4, -1).mean(dim=1)
    assert torch.allclose(norm.running_mean, expected.detach(), atol=1e-5)
    out = model(images)  # now normalised by the inputs' own statistics
    assert out.mean().abs() < 0.1


def test_benchmark_train_step_steps_seqnet_on_the_same_batch_with_its_labels(tmp_path, capsys):
    root = tmp_path / "SeqNet"
    for name, text in SEQNET_STAND_IN.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    tool = load_tool("benchmark_train_step", folder="dev")
    args = argparse.Namespace(
        seqnet_root=str(root), seqnet_device="cpu", height=96, width=128, batch=2, persons=4
    )
    run = tool.build_seqnet_run(args)
    assert tool.train_step(run) > 0 and run["model"].weight.item() < 1  # a step was taken
    targets = run["model"].targets
    ours = tool.synthetic_batch(2, 96, 128, 4, 5532, seed=0)
    for target, x in zip(targets, ours):
        pids = x["instances"].gt_pids
        assert target["boxes"].equal(x["instances"].gt_boxes.tensor)  # the same persons
        # SeqNet's labels: pid + 1 for labeled persons, 5555 for unlabeled ones.
        assert target["labels"].tolist() == [p + 1 if p >= 0 else 5555 for p in pids.tolist()]
    with pytest.raises(SystemExit):  # SeqNet is not stepped under DDP
        tool.main(["--config-file", "x.yaml", "--seqnet-root", str(root), "--num-gpus", "2"])
    assert "one process only" in capsys.readouterr().err
