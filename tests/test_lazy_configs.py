# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
The LazyConfigs of configs/lazy/mot15/ against the yacs configs of the same methods: each builds
the same network (parameters, every submodule's settings, the same outputs and training losses
with the same weights and seed), reads the same data, optimizes and schedules alike; each trains
a few steps on the shipped sample with tools/lazyconfig_train_net.py, whose --eval-only evaluates.
"""

import copy
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("detectron2")

import torch  # noqa: E402
from omegaconf import DictConfig, ListConfig, OmegaConf  # noqa: E402

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import LazyConfig, instantiate  # noqa: E402
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.solver import build_lr_scheduler  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from personsearch_kd import load_config  # noqa: E402
from personsearch_kd.data import PersonCropMapper, PersonSearchDatasetMapper  # noqa: E402
from personsearch_kd.engine import Trainer  # noqa: E402
from personsearch_kd.evaluation.two_step import GroundTruthBoxes  # noqa: E402
from personsearch_kd.layers.lut_file import save_lut_file  # noqa: E402

from helpers import CONFIGS, REPO_ROOT, set_seed  # noqa: E402

LAZY = os.path.join(CONFIGS, "lazy", "mot15")
TOOL = os.path.join(REPO_ROOT, "tools", "lazyconfig_train_net.py")
TRAIN, TEST = "mot15_ps_sample_train", "mot15_ps_sample_test"
VIEWS = ["up1", "mid1", "dn1", "up2", "mid2", "dn2"]

# method -> (config name in configs/mot15/ and configs/lazy/mot15/, training data, teachers:
# MODEL.TEACHERS name -> teacher file of the `teacher_files` fixture)
METHODS = {
    "OIM_R18": ("oim_R_18", "images", {}),
    "OIM_R50": ("oim_R_50", "images", {}),
    "KD_reid": ("kd_reid_R_18", "images", {"table": "lut"}),
    "KD_det": ("kd_det_R_18", "images", {"detector": "det_R_50"}),
    "DKD": ("dkd_R_18", "images", {"reid": "reid_crop"}),
    "FD": ("fd_R_18", "images", {v: "partial" for v in VIEWS}),
    "QEEPS": ("qeeps_R_18", "pairs", {}),
    "crop_teacher": ("reid_crop_R_18", "crops", {}),
    "FD_crop": ("fd_crop_R_18", "crops", {v: "partial" for v in VIEWS}),
}


@pytest.fixture(autouse=True)
def _at_repo_root(monkeypatch):
    # The configs name teacher configs relative to the repository root, as the tools run.
    monkeypatch.chdir(REPO_ROOT)


@pytest.fixture(scope="module")
def teacher_files(tmp_path_factory):
    """Untrained teachers of the shipped teacher configs (only their shapes matter here)."""
    tmp = tmp_path_factory.mktemp("teachers")
    files = {}
    for name, config in [
        ("det_R_50", "det_R_50.yaml"),
        ("reid_crop", "reid_crop_R_18.yaml"),
        ("partial", "reid_crop_partial_R_18.yaml"),
        ("oim_R_18", "oim_R_18.yaml"),  # QEEPS starts from an OIM model
    ]:
        set_seed(1)
        model = build_model(load_config(os.path.join(CONFIGS, "mot15", config)))
        DetectionCheckpointer(model, save_dir=str(tmp)).save(name)
        files[name] = str(tmp / f"{name}.pth")
    lut = torch.nn.functional.normalize(torch.randn(13, 256), dim=1)
    files["lut"] = str(tmp / "lut.pth")
    save_lut_file(files["lut"], lut, (TRAIN,), range(13), "compute", "", "teacher.pth")
    return files


def _configs(method, teacher_files, tiny=True):
    """(yacs config, lazy config) of ``method`` on the shipped sample with its teachers' files."""
    name, data, teachers = METHODS[method]
    opts, overrides = [], []
    for teacher, file in teachers.items():
        opts += [f"MODEL.TEACHERS.{teacher}.WEIGHTS", teacher_files[file]]
        overrides.append(f"model.teachers.{teacher}.weights={teacher_files[file]}")
    if tiny:
        opts += ["DATASETS.TRAIN", f"('{TRAIN}',)", "DATALOADER.NUM_WORKERS", 0]
        overrides.append("dataloader.train.num_workers=0")
        if data != "pairs":
            opts += ["DATASETS.TEST", f"('{TEST}',)"]
            overrides += [f"dataloader.test.dataset.names={TEST}", "dataloader.test.num_workers=0"]
        if data == "images":
            overrides.append(f"dataloader.train.dataset.names={TRAIN}")
        else:
            overrides.append(f"dataloader.train.dataset_names={TRAIN}")
        if data != "crops":  # scene images at a short side of 128
            opts += ["INPUT.MIN_SIZE_TRAIN", (128,), "INPUT.MAX_SIZE_TRAIN", 224]
            opts += ["INPUT.MIN_SIZE_TEST", 128, "INPUT.MAX_SIZE_TEST", 224]
            mapper = "image_mapper" if data == "pairs" else "mapper"
            resize = f"dataloader.train.{mapper}.augmentations.0"
            overrides += [f"{resize}.short_edge_length=[128]", f"{resize}.max_size=224"]
            overrides += ["dataloader.test.mapper.augmentations.0.short_edge_length=128"]
            overrides += ["dataloader.test.mapper.augmentations.0.max_size=224"]
        if data == "pairs":
            overrides = [o for o in overrides if not o.startswith("dataloader.test")]
    cfg = load_config(os.path.join(CONFIGS, "mot15", f"{name}.yaml"), opts)
    lazy = LazyConfig.load(os.path.join(LAZY, f"{name}.py"))
    return cfg, LazyConfig.apply_overrides(lazy, overrides), overrides


