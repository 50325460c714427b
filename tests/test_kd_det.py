# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""KD_det: a student with a frozen DetectorTeacher and the three KD_det distillation losses."""

import pickle

import pytest

pytest.importorskip("detectron2")

import torch  # noqa: E402

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from personsearch_kd import add_teacher  # noqa: E402

from helpers import det_teacher, model_inputs, set_seed, synthetic_record, tiny_cfg  # noqa: E402

KD_LOSSES = {"loss_rpn_cls_kd", "loss_rpn_loc_kd", "loss_cls_kd", "loss_box_reg_kd", "loss_hint"}
STUDENT_LOSSES = {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_oim"}


KD_DET = ["HintLoss", "RPNDistillLoss", "RCNDistillLoss"]
ADAPTER = "distillation_losses.HintLoss.adapter"


def _student_cfg(teacher, depth=18, opts=(), **overrides):
    config_file, weights = teacher
    cfg = tiny_cfg(depth, **{"MODEL.DISTILLATION.LOSSES": KD_DET}, **overrides)
    return add_teacher(cfg, "detector", "DetectorTeacher", weights, config_file, opts)


@pytest.fixture
def records(tmp_path):
    return [synthetic_record(tmp_path, 1, [0, 1, -1]), synthetic_record(tmp_path, 2, [2, -1, 0])]


def test_r18_student_r50_teacher_trains_and_the_teacher_stays_frozen(tmp_path, records):
    records = records + [synthetic_record(tmp_path, 3, [])]  # and an image without persons
    cfg = _student_cfg(det_teacher(tmp_path, depth=50))
    set_seed(0)
    model = build_model(cfg)
    teacher = model.teachers["detector"].model
    # Compression: R18 res4 (256 channels) is adapted to R50's (1024).
    adapter = model.distillation_losses["HintLoss"].adapter
    assert (adapter.in_channels, adapter.out_channels) == (256, 1024)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with EventStorage():
        for _ in range(2):
            losses = model(model_inputs(cfg, records))
            assert set(losses) == STUDENT_LOSSES | KD_LOSSES
            for name, value in losses.items():
                assert torch.isfinite(value), name
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
    assert not teacher.training
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key  # parameters and BN statistics
    assert not torch.equal(adapter.weight, student_before[f"{ADAPTER}.weight"])

    # The student's checkpoint has no teacher keys: its own modules and the adapter only.
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("student")
    saved = torch.load(tmp_path / "student.pth", weights_only=False)["model"]
    assert set(saved) == set(student_before)
    assert {k.split(".")[0] for k in saved} == {
        "backbone",
        "proposal_generator",
        "roi_heads",
        "distillation_losses",
    }
    assert len(saved) == len(build_model(tiny_cfg(18)).state_dict()) + 2


def test_wrapped_inference_equals_the_students(tmp_path, records):
    cfg = _student_cfg(det_teacher(tmp_path, depth=18))
    set_seed(0)
    model = build_model(cfg).eval()
    plain = build_model(tiny_cfg(18)).eval()
    missing = plain.load_state_dict(model.state_dict(), strict=False)
    assert missing.missing_keys == [] and set(missing.unexpected_keys) == {
        f"{ADAPTER}.weight",
        f"{ADAPTER}.bias",
    }
    inputs = model_inputs(cfg, records, is_train=False)
    queries = [dict(inputs[0], query_boxes=[[10.0, 10.0, 40.0, 90.0]])]
    with torch.no_grad():
        for batch in (inputs, queries):
            for ours, theirs in zip(model(batch), plain(batch)):
                a, b = ours["instances"], theirs["instances"]
                assert len(a) > 0
                assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
                assert torch.equal(a.scores, b.scores)
                assert torch.equal(a.reid_feats, b.reid_feats)


def test_a_teacher_identical_to_the_student_gives_zero_bounded_and_hint_losses(tmp_path, records):
    # GroupNorm: the same output in train and eval mode, so student (training) and teacher
    # (eval) compute the same function once they share weights.
    cfg = tiny_cfg(18, **{"MODEL.RESNETS.NORM": "GN"})
    set_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("same")
    teacher_cfg = tiny_cfg(
        18,
        **{
            "MODEL.META_ARCHITECTURE": "GeneralizedRCNN",
            "MODEL.ROI_HEADS.NAME": "PersonDetectorROIHeads",
            "MODEL.RESNETS.NORM": "GN",
        },
    )
    (tmp_path / "same.yaml").write_text(teacher_cfg.dump())
    teacher = (str(tmp_path / "same.yaml"), str(tmp_path / "same.pth"))

    def losses_with(margin):
        student_cfg = _student_cfg(
            teacher,
            **{"MODEL.RESNETS.NORM": "GN", "MODEL.KD_DET.BOUNDED_REG_MARGIN": margin},
        )
        model = build_model(student_cfg)
        DetectionCheckpointer(model).load(teacher[1])
        with torch.no_grad():
            adapter = model.distillation_losses["HintLoss"].adapter
            adapter.weight.copy_(torch.eye(256)[:, :, None, None])
            adapter.bias.zero_()
        model.train()
        with EventStorage(), torch.no_grad():
            return model(model_inputs(student_cfg, records))

    same = losses_with(0.0)
    # Equal errors are not "worse than the teacher": the bounded terms vanish; so does the hint.
    assert same["loss_rpn_loc_kd"] == 0 and same["loss_box_reg_kd"] == 0
    assert same["loss_hint"] == 0
    assert same["loss_cls_kd"] > 0 and same["loss_rpn_cls_kd"] > 0  # soft CE = weighted entropy
    # A positive margin puts every positive sample in the penalised region.
    with_margin = losses_with(0.1)
    assert with_margin["loss_rpn_loc_kd"] > 0 and with_margin["loss_box_reg_kd"] > 0


def test_bad_teacher_config_or_checkpoint_is_a_clear_error(tmp_path):
    config_file, weights = det_teacher(tmp_path, depth=50)
    with pytest.raises(FileNotFoundError, match=r"MODEL.TEACHERS.detector.CONFIG_FILE='nope.yaml'"):
        build_model(_student_cfg(("nope.yaml", weights)))
    with pytest.raises(FileNotFoundError, match=r"MODEL.TEACHERS.detector.WEIGHTS='nope.pth'"):
        build_model(_student_cfg((config_file, "nope.pth")))
    r18_config, r18_weights = det_teacher(tmp_path, depth=18)
    with pytest.raises(ValueError, match=r"does not fit its CONFIG_FILE=.*det_R_50"):
        build_model(_student_cfg((config_file, r18_weights)))
    with pytest.raises(ValueError, match=r"differ in MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS"):
        opts = ["MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS", (1.0, 1.0, 1.0, 1.0)]
        build_model(_student_cfg((config_file, weights), opts=opts))
    with pytest.raises(ValueError, match=r"HINT_FEATURE='res5': not an output of the student"):
        build_model(_student_cfg((config_file, weights), **{"MODEL.KD_DET.HINT_FEATURE": "res5"}))


def test_imagenet_style_weights_load_into_the_student_only(tmp_path):
    """A classification backbone (.pkl, names without the "backbone." prefix), as MODEL.WEIGHTS."""
    cfg = _student_cfg(det_teacher(tmp_path, depth=18))
    set_seed(0)
    model = build_model(cfg)
    teacher = model.teachers["detector"]
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    set_seed(5)
    backbone = build_model(tiny_cfg(18)).backbone.state_dict()
    with open(tmp_path / "R-18.pkl", "wb") as f:
        pickle.dump(
            {
                "model": {k: v.numpy() for k, v in backbone.items()},
                "__author__": "test",
                "matching_heuristics": True,
            },
            f,
        )
    DetectionCheckpointer(model).load(str(tmp_path / "R-18.pkl"))
    for key, value in backbone.items():
        assert torch.equal(model.student.backbone.state_dict()[key], value), key
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key


def test_soft_t_squared_scales_the_soft_terms_by_t_squared(tmp_path, records):
    teacher = det_teacher(tmp_path, depth=18)
    soft = {}
    for t_squared in (False, True):
        cfg = _student_cfg(teacher, **{"MODEL.KD_DET.SOFT_T_SQUARED": t_squared})
        set_seed(0)
        model = build_model(cfg).train()
        set_seed(1)
        with EventStorage(), torch.no_grad():
            losses = model(model_inputs(cfg, records))
        soft[t_squared] = [losses[k].item() for k in ("loss_cls_kd", "loss_rpn_cls_kd", "loss_cls")]
    assert soft[True][0] == pytest.approx(100 * soft[False][0], rel=1e-5)  # T = 10
    assert soft[True][1] == pytest.approx(100 * soft[False][1], rel=1e-5)
    assert soft[True][2] == pytest.approx(soft[False][2], rel=1e-6)  # the hard term is unchanged
