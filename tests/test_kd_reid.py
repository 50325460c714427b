# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""KD_reid: a student trains against a teacher's fixed LUT, which stays bit-identical."""

import json
import os

import pytest

pytest.importorskip("detectron2")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.engine import default_argument_parser  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from helpers import (  # noqa: E402
    CONFIGS,
    NUM_IDS,
    REPO_ROOT,
    load_tool,
    model_inputs,
    set_seed,
    synthetic_record,
    tiny_cfg,
)
from personsearch_kd import add_personsearch_config, add_teacher  # noqa: E402
from personsearch_kd.data.datasets.builtin import register_mot_person_search  # noqa: E402
from personsearch_kd.engine import train_or_evaluate  # noqa: E402
from personsearch_kd.layers import load_lut_file, save_lut_file  # noqa: E402


def test_frozen_lut_stays_bit_identical_while_the_model_trains(tmp_path):
    set_seed(0)
    cfg = tiny_cfg(18)
    teacher_lut = F.normalize(torch.randn(NUM_IDS, 256), dim=1)
    lut_file = str(tmp_path / "lut.pth")
    save_lut_file(lut_file, teacher_lut, cfg.DATASETS.TRAIN, range(NUM_IDS), "compute", "", "t")
    cfg.merge_from_list(["MODEL.OIM.FREEZE_LUT", True])
    add_teacher(cfg, "table", "LUTFileTeacher", lut_file)
    model = build_model(cfg).train()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    records = [synthetic_record(tmp_path, i, pids) for i, pids in enumerate([[0, 1, -1], [2, 0]])]
    inputs = model_inputs(cfg, records)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with EventStorage():
        for _ in range(3):
            losses = model(inputs)
            assert losses["loss_oim"] > 0
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
    final = model.state_dict()
    assert torch.equal(final["roi_heads.oim_loss.lut"], teacher_lut)
    # The queue keeps working: the unlabeled person entered it on each step.
    assert int(final["roi_heads.oim_loss.queue_ptr"]) >= 3
    for key in ("roi_heads.reid_head.proj.weight", "roi_heads.res5.0.conv1.weight"):
        assert not torch.equal(final[key], initial[key]), key


@pytest.fixture
def shipped_sample():
    name = f"kd_reid_sample_{os.getpid()}"
    register_mot_person_search(name, os.path.join(REPO_ROOT, "datasets", "mot15-ps-sample"))
    yield f"{name}_train"
    for split in ("train", "test"):
        DatasetCatalog.remove(f"{name}_{split}")
        MetadataCatalog.remove(f"{name}_{split}")


def test_kd_reid_config_trains_end_to_end_on_the_shipped_sample(tmp_path, shipped_sample):
    train_set = f"('{shipped_sample}',)"
    # An OIM_50 teacher checkpoint (untrained, with a unit-row LUT) exported as the paper does.
    teacher_cfg = get_cfg()
    add_personsearch_config(teacher_cfg)
    teacher_cfg.merge_from_file(os.path.join(CONFIGS, "mot15", "oim_R_50.yaml"))
    teacher_cfg.merge_from_list(["DATASETS.TRAIN", train_set])
    set_seed(0)
    teacher = build_model(teacher_cfg)
    teacher.roi_heads.oim_loss.lut.copy_(F.normalize(torch.randn(13, 256), dim=1))
    DetectionCheckpointer(teacher, save_dir=str(tmp_path)).save("teacher")
    lut_file = str(tmp_path / "lut.pth")
    load_tool("export_lut").main(
        ["--config-file", os.path.join(CONFIGS, "mot15", "oim_R_50.yaml")]
        + ["--from-checkpoint", "--weights", str(tmp_path / "teacher.pth")]
        + ["--output", lut_file, "DATASETS.TRAIN", train_set]
    )

    output_dir = tmp_path / "student"
    args = default_argument_parser().parse_args(
        ["--config-file", os.path.join(CONFIGS, "mot15", "kd_reid_R_18.yaml")]
        + [
            "MODEL.TEACHERS.table.WEIGHTS",
            lut_file,
            "DATASETS.TRAIN",
            train_set,
            "DATASETS.TEST",
            "()",
        ]
        + ["INPUT.MIN_SIZE_TRAIN", "(256,)", "INPUT.MAX_SIZE_TRAIN", "448"]
        + ["SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "0", "DATALOADER.NUM_WORKERS", "0"]
        + ["OUTPUT_DIR", str(output_dir)]
    )
    train_or_evaluate(args)

    student = torch.load(output_dir / "model_final.pth", weights_only=False)["model"]
    assert torch.equal(student["roi_heads.oim_loss.lut"], load_lut_file(lut_file)["lut"])
    metrics = [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines()]
    oim_losses = [m["loss_oim"] for m in metrics if "loss_oim" in m]
    assert oim_losses and all(0 < loss < float("inf") for loss in oim_losses)
