# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""Factorized distillation: partial-view teachers, the crop student, the person-search student."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("detectron2")

import torch  # noqa: E402

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from personsearch_kd import add_personsearch_config, add_teacher  # noqa: E402
from personsearch_kd.evaluation import CropReIDEnsemble  # noqa: E402
from personsearch_kd.layers import save_lut_file  # noqa: E402
from personsearch_kd.modeling import CropRecord  # noqa: E402

from helpers import CONFIGS, NUM_IDS, REPO_ROOT, load_tool, model_inputs, set_seed  # noqa: E402
from helpers import synthetic_record, tiny_cfg  # noqa: E402

FD_KEYS = ("loss_fd_map_{}", "loss_fd_feature_{}")


def _crop_net_files(tmp_path, name, config="reid_crop_partial_R_18.yaml", **overrides):
    """An untrained crop re-ID network of a shipped config, sized for tests: (config, weights)."""
    cfg = get_cfg()
    add_personsearch_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIGS, "mot15", config))
    for key, value in {"MODEL.OIM.NUM_IDS": NUM_IDS, **overrides}.items():
        cfg.merge_from_list([key, value])
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save(name)
    (tmp_path / f"{name}.yaml").write_text(cfg.dump())
    return str(tmp_path / f"{name}.yaml"), str(tmp_path / f"{name}.pth")


def _partial_teachers(cfg, tmp_path, views, size=(32, 32)):
    config_file, weights = _crop_net_files(tmp_path, "partial", **{"INPUT.REID_CROP.SIZE": size})
    for view in views:
        add_teacher(cfg, view.lower(), "CropReIDTeacher", weights, config_file,
                    ["INPUT.REID_CROP.VIEW", view])  # fmt: skip
    cfg.MODEL.FD.TEACHERS = [v.lower() for v in views]
    cfg.MODEL.DISTILLATION.LOSSES = list(cfg.MODEL.DISTILLATION.LOSSES) + ["FactorizedDistillLoss"]
    return cfg


def test_a_partial_teacher_sees_its_view_of_the_student_crops(tmp_path):
    cfg = _partial_teachers(
        _holistic_student_cfg(tmp_path), tmp_path, ["Up1", "Dn1"], size=(32, 32)
    )
    set_seed(0)
    distiller = build_model(cfg).train()
    crops = torch.rand(4, 3, 64, 32) * 255
    pids = torch.tensor([0, 0, 1, 1])
    record = CropRecord([], crops, pids, distiller.student.embed(crops))
    for name, rows in (("up1", slice(0, 32)), ("dn1", slice(32, 64))):
        teacher = distiller.teachers[name]
        outputs = teacher.outputs(record).ground_truth
        # The view of a 64-row crop at 32 x 32 is exactly its 32 rows.
        with torch.no_grad():
            expected = teacher.model.embed(crops[:, :, rows])
        assert torch.allclose(outputs.embeddings, expected.embeddings, atol=1e-5)
        assert torch.allclose(outputs.feature_map, expected.feature_map, atol=1e-4)


def _holistic_student_cfg(tmp_path):
    """The config of a holistic crop student (64 x 32 crops) with no teacher yet."""
    config_file, _ = _crop_net_files(
        tmp_path, "holistic", "reid_crop_R_18.yaml", **{"INPUT.REID_CROP.SIZE": (64, 32)}
    )
    cfg = get_cfg()
    add_personsearch_config(cfg)
    cfg.merge_from_file(config_file)
    return cfg


def test_fd_person_search_student_with_dkd_and_kd_reid(tmp_path):
    cfg = tiny_cfg(
        18,
        **{
            "MODEL.REID.LOSSES": ["OIMReIDLoss", "IdentityCrossEntropyLoss"],
            "MODEL.DISTILLATION.LOSSES": ["DKDLoss"],
            "MODEL.OIM.FREEZE_LUT": True,
            "INPUT.REID_CROP.SIZE": (64, 32),
        },
    )
    config_file, weights = _crop_net_files(
        tmp_path, "holistic", "reid_crop_R_18.yaml", **{"INPUT.REID_CROP.SIZE": (64, 32)}
    )
    add_teacher(cfg, "reid", "CropReIDTeacher", weights, config_file)
    lut = torch.nn.functional.normalize(torch.randn(NUM_IDS, 256), dim=1)
    save_lut_file(str(tmp_path / "lut.pth"), lut, cfg.DATASETS.TRAIN, range(NUM_IDS),
                  "compute", "", "teacher.pth")  # fmt: skip
    add_teacher(cfg, "table", "LUTFileTeacher", str(tmp_path / "lut.pth"))
    _partial_teachers(cfg, tmp_path, ["Up1", "Dn2"])
    set_seed(0)
    model = build_model(cfg).train()
    teachers_before = {
        name: {k: v.clone() for k, v in t.state_dict().items()}
        for name, t in model.teachers.items()
    }
    records = [synthetic_record(tmp_path, i, p) for i, p in enumerate([[0, 1, -1], [2, 1]])]
    with EventStorage():
        losses = model(model_inputs(cfg, records))
        sum(losses.values()).backward()
    fd_keys = {key.format(name) for name in ("up1", "dn2") for key in FD_KEYS}
    assert fd_keys | {"loss_dkd_prob", "loss_dkd_relation", "loss_dkd_triplet"} <= set(losses)
    assert all(torch.isfinite(losses[k]) and losses[k] > 0 for k in fd_keys)
    fd = model.distillation_losses["FactorizedDistillLoss"]
    for adapters in (fd.map_adapters, fd.feature_adapters):
        assert all(adapters[n].weight.grad.abs().sum() > 0 for n in ("up1", "dn2"))
    # The map adapters map the student's res5 ROI map (512 channels) to each teacher's (512).
    assert fd.map_adapters["up1"].weight.shape == (512, 512, 1, 1)
    # Teachers: frozen, unchanged, out of the checkpoint; KD_reid's table kept.
    for name, teacher in model.teachers.items():
        for key, value in teacher.state_dict().items():
            assert torch.equal(value, teachers_before[name][key]), (name, key)
    assert not any(
        ".model." in k or k.startswith(("up1", "dn2", "reid")) for k in model.state_dict()
    )
    assert torch.equal(model.student.roi_heads.oim_loss.lut, lut)

    # A zero weight switches a term and its adapters off.
    cfg.MODEL.FD.MAP_WEIGHT = 0.0
    model = build_model(cfg).train()
    with EventStorage():
        losses = model(model_inputs(cfg, records))
    assert not any(k.startswith("loss_fd_map") for k in losses)
    assert "loss_fd_feature_up1" in losses
    assert len(model.distillation_losses["FactorizedDistillLoss"].map_adapters) == 0

    cfg.MODEL.FD.TEACHERS = ["up1", "table"]
    with pytest.raises(ValueError, match="'table', which is not a CropReIDTeacher"):
        build_model(cfg)


