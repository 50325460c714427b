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
from personsearch_kd.layers.crops import parse_view  # noqa: E402

from helpers import CONFIGS, REPO_ROOT  # noqa: E402

YAML_CONFIGS = sorted(glob.glob(os.path.join(CONFIGS, "**", "*.yaml"), recursive=True))


def _cfg(path):
    cfg = get_cfg()
    add_personsearch_config(cfg)
    cfg.merge_from_file(path)
    return cfg


def _stand_in_teacher_files(cfg, tmp_path):
    """
    Every teacher's file of ``cfg`` replaced by a stand-in: KD_reid's exported table by a random
    one, a detector's or crop network's checkpoint by an untrained one of its own shipped config
    (its OPTS applied). Returns the table, or None.
    """
    teacher_lut = None
    for name, spec in cfg.MODEL.TEACHERS.items():
        if spec.KIND == "LUTFileTeacher":
            teacher_lut = torch.nn.functional.normalize(
                torch.randn(cfg.MODEL.OIM.NUM_IDS, cfg.MODEL.OIM.EMBED_DIM), dim=1
            )
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
            continue
        spec.CONFIG_FILE = os.path.join(REPO_ROOT, spec.CONFIG_FILE)
        teacher_cfg = _cfg(spec.CONFIG_FILE)
        teacher_cfg.merge_from_list(list(spec.get("OPTS", [])))
        teacher_cfg.MODEL.DEVICE = "cpu"
        assert teacher_cfg.TEST.PERSON_SEARCH.DETECTION_ONLY == (spec.KIND == "DetectorTeacher")
        DetectionCheckpointer(build_model(teacher_cfg), save_dir=str(tmp_path)).save(name)
        spec.WEIGHTS = str(tmp_path / f"{name}.pth")
    return teacher_lut


@pytest.mark.parametrize("path", YAML_CONFIGS, ids=lambda p: os.path.relpath(p, CONFIGS))
def test_config_builds_a_person_search_model(path, tmp_path):
    cfg = _cfg(path)
    cfg.MODEL.DEVICE = "cpu"
    if cfg.TEST.PERSON_SEARCH.DETECTION_ONLY:
        # A DET config: the plain detector that KD_det configs use as teacher.
        model = build_model(cfg)
        assert type(model.roi_heads).__name__ == "PersonDetectorROIHeads"
        return
    teacher_lut = _stand_in_teacher_files(cfg, tmp_path)
    kinds = {spec.KIND for spec in cfg.MODEL.TEACHERS.values()}
    model = build_model(cfg)
    assert set(model.distillation_losses) == set(cfg.MODEL.DISTILLATION.LOSSES)
    for name in cfg.MODEL.FD.TEACHERS:
        # Factorized distillation: each partial teacher sees the view its OPTS name.
        spec = cfg.MODEL.TEACHERS[name]
        assert model.teachers[name].model.view == parse_view(
            spec.OPTS[spec.OPTS.index("INPUT.REID_CROP.VIEW") + 1]
        )
    if cfg.DATALOADER.PERSON_CROPS:
        # A re-ID network on crops (DKD's teacher, FD's students): a classifier over the
        # training identities.
        assert type(model).__name__ == "CropReIDNet"
        assert model.reid_head.classifier.out_features == cfg.MODEL.OIM.NUM_IDS
        return
    assert isinstance(model, PersonSearchRCNN)
    # QEEPS trains on query-gallery pairs, from an OIM checkpoint.
    qeeps = cfg.MODEL.META_ARCHITECTURE == "QEEPS"
    assert cfg.DATALOADER.QUERY_PAIRS == qeeps and (not qeeps or cfg.MODEL.WEIGHTS)
    oim = model.roi_heads.oim_loss
    assert oim.lut.shape == (cfg.MODEL.OIM.NUM_IDS, cfg.MODEL.OIM.EMBED_DIM)
    if teacher_lut is not None:
        assert torch.equal(oim.lut, teacher_lut) and oim.freeze_lut
        assert oim.weight == 0.1
    if "DKDLoss" in cfg.MODEL.DISTILLATION.LOSSES:
        assert model.roi_heads.reid_head.classifier is not None  # identity probabilities
    if "DetectorTeacher" in kinds:
        assert all(
            type(model.teachers[name].model.roi_heads).__name__ == "PersonDetectorROIHeads"
            for name, spec in cfg.MODEL.TEACHERS.items()
            if spec.KIND == "DetectorTeacher"
        )
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


@pytest.mark.parametrize("size", ["cpu", "gpu"])
def test_dkd_control_is_the_dkd_student_without_its_teacher(size):
    dkd = _cfg(os.path.join(CONFIGS, "mot15", f"dkd_R_18_C4_teacher_reid_R_18_{size}.yaml"))
    control = _cfg(os.path.join(CONFIGS, "mot15", f"dkd_control_R_18_C4_{size}.yaml"))
    assert dict(control.MODEL.TEACHERS) == {} and control.MODEL.DISTILLATION.LOSSES == []
    # Everything the student trains with but the teacher, its terms and their crops is the same.
    defaults = get_cfg()
    add_personsearch_config(defaults)
    for cfg in (dkd, control):
        cfg.MODEL.TEACHERS.clear()
        cfg.MODEL.DISTILLATION.LOSSES = []
        cfg.INPUT.REID_CROP = defaults.INPUT.REID_CROP.clone()
        cfg.OUTPUT_DIR = defaults.OUTPUT_DIR
    assert dkd.dump() == control.dump()