def _settings(model):
    """Every submodule's plain settings (ints, strings, thresholds, matchers, box codings)."""

    def plain(value, depth=0):
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value)
        if isinstance(value, (bool, int, float, str, type(None))):
            return value
        if isinstance(value, (list, tuple)):
            items = [plain(v, depth) for v in value]
            return items if NotImplemented not in items else NotImplemented
        if isinstance(value, dict):
            items = {str(k): plain(v, depth) for k, v in value.items()}
            return items if NotImplemented not in items.values() else NotImplemented
        if isinstance(value, (torch.Tensor, torch.nn.Module)) or callable(value) or depth:
            return NotImplemented
        if hasattr(value, "__dict__"):  # Matcher, Box2BoxTransform, ...
            return {type(value).__name__: plain(dict(vars(value)), depth + 1)}
        return NotImplemented

    settings = {}
    for name, module in model.named_modules():
        for key, value in vars(module).items():
            if not key.startswith("_") and key != "training":
                value = plain(value)
                if value is not NotImplemented:
                    settings[f"{name}.{key}"] = value
    teachers = getattr(model, "teachers", {})
    for name, teacher in teachers.items():
        settings.update({f"teacher {name}: {k}": v for k, v in _settings(teacher).items()})
    return settings


def _first_batch(loader):
    set_seed(3)
    return next(iter(loader))


def _assert_same_inputs(a, b, where="batch"):
    """Two mapped inputs (dicts of images, Instances, nested pairs) are equal."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same_inputs(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_inputs(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif hasattr(a, "get_fields"):  # Instances
        _assert_same_inputs(a.get_fields(), b.get_fields(), where)
    elif hasattr(a, "tensor"):  # Boxes
        assert torch.equal(a.tensor, b.tensor), where
    else:
        assert a == b, where


def _train_loader(cfg):
    set_seed(2)  # TrainingSampler draws its seed from numpy's global state
    return Trainer.build_train_loader(cfg)


def _lazy_train_loader(lazy):
    set_seed(2)
    return instantiate(lazy.dataloader.train)


def _test_input(cfg, lazy, data):
    """The first test image mapped by both configs' test mappers (with its true boxes for crops)."""
    record = DatasetCatalog.get(TEST)[0]
    mapper = DatasetMapper(cfg, False)
    if data == "crops":
        mapper = GroundTruthBoxes(mapper)
    mapped = mapper(copy.deepcopy(record))
    _assert_same_inputs(mapped, instantiate(lazy.dataloader.test.mapper)(copy.deepcopy(record)))
    return mapped


