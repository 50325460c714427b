# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""Every shipped yaml config merges onto add_personsearch_config and builds its model."""

import glob
import os

import pytest

pytest.importorskip("detectron2")

import torch  # noqa: E402

from detectron2.config import get_cfg  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from personsearch_kd import PersonSearchRCNN, add_personsearch_config  # noqa: E402
from personsearch_kd.data.datasets.mot import load_mot_person_search  # noqa: E402
from personsearch_kd.layers import save_lut_file  # noqa: E402

from helpers import CONFIGS, REPO_ROOT  # noqa: E402

YAML_CONFIGS = sorted(glob.glob(os.path.join(CONFIGS, "**", "*.yaml"), recursive=True))


def _cfg(path):
    cfg = get_cfg()
    add_personsearch_config(cfg)
    cfg.merge_from_file(path)
    return cfg


@pytest.mark.parametrize("path", YAML_CONFIGS, ids=lambda p: os.path.relpath(p, CONFIGS))
def test_config_builds_a_person_search_model(path, tmp_path):
    cfg = _cfg(path)
    cfg.MODEL.DEVICE = "cpu"
    if cfg.TEST.PERSON_SEARCH.DETECTION_ONLY:
        # A DET config: the plain detector that KD_det configs use as teacher.
        model = build_model(cfg)
        assert type(model.roi_heads).__name__ == "PersonDetectorROIHeads"
        return
    if cfg.DATALOADER.PERSON_CROPS:
        # A re-ID network on crops (DKD's teacher): a classifier over the training identities.
        model = build_model(cfg)
        assert type(model).__name__ == "CropReIDNet"
        assert model.reid_head.classifier.out_features == cfg.MODEL.OIM.NUM_IDS
        return
    teacher_lut, kinds = None, {spec.KIND: name for name, spec in cfg.MODEL.TEACHERS.items()}
    if "LUTFileTeacher" in kinds:
        # KD_reid: the teacher's exported table stands in for the file the config names.
        teacher_lut = torch.nn.functional.normalize(
            torch.randn(cfg.MODEL.OIM.NUM_IDS, cfg.MODEL.OIM.EMBED_DIM), dim=1
        )
        spec = cfg.MODEL.TEACHERS[kinds["LUTFileTeacher"]]
        spec.WEIGHTS = str(tmp_path / "lut.pth")
        save_lut_file(
            spec.WEIGHTS,
            teacher_lut,
            cfg.DATASETS.TRAIN,
            range(cfg.MODEL.OIM.NUM_IDS),
            "from_checkpoint",
            "",
            "teacher.pth",
        )
    for kind in ("DetectorTeacher", "CropReIDTeacher"):
        if kind not in kinds:
            continue
        # KD_det, DKD: the named teacher config (a shipped one), with an untrained checkpoint.
        spec = cfg.MODEL.TEACHERS[kinds[kind]]
        spec.CONFIG_FILE = os.path.join(REPO_ROOT, spec.CONFIG_FILE)
        teacher_cfg = _cfg(spec.CONFIG_FILE)
        teacher_cfg.MODEL.DEVICE = "cpu"
        assert teacher_cfg.TEST.PERSON_SEARCH.DETECTION_ONLY == (kind == "DetectorTeacher")
        DetectionCheckpointer(build_model(teacher_cfg), save_dir=str(tmp_path)).save(kind)
        spec.WEIGHTS = str(tmp_path / f"{kind}.pth")
    model = build_model(cfg)
    assert isinstance(model, PersonSearchRCNN)
    oim = model.roi_heads.oim_loss
    assert oim.lut.shape == (cfg.MODEL.OIM.NUM_IDS, cfg.MODEL.OIM.EMBED_DIM)
    if teacher_lut is not None:
        assert torch.equal(oim.lut, teacher_lut) and oim.freeze_lut
        assert oim.weight == 0.1
    if "CropReIDTeacher" in kinds:
        assert set(model.distillation_losses) == {"DKDLoss"}
        assert model.roi_heads.reid_head.classifier is not None  # identity probabilities
    if "DetectorTeacher" in kinds:
        teacher = model.teachers[kinds["DetectorTeacher"]]
        assert type(teacher.model.roi_heads).__name__ == "PersonDetectorROIHeads"
        assert set(model.distillation_losses) == {"HintLoss", "RPNDistillLoss", "RCNDistillLoss"}
        # From scratch the bounded L2 regression diverged without clipping (README, KD_det).
        assert cfg.SOLVER.CLIP_GRADIENTS.ENABLED and cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE == "norm"


def test_mot15_configs_have_one_lut_row_per_training_identity():
    sample = os.path.join(REPO_ROOT, "datasets", "mot15-ps-sample")
    records = load_mot_person_search(sample, os.path.join(sample, "split.json"), "train")
    num_ids = len({a["person_id"] for r in records for a in r["annotations"]} - {-1})
    mot15 = [p for p in YAML_CONFIGS if os.sep + "mot15" + os.sep in p]
    assert len(mot15) >= 26
    for path in mot15:
        assert _cfg(path).MODEL.OIM.NUM_IDS == num_ids, path
