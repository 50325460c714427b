# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Every shipped yaml config merges onto add_personsearch_config and builds its model; the hardware
override files of configs/mot15/ (gpu*.yaml, merged after a config by load_config's overrides and
tools/train_net.py --override) merge onto the configs they are for and change their keys only;
so does configs/index_fast.yaml, the fast indexing path, without changing a gallery's embedding.
"""

import glob
import os

import pytest
import yaml

pytest.importorskip("detectron2")

import torch  # noqa: E402

from detectron2.config import CfgNode, get_cfg  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from personsearch_kd import (  # noqa: E402
    PersonSearchRCNN,
    add_personsearch_config,
    load_config,
    student_config,
)
from personsearch_kd.data.datasets.mot import load_mot_person_search  # noqa: E402
from personsearch_kd.layers import save_lut_file  # noqa: E402
from personsearch_kd.layers.crops import parse_view  # noqa: E402

from helpers import CONFIGS, REPO_ROOT, load_tool  # noqa: E402

MOT15 = os.path.join(CONFIGS, "mot15")
# Override files: keys only, merged after a config file (no _BASE_, not a config on their own).
OVERRIDES = sorted(glob.glob(os.path.join(MOT15, "gpu*.yaml")))
INDEX_FAST = os.path.join(CONFIGS, "index_fast.yaml")
YAML_CONFIGS = sorted(
    set(glob.glob(os.path.join(CONFIGS, "**", "*.yaml"), recursive=True))
    - set(OVERRIDES + [INDEX_FAST])
)
MOT15_CONFIGS = [p for p in YAML_CONFIGS if os.path.dirname(p) == MOT15]


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
    # A Distiller has teachers and distillation losses around its plain student.
    distiller = cfg.MODEL.META_ARCHITECTURE == "Distiller"
    assert type(model).__name__ == ("Distiller" if distiller else cfg.MODEL.META_ARCHITECTURE)
    student = model.student if distiller else model
    assert type(student).__name__ == student_config(cfg).MODEL.META_ARCHITECTURE
    assert set(getattr(model, "distillation_losses", {})) == set(cfg.MODEL.DISTILLATION.LOSSES)
    for name in cfg.MODEL.FD.TEACHERS:
        # Factorized distillation: each partial teacher sees the view its OPTS name.
        spec = cfg.MODEL.TEACHERS[name]
        assert model.teachers[name].model.view == parse_view(
            spec.OPTS[spec.OPTS.index("INPUT.REID_CROP.VIEW") + 1]
        )
    if cfg.DATALOADER.PERSON_CROPS:
        # A re-ID network on crops (DKD's teacher, FD's students): a classifier over the
        # training identities.
        assert type(student).__name__ == "CropReIDNet"
        assert student.reid_head.classifier.out_features == cfg.MODEL.OIM.NUM_IDS
        return
    assert isinstance(student, PersonSearchRCNN)
    # QEEPS trains on query-gallery pairs, from an OIM checkpoint.
    qeeps = cfg.MODEL.META_ARCHITECTURE == "QEEPS"
    assert cfg.DATALOADER.QUERY_PAIRS == qeeps and (not qeeps or cfg.MODEL.WEIGHTS)
    oim = student.roi_heads.oim_loss
    assert oim.lut.shape == (cfg.MODEL.OIM.NUM_IDS, cfg.MODEL.OIM.EMBED_DIM)
    if teacher_lut is not None:
        assert torch.equal(oim.lut, teacher_lut) and oim.freeze_lut
        assert oim.weight == 0.1
    if "DKDLoss" in cfg.MODEL.DISTILLATION.LOSSES:
        assert student.roi_heads.reid_head.classifier is not None  # identity probabilities
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
    # Two dataset bases and one file per method.
    assert len(MOT15_CONFIGS) >= 24
    for path in MOT15_CONFIGS:
        assert _cfg(path).MODEL.OIM.NUM_IDS == num_ids, path


@pytest.mark.parametrize("gpu", [False, True], ids=["cpu", "gpu"])
def test_dkd_control_is_the_dkd_student_without_its_teacher(gpu):
    def config(name):
        overrides = gpu_overrides(name) if gpu else ()
        return load_config(os.path.join(MOT15, f"{name}.yaml"), freeze=False, overrides=overrides)

    dkd, control = config("dkd_R_18"), config("dkd_control_R_18")
    assert dkd.MODEL.DEVICE == control.MODEL.DEVICE == ("cuda" if gpu else "cpu")
    assert dict(control.MODEL.TEACHERS) == {} and control.MODEL.DISTILLATION.LOSSES == []
    # Everything the student trains with but the teacher, its terms and their crops is the same.
    defaults = get_cfg()
    add_personsearch_config(defaults)
    dkd = student_config(dkd)
    for cfg in (dkd, control):
        cfg.MODEL.TEACHERS.clear()
        cfg.MODEL.DISTILLATION.LOSSES = []
        cfg.INPUT.REID_CROP = defaults.INPUT.REID_CROP.clone()
        cfg.OUTPUT_DIR = defaults.OUTPUT_DIR
    assert dkd.dump() == control.dump()


def gpu_overrides(name):
    """The override files, in order, that put configs/mot15/<name>.yaml on a GPU."""
    cfg = _cfg(os.path.join(MOT15, f"{name}.yaml"))
    files = ["gpu-crop.yaml" if cfg.DATALOADER.PERSON_CROPS else "gpu.yaml"]
    if cfg.MODEL.META_ARCHITECTURE == "QEEPS":
        files.append("gpu-qeeps.yaml")
    if "DKDLoss" in cfg.MODEL.DISTILLATION.LOSSES:
        files.append("gpu-dkd.yaml")
    if "FactorizedDistillLoss" in cfg.MODEL.DISTILLATION.LOSSES:
        files.append("gpu-fd.yaml")
    return [os.path.join(MOT15, f) for f in files]


def _flat(node, prefix=""):
    flat = {}
    for key, value in node.items():
        if hasattr(value, "items"):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


@pytest.mark.parametrize(
    "path", MOT15_CONFIGS, ids=lambda p: os.path.relpath(p, MOT15)[: -len(".yaml")]
)
def test_gpu_overrides_change_their_keys_only(path):
    name = os.path.basename(path)[: -len(".yaml")]
    overrides = gpu_overrides(name)
    cpu = _flat(load_config(path))
    gpu = _flat(load_config(path, overrides=overrides))
    assert cpu["MODEL.DEVICE"] == "cpu" and gpu["MODEL.DEVICE"] == "cuda"
    # Each key of the overrides takes their value (the last one's); every other key is the config
    # file's.
    keys = {}
    for override in overrides:
        with open(override) as f:
            raw = _flat(yaml.safe_load(f))
        # Decoded as a merge decodes them ("(600,)" is a tuple).
        keys.update({key: CfgNode._decode_cfg_value(value) for key, value in raw.items()})
    assert set(keys) <= set(gpu)
    for key, value in gpu.items():
        assert _tuples(value) == _tuples(keys[key] if key in keys else cpu[key]), key
    # The method file's header says which overrides put it on a GPU (the quickstart's sample is
    # for a CPU).
    if not name.startswith("Base-") and not name.endswith("quickstart"):
        with open(path) as f:
            header = "".join(line for line in f if line.startswith("#"))
        assert all(os.path.basename(o) in header for o in overrides), (name, overrides)


@pytest.mark.parametrize("name", ["dkd_R_18", "fd_R_18", "fd_crop_R_18"])
def test_gpu_overrides_build_crop_teachers_at_their_gpu_crop_size(name, tmp_path):
    path = os.path.join(MOT15, f"{name}.yaml")
    cfg = load_config(path, freeze=False, overrides=gpu_overrides(name))
    cfg.MODEL.DEVICE = "cpu"
    _stand_in_teacher_files(cfg, tmp_path)
    model = build_model(cfg)
    # DKD's holistic teacher at 256 x 128, FD's partial ones at 224 x 224, as gpu-crop.yaml (and
    # INPUT.REID_CROP.SIZE "(224, 224)" for the partial ones) trains them.
    sizes = {key: tuple(teacher.model.crop_size) for key, teacher in model.teachers.items()}
    assert sizes == {key: (256, 128) if key == "reid" else (224, 224) for key in cfg.MODEL.TEACHERS}


def test_an_override_file_with_a_base_is_an_error(tmp_path):
    override = tmp_path / "gpu_with_base.yaml"
    override.write_text('_BASE_: "Base-mot15.yaml"\nMODEL:\n  DEVICE: "cuda"\n')
    with pytest.raises(ValueError, match="gpu_with_base.yaml.*_BASE_"):
        load_config(os.path.join(MOT15, "oim_R_18.yaml"), overrides=[str(override)])


def test_train_net_merges_its_overrides_after_the_config_and_before_the_opts(tmp_path):
    from detectron2.engine import default_argument_parser

    from personsearch_kd.engine.trainer import setup_from_args

    train_net = load_tool("train_net")
    with pytest.raises(SystemExit):
        train_net.invoke_main(
            ["--config-file", os.path.join(MOT15, "oim_R_18.yaml"), "--override", "missing.yaml"]
        )
    parser = default_argument_parser()
    parser.add_argument("--override", action="append", default=[])
    args = parser.parse_args(
        ["--config-file", os.path.join(MOT15, "qeeps_R_18.yaml")]
        + ["--override", os.path.join(MOT15, "gpu.yaml")]
        + ["--override", os.path.join(MOT15, "gpu-qeeps.yaml")]
        + ["SOLVER.MAX_ITER", "7", "OUTPUT_DIR", str(tmp_path)]
    )
    cfg = setup_from_args(args)
    assert cfg.MODEL.DEVICE == "cuda" and cfg.INPUT.MIN_SIZE_TEST == 600
    assert cfg.SOLVER.BASE_LR == 0.01 and cfg.SOLVER.MAX_ITER == 7


@pytest.mark.parametrize(
    "name", ["oim_R_18", "oim_R_50", "fd_R_18", "kd_reid_R_18", "dkd_R_18", "qeeps_R_18"]
)
def test_the_fast_indexing_file_changes_test_time_keys_only_not_the_embedding(name, tmp_path):
    from personsearch_kd.search import model_fingerprint

    path = os.path.join(MOT15, f"{name}.yaml")
    weights = tmp_path / "model.pth"
    weights.write_bytes(b"weights")
    opts = ["MODEL.WEIGHTS", str(weights)]
    plain, fast = load_config(path, opts), load_config(path, opts, overrides=[INDEX_FAST])
    changed = {k for k, v in _flat(fast).items() if _tuples(v) != _tuples(_flat(plain)[k])}
    with open(INDEX_FAST) as f:
        assert changed <= set(_flat(yaml.safe_load(f)))
    assert changed and all(k.startswith(("TEST.", "MODEL.RPN.")) for k in changed), changed
    # An index built on the fast path is searched with the plain config's queries; a key that
    # changes how a box is embedded (the test input size) changes the fingerprint.
    assert model_fingerprint(fast) == model_fingerprint(plain)
    resized = load_config(path, opts + ["INPUT.MIN_SIZE_TEST", "320"], overrides=[INDEX_FAST])
    assert model_fingerprint(resized) != model_fingerprint(plain)