def _losses(model, batch):
    set_seed(5)
    with torch.no_grad(), EventStorage():
        return {k: float(v) for k, v in model.train()(copy.deepcopy(batch)).items()}


@pytest.mark.parametrize("method", list(METHODS))
def test_lazy_config_builds_what_its_yacs_config_builds(method, teacher_files):
    cfg, lazy, _ = _configs(method, teacher_files)
    data = METHODS[method][1]
    set_seed(0)
    reference = build_model(cfg)
    set_seed(0)
    model = instantiate(lazy.model).to(lazy.train.device)

    # The same network: parameters, buffers and every setting, teachers included.
    count = sum(p.numel() for p in model.parameters())
    assert count == sum(p.numel() for p in reference.parameters())
    shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    assert _settings(model) == _settings(reference)
    model.load_state_dict(reference.state_dict())

    # The same data: the first training batch, and the test mapper.
    batch = _first_batch(_train_loader(cfg))
    _assert_same_inputs(_first_batch(_lazy_train_loader(lazy)), batch)

    # The same computation: training losses of one step with the same seed (distillation terms
    # included), and inference on a test image.
    expected = _losses(reference, batch)
    assert len(expected) >= 2 and all(np.isfinite(list(expected.values())))
    assert _losses(model, batch) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    if data != "pairs":  # QEEPS searches pairs, see test_qeeps_...
        image = _test_input(cfg, lazy, data)
        with torch.no_grad():
            (out,) = reference.eval()([image])
            (lazy_out,) = model.eval()([image])
        out, lazy_out = out["instances"], lazy_out["instances"]
        assert len(out) > 0 and out.get_fields().keys() == lazy_out.get_fields().keys()
        for key in ("scores", "reid_feats"):
            torch.testing.assert_close(lazy_out.get(key), out.get(key))
        torch.testing.assert_close(lazy_out.pred_boxes.tensor, out.pred_boxes.tensor)

    # The same optimizer, schedule and run settings (of the shipped, full-size configs).
    cfg, lazy, _ = _configs(method, teacher_files, tiny=False)
    lazy.optimizer.params.model = model
    optimizer, yacs_optimizer = instantiate(lazy.optimizer), Trainer.build_optimizer(cfg, reference)
    for group, yacs_group in zip(optimizer.param_groups, yacs_optimizer.param_groups, strict=True):
        assert {k: v for k, v in group.items() if k != "params"} == {
            k: v for k, v in yacs_group.items() if k != "params"
        }
    # One step from the same weights and large gradients: the same update (clipping included).
    pairs = list(zip(model.named_parameters(), reference.named_parameters(), strict=True))
    for (name, p), (yacs_name, q) in pairs:
        assert name == yacs_name
        p.grad = torch.linspace(-50, 50, p.numel()).reshape(p.shape)
        q.grad = p.grad.clone()
    optimizer.step()
    yacs_optimizer.step()
    for (name, p), (_, q) in pairs:
        torch.testing.assert_close(p, q, msg=name)
    schedule = instantiate(lazy.lr_multiplier)
    yacs_schedule = build_lr_scheduler(cfg, yacs_optimizer)._multiplier
    for step in range(0, cfg.SOLVER.MAX_ITER, 10):
        assert schedule(step / cfg.SOLVER.MAX_ITER) == pytest.approx(
            yacs_schedule(step / cfg.SOLVER.MAX_ITER)
        )
    assert lazy.train.max_iter == cfg.SOLVER.MAX_ITER
    assert lazy.train.checkpointer.period == cfg.SOLVER.CHECKPOINT_PERIOD
    assert lazy.train.eval_period == cfg.TEST.EVAL_PERIOD
    assert lazy.train.device == cfg.MODEL.DEVICE
    names = "dataset_names" if data != "images" else "dataset.names"
    assert OmegaConf.select(lazy.dataloader.train, names) == cfg.DATASETS.TRAIN[0]
    assert lazy.dataloader.train.total_batch_size == cfg.SOLVER.IMS_PER_BATCH
    assert lazy.dataloader.train.num_workers == cfg.DATALOADER.NUM_WORKERS
    if cfg.DATASETS.TEST:
        assert lazy.dataloader.test.dataset.names == cfg.DATASETS.TEST[0]
        test_mapper = DatasetMapper(cfg, False)
        if data == "crops":
            test_mapper = GroundTruthBoxes(test_mapper)
        assert _state(instantiate(lazy.dataloader.test.mapper)) == _state(test_mapper)
    else:
        assert "test" not in lazy.dataloader
    # The same mappers (sizes, flips, crops) at full size.
    mappers = {"images": ("mapper", lambda: PersonSearchDatasetMapper(cfg, True))}
    mappers["crops"] = ("mapper", lambda: PersonCropMapper(cfg))
    mappers["pairs"] = ("image_mapper", lambda: PersonSearchDatasetMapper(cfg, True))
    key, yacs_mapper = mappers[data]
    assert _state(instantiate(lazy.dataloader.train[key])) == _state(yacs_mapper())


