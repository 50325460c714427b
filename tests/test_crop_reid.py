# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""The re-ID network on person crops (DKD's teacher): data, training, two-step search, teacher."""

import copy
import os
from collections import Counter

import pytest

pytest.importorskip("detectron2")

import torch  # noqa: E402

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog, build_detection_test_loader  # noqa: E402
from detectron2.data.detection_utils import annotations_to_instances  # noqa: E402
from detectron2.engine import default_argument_parser  # noqa: E402
from detectron2.evaluation import inference_on_dataset  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from personsearch_kd import add_personsearch_config, add_teacher  # noqa: E402
from personsearch_kd.data.datasets.records import query_record  # noqa: E402
from personsearch_kd.data.person_crops import (  # noqa: E402
    IdentityBalancedSampler,
    PersonCropMapper,
    person_crop_dicts,
)
from personsearch_kd.engine import train_or_evaluate  # noqa: E402
from personsearch_kd.evaluation import PersonSearchEvaluator, TwoStepSearch  # noqa: E402
from personsearch_kd.layers.lut_file import load_lut_file  # noqa: E402
from personsearch_kd.modeling import StudentRecord  # noqa: E402

from helpers import CONFIGS, det_teacher, load_tool, model_inputs, set_seed  # noqa: E402
from helpers import PERSONS, synthetic_record, tiny_cfg  # noqa: E402


def _crop_cfg(**overrides):
    cfg = get_cfg()
    add_personsearch_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIGS, "mot15", "reid_crop_R_18.yaml"))
    opts = {
        "MODEL.OIM.NUM_IDS": 6,
        "INPUT.REID_CROP.SIZE": (64, 32),
        "SOLVER.IMS_PER_BATCH": 4,
        "DATALOADER.REID_INSTANCES_PER_ID": 2,
        "DATALOADER.NUM_WORKERS": 0,
        "SEED": 0,
    }
    for key, value in {**opts, **overrides}.items():
        cfg.merge_from_list([key, value])
    return cfg


def test_crops_sampler_and_mapper(tmp_path):
    records = [synthetic_record(tmp_path, i, p) for i, p in enumerate(PERSONS)]
    crops = person_crop_dicts(records + [query_record(records[0], [0, 0, 5, 5], 0, 0)])
    assert [c["person_id"] for c in crops] == [0, 1, 1, 0, 2, 0, 1, 2, 1]  # labeled boxes only
    sampler = iter(IdentityBalancedSampler([c["person_id"] for c in crops], 6, 2, seed=0))
    for _ in range(5):
        batch = [crops[next(sampler)]["person_id"] for _ in range(6)]
        assert sorted(Counter(batch).values()) == [2, 2, 2]  # P = 3 identities x K = 2
    with pytest.raises(ValueError, match="not a multiple of K = 4"):
        IdentityBalancedSampler([0, 1], 6, 4, seed=0)
    sample = PersonCropMapper(_crop_cfg())(crops[0])
    assert sample["image"].shape == (3, 64, 32) and sample["person_id"] == 0