def test_partial_teacher_and_fd_crop_student_train_on_the_sample(tmp_path):
    # A partial teacher (Up1) trains through train_net on the shipped sample's crops; six copies
    # of it, each seeing its own view, teach the shipped FD crop student for 2 iterations.
    env = dict(os.environ, DETECTRON2_DATASETS=os.path.join(REPO_ROOT, "datasets"))
    small = [
        "MODEL.OIM.NUM_IDS", "13", "DATASETS.TRAIN", "('mot15_ps_sample_train',)",
        "DATASETS.TEST", "()", "SOLVER.IMS_PER_BATCH", "8", "SOLVER.MAX_ITER", "2",
        "SOLVER.WARMUP_ITERS", "0", "DATALOADER.NUM_WORKERS", "0",
    ]  # fmt: skip
    train_net = [sys.executable, os.path.join(REPO_ROOT, "tools", "train_net.py")]
    partial = os.path.join(CONFIGS, "mot15", "reid_crop_partial_R_18.yaml")
    subprocess.run(
        train_net + ["--config-file", partial, *small, "OUTPUT_DIR", str(tmp_path / "up1")],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    cfg = get_cfg()
    add_personsearch_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIGS, "mot15", "fd_crop_R_18.yaml"))
    assert len(cfg.MODEL.FD.TEACHERS) == 6
    for name in cfg.MODEL.FD.TEACHERS:
        spec = cfg.MODEL.TEACHERS[name]
        spec.CONFIG_FILE = partial
        spec.WEIGHTS = str(tmp_path / "up1" / "model_final.pth")
    student = tmp_path / "fd_crop.yaml"
    student.write_text(cfg.dump())
    subprocess.run(
        train_net + ["--config-file", str(student), *small, "OUTPUT_DIR", str(tmp_path / "fd")],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    with open(tmp_path / "fd" / "metrics.json") as f:
        metrics = [json.loads(line) for line in f if line.strip()][-1]
    for name in cfg.MODEL.FD.TEACHERS:
        for key in FD_KEYS:
            assert metrics[key.format(name)] > 0, key.format(name)
    assert metrics["loss_id_ce"] > 0 and "loss_triplet" in metrics
    checkpoint = torch.load(tmp_path / "fd" / "model_final.pth", weights_only=False)["model"]
    assert "distillation_losses.FactorizedDistillLoss.map_adapters.dn2.weight" in checkpoint
    assert not any(".model." in k for k in checkpoint)  # no teacher weights


def test_evaluate_teachers_rows_each_teacher_and_their_ensemble(tmp_path, tiny_sets):
    cfg = _partial_teachers(_holistic_student_cfg(tmp_path), tmp_path, ["Up1", "Dn1"])
    cfg.DATASETS.TEST = (f"{tiny_sets}_test",)
    cfg.DATALOADER.NUM_WORKERS = 0
    rows = load_tool("evaluate_teachers", folder="dev").evaluate(cfg)
    assert [(r[1], r[2]) for r in rows] == [("up1", (0.0, 0.5)), ("dn1", (0.5, 1.0)),
                                            ("ensemble", "all")]  # fmt: skip
    assert all(0 < r[3] <= 100 and 0 <= r[4] <= 100 for r in rows)


def test_the_ensemble_feature_is_the_mean_cosine_of_its_members(tmp_path):
    cfg = _partial_teachers(_holistic_student_cfg(tmp_path), tmp_path, ["Up1", "Dn1"])
    members = [t.model for t in build_model(cfg).teachers.values()]
    ensemble = CropReIDEnsemble(members)
    image = torch.rand(3, 96, 64) * 255
    boxes = torch.tensor([[4.0, 4.0, 30.0, 90.0], [30.0, 10.0, 60.0, 80.0]])
    feats = ensemble([{"image": image, "boxes": boxes}])[0]["instances"].reid_feats
    alone = [m([{"image": image, "boxes": boxes}])[0]["instances"].reid_feats for m in members]
    cosine = (feats[0] * feats[1]).sum()
    mean_cosine = sum((f[0] * f[1]).sum() for f in alone) / 2
    assert feats.shape == (2, 512) and cosine.item() == pytest.approx(mean_cosine.item(), abs=1e-5)