def _state(value, depth=0):
    """A mapper's settings as plain values (its augmentations' parameters included)."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value)
    if isinstance(value, (list, tuple)):
        return tuple(_state(v, depth) for v in value)
    if isinstance(value, dict):
        return {k: _state(v, depth) for k, v in value.items()}
    if hasattr(value, "__dict__") and not isinstance(value, type) and depth < 4:
        return type(value).__name__, _state(dict(vars(value)), depth + 1)
    return value


def _tool():
    spec = importlib.util.spec_from_file_location("lazyconfig_train_net", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("method", list(METHODS))
def test_lazy_config_trains_on_the_sample(method, teacher_files, tmp_path):
    name, data, _ = METHODS[method]
    _, _, overrides = _configs(method, teacher_files)
    overrides += [f"train.output_dir={tmp_path}", "train.max_iter=2", "train.log_period=1"]
    overrides += ["dataloader.evaluator=null"]  # evaluation: test_eval_only_...
    if method == "QEEPS":  # from an OIM checkpoint, as the paper
        overrides.append(f"train.init_checkpoint={teacher_files['oim_R_18']}")
    _tool().invoke_main(["--config-file", os.path.join(LAZY, f"{name}.py"), *overrides])
    metrics = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert [m["iteration"] for m in metrics if "total_loss" in m] == [0, 1]
    assert all(np.isfinite(m["total_loss"]) and m["peak_mem_gb"] > 0 for m in metrics)
    weights = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=False)
    # A Distiller's checkpoint names the student's tensors as the plain student does.
    assert not any(k.startswith("student.") for k in weights["model"])
    assert weights["iteration"] == 1


@pytest.fixture
def tiny_test_set():
    """Two queries of the sample's test split and 6 gallery frames: a quick search."""
    from personsearch_kd.data import set_metadata

    records = DatasetCatalog.get(TEST)
    queries = [r for r in records if "query_boxes" in r][:2]
    gallery = [r for r in records if "query_boxes" not in r][:6]
    name = f"{TEST}_tiny_{os.getpid()}"
    DatasetCatalog.register(name, lambda: copy.deepcopy(gallery + queries))
    set_metadata(name, ("all",))
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_eval_only_evaluates_the_student_without_its_teachers(
    teacher_files, tiny_test_set, tmp_path
):
    """KD_reid's student from OIM_18's checkpoint, its LUT file gone: the person-search metrics."""
    _, _, overrides = _configs("KD_reid", teacher_files)
    overrides = [o for o in overrides if not o.startswith(("model.teachers", "dataloader.test.d"))]
    overrides += [
        "model.teachers.table.weights=/nonexistent/lut.pth",
        f"dataloader.test.dataset.names={tiny_test_set}",
        f"train.init_checkpoint={teacher_files['oim_R_18']}",
        f"train.output_dir={tmp_path}",
        # An untrained model: few boxes per image keep the search quick.
        "model.student.proposal_generator.post_nms_topk=[500,20]",
        "model.student.roi_heads.box_predictor.test_topk_per_image=5",
        "dataloader.evaluator.vis_queries=1",
    ]
    config = os.path.join(LAZY, "kd_reid_R_18.py")
    results = _tool().invoke_main(["--config-file", config, "--eval-only", *overrides])
    metrics = results["person_search"]
    assert {"mAP", "top1", "det_AP", "det_recall"} <= set(metrics)
    assert all(0 <= metrics[k] <= 100 for k in ("mAP", "top1", "det_AP"))
    assert (tmp_path / "inference" / tiny_test_set / "ranked_matches").is_dir()