def test_crop_net_trains_with_train_net_and_searches_the_ground_truth_boxes(tmp_path, tiny_sets):
    config_file = tmp_path / "crop.yaml"
    config_file.write_text(_crop_cfg().dump())
    output_dir = tmp_path / "out"
    opts = ["DATASETS.TRAIN", f"('{tiny_sets}_train',)", "DATASETS.TEST", f"('{tiny_sets}_test',)"]
    opts += ["SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "0", "OUTPUT_DIR", str(output_dir)]
    parser = default_argument_parser()
    train_or_evaluate(parser.parse_args(["--config-file", str(config_file), *opts]))
    weights = ["MODEL.WEIGHTS", str(output_dir / "model_final.pth")]
    args = parser.parse_args(["--config-file", str(config_file), "--eval-only", *opts, *weights])
    results = train_or_evaluate(args)["person_search"]
    # The gallery's boxes are the ground truth: detection is perfect, search is a number.
    assert results["det_AP"] == pytest.approx(100.0) and 0 < results["mAP"] <= 100
    metrics = (output_dir / "metrics.json").read_text()
    assert "loss_id_ce" in metrics and "loss_triplet" in metrics


def _trained_crop_net(tmp_path):
    cfg = _crop_cfg()
    set_seed(0)
    model = build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("crop_net")
    (tmp_path / "crop_net.yaml").write_text(cfg.dump())
    return cfg, model.eval(), str(tmp_path / "crop_net.yaml"), str(tmp_path / "crop_net.pth")


def test_two_step_search_embeds_the_detector_boxes(tmp_path, tiny_sets):
    crop_cfg, crop_net, _, _ = _trained_crop_net(tmp_path)
    det_config, det_weights = det_teacher(tmp_path, depth=18)
    det_cfg = get_cfg()
    add_personsearch_config(det_cfg)
    det_cfg.merge_from_file(det_config)
    detector = build_model(det_cfg).eval()
    DetectionCheckpointer(detector).load(det_weights)
    model = TwoStepSearch(detector, crop_net, crop_cfg.INPUT.FORMAT)
    dataset = f"{tiny_sets}_test"
    loader = build_detection_test_loader(det_cfg, dataset)
    evaluator = PersonSearchEvaluator(dataset, search_score_thresh=0.0, distributed=False)
    results = inference_on_dataset(model, loader, evaluator)["person_search"]
    assert 0 <= results["mAP"] <= 100 and 0 <= results["det_AP"] <= 100

    # The same through the command-line tool, the DET config's test set replaced.
    crop_config = tmp_path / "crop.yaml"
    crop_config.write_text(crop_cfg.dump())
    DetectionCheckpointer(crop_net, save_dir=str(tmp_path)).save("crop")
    tool = load_tool("evaluate_two_step").main(
        ["--detector-config", det_config, "--detector-weights", det_weights,
         "--reid-config", str(crop_config), "--reid-weights", str(tmp_path / "crop.pth"),
         "--dataset", dataset, "TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH", "0.0"]
    )  # fmt: skip
    assert tool[dataset]["mAP"] == pytest.approx(results["mAP"])
    assert tool[dataset]["det_AP"] == pytest.approx(results["det_AP"])


def test_crop_teacher_is_frozen_outside_checkpoints_and_embeds_like_the_net(tmp_path, tiny_sets):
    _, crop_net, config_file, weights = _trained_crop_net(tmp_path)
    cfg = add_teacher(tiny_cfg(18), "reid", "CropReIDTeacher", weights, config_file)
    student = build_model(cfg)
    teacher = student.teachers["reid"]
    student.train()
    assert not teacher.model.training and not any(p.requires_grad for p in teacher.parameters())
    assert not any(k.startswith("reid") or ".model." in k for k in student.state_dict())
    records = DatasetCatalog.get(f"{tiny_sets}_train")[:2]
    # The test size is the synthetic images' own: inputs and annotations share coordinates.
    inputs = model_inputs(cfg, records, is_train=False)
    gt = [annotations_to_instances(r["annotations"], (r["height"], r["width"])) for r in records]
    record = StudentRecord(inputs, {}, gt, [], None, None, None)
    outputs = teacher.outputs(record).ground_truth
    assert outputs.embeddings.shape == (5, 256) and outputs.logits.shape == (5, 6)
    # The student's R18 input is RGB like the crop net's: the teacher sees the same pixels as the
    # crop net's own query mode on that image.
    query = {"image": inputs[0]["image"], "query_boxes": gt[0].gt_boxes.tensor}
    (own,) = crop_net([query])
    assert torch.allclose(outputs.embeddings[:3], own["instances"].reid_feats, atol=1e-5)


def test_export_lut_computes_a_table_with_the_crop_net(tmp_path, tiny_sets):
    _, _, config_file, weights = _trained_crop_net(tmp_path)
    output = tmp_path / "lut.pth"
    load_tool("export_lut").main(
        ["--config-file", config_file, "--compute", "--weights", weights, "--output", str(output)]
        + ["DATASETS.TRAIN", f"('{tiny_sets}_train',)"]
    )
    content = load_lut_file(str(output))
    assert content["lut"].shape == (3, 256) and content["method"] == "compute"


def test_an_end_to_end_model_can_search_the_ground_truth_boxes_too(tmp_path, tiny_sets):
    cfg = tiny_cfg(18, **{"TEST.PERSON_SEARCH.GROUND_TRUTH_BOXES": True})
    set_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("oim")
    config_file = tmp_path / "oim.yaml"
    config_file.write_text(cfg.dump())
    args = default_argument_parser().parse_args(
        [
            "--config-file",
            str(config_file),
            "--eval-only",
            "DATASETS.TEST",
            f"('{tiny_sets}_test',)",
        ]
        + ["MODEL.WEIGHTS", str(tmp_path / "oim.pth"), "OUTPUT_DIR", str(tmp_path / "out")]
    )
    results = train_or_evaluate(args)["person_search"]
    # An untrained detector finds nobody at score 0.5; the given boxes are the persons themselves.
    assert results["det_AP"] == pytest.approx(100.0) and results["det_recall"] == pytest.approx(100)
    assert 0 < results["mAP"] <= 100


def test_dkd_student_trains_with_the_crop_teacher(tmp_path, tiny_sets):
    _, crop_net, config_file, weights = _trained_crop_net(tmp_path)
    cfg = tiny_cfg(
        18,
        **{
            "MODEL.REID.LOSSES": ["OIMReIDLoss", "IdentityCrossEntropyLoss"],
            "MODEL.DISTILLATION.LOSSES": ["DKDLoss"],
            "INPUT.REID_CROP.SIZE": (64, 32),
            "INPUT.REID_CROP.SHIFT": 2.0,
        },
    )
    add_teacher(cfg, "reid", "CropReIDTeacher", weights, config_file)
    set_seed(0)
    model = build_model(cfg).train()
    teacher_before = {k: v.clone() for k, v in model.teachers["reid"].state_dict().items()}
    records = DatasetCatalog.get(f"{tiny_sets}_train")[:2]
    with EventStorage():
        losses = model(model_inputs(cfg, records))
        sum(losses.values()).backward()
    for key in ("loss_dkd_prob", "loss_dkd_relation", "loss_dkd_triplet"):
        assert torch.isfinite(losses[key]) and losses[key].requires_grad, key
    assert losses["loss_dkd_prob"] > 0 and losses["loss_dkd_relation"] > 0
    assert model.student.roi_heads.reid_head.classifier.weight.grad.abs().sum() > 0
    for key, value in model.teachers["reid"].state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    assert not any("DKDLoss" in k for k in model.state_dict())  # nothing trainable of its own

    # DKD's embedding of the ground-truth and jittered boxes leaves BatchNorm's running statistics
    # exactly where the student's own forward leaves them: inference normalises with those.
    set_seed(0)
    model = build_model(cfg).train()
    initial = copy.deepcopy(model.state_dict())
    running = {}
    for name, losses in (("dkd", model.distillation_losses), ("none", {})):
        model.load_state_dict(initial)
        model.distillation_losses = torch.nn.ModuleDict(losses)
        set_seed(1)
        with EventStorage():
            model(model_inputs(cfg, records))
        running[name] = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    assert running["dkd"].keys() == running["none"].keys() and len(running["dkd"]) > 0
    for key, value in running["dkd"].items():
        assert torch.equal(value, running["none"][key]), key
    assert not torch.equal(
        running["dkd"]["roi_heads.res5.0.conv1.norm.running_mean"],
        initial["roi_heads.res5.0.conv1.norm.running_mean"],
    )

    # With separate detection and re-ID heads the DKD terms train the re-ID head's own res5.
    cfg.MODEL.REID.SEPARATE_RES5 = True
    model = build_model(cfg).train()
    with EventStorage():
        losses = model(model_inputs(cfg, records))
        (losses["loss_dkd_relation"] + losses["loss_dkd_triplet"]).backward()
    assert model.student.roi_heads.reid_res5[0].conv1.weight.grad.abs().sum() > 0
    assert model.student.roi_heads.res5[0].conv1.weight.grad is None

    cfg.MODEL.REID.SEPARATE_RES5 = False
    cfg.MODEL.REID.LOSSES = ["OIMReIDLoss"]  # no identity probabilities in the student
    with pytest.raises(ValueError, match="needs identity probabilities from both networks"):
        build_model(cfg)