def test_tool_answers_bad_input_in_one_line(tmp_path, capsys):
    run = subprocess.run(
        [sys.executable, TOOL, "--config-file", str(tmp_path / "none.py")],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert run.returncode == 2 and run.stderr.splitlines()[-1].startswith("error: --config-file")
    qeeps = os.path.join(LAZY, "qeeps_R_18.py")
    for argv, message in [
        (["--eval-only"], "has no dataloader.evaluator"),
        (["model.qsim_iou.x=1"], "KeyError"),
        (["train.max_iter=[1"], "OverrideParseException"),
    ]:
        with pytest.raises(SystemExit) as exit:
            _tool().invoke_main(["--config-file", qeeps, *argv])
        err = capsys.readouterr().err
        assert exit.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1
        assert message in err


def test_every_lazy_config_is_complete():
    """Each file of configs/lazy/mot15/ has the five parts of a trainable config, no stray keys."""
    names = sorted(f[:-3] for f in os.listdir(LAZY) if f.endswith(".py"))
    assert names == sorted(name for name, _, _ in METHODS.values())
    for name in names:
        cfg = LazyConfig.load(os.path.join(LAZY, f"{name}.py"))
        assert set(cfg) == {"model", "dataloader", "optimizer", "lr_multiplier", "train"}, name


def test_model_only_lazy_config_is_the_imagenet_yacs_model():
    """configs/lazy/oim_R_50_C4.py against configs/oim_R_50_C4.yaml (frozen BN, frozen stem)."""
    lazy = LazyConfig.load(os.path.join(CONFIGS, "lazy", "oim_R_50_C4.py"))
    yaml = os.path.join(CONFIGS, "oim_R_50_C4.yaml")
    reference = build_model(load_config(yaml, ["MODEL.DEVICE", "cpu"]))
    model = instantiate(lazy.model)
    assert _settings(model) == _settings(reference)
    trainable = [n for n, p in reference.named_parameters() if p.requires_grad]
    assert [n for n, p in model.named_parameters() if p.requires_grad] == trainable
    model.load_state_dict(reference.state_dict())
    set_seed(0)
    image = {"image": torch.randint(0, 255, (3, 128, 160)).float()}
    with torch.no_grad():
        (out,) = reference.eval()([image])
        (lazy_out,) = model.eval()([image])
    for key in ("scores", "reid_feats"):
        torch.testing.assert_close(lazy_out["instances"].get(key), out["instances"].get(key))
