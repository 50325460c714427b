# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""The distillation framework: re-ID head and losses, teachers, distillation losses as parts."""

import pytest

pytest.importorskip("detectron2")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import configurable  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from personsearch_kd import add_teacher, load_config, student_config  # noqa: E402
from personsearch_kd.distillation import (  # noqa: E402
    DISTILL_LOSS_REGISTRY,
    Distiller,
    build_student,
    student_of,
)
from personsearch_kd.modeling import PersonSearchRCNN, Recorder, recording  # noqa: E402

from helpers import det_teacher, model_inputs, set_seed, synthetic_record, tiny_cfg  # noqa: E402

KD_DET = ["HintLoss", "RPNDistillLoss", "RCNDistillLoss"]


@pytest.fixture
def records(tmp_path):
    return [synthetic_record(tmp_path, 1, [0, 1, -1]), synthetic_record(tmp_path, 2, [2, 1, 0])]


def _train_step(model, cfg, records):
    model.train()
    with EventStorage():
        losses = model(model_inputs(cfg, records))
        sum(losses.values()).backward()
    return losses


def test_reid_losses_are_chosen_in_the_config_and_train_together(records):
    losses = ["OIMReIDLoss", "IdentityCrossEntropyLoss", "TripletReIDLoss"]
    cfg = tiny_cfg(18, **{"MODEL.REID.LOSSES": losses, "MODEL.REID.TRIPLET.MARGIN": 5.0})
    set_seed(0)
    model = build_model(cfg)
    head = model.roi_heads.reid_head
    assert head.classifier.weight.shape == (cfg.MODEL.OIM.NUM_IDS, cfg.MODEL.OIM.EMBED_DIM)
    out = _train_step(model, cfg, records)
    assert {"loss_oim", "loss_id_ce", "loss_triplet"} <= set(out)
    # Unit embeddings are at most 2 apart: with margin 5 every valid anchor adds > 3.
    assert out["loss_triplet"] > 3 and out["loss_id_ce"] > 0 and torch.isfinite(out["loss_oim"])
    assert head.classifier.weight.grad.abs().sum() > 0

    with pytest.raises(KeyError, match=r"MODEL.REID.LOSSES: 'Nope' is not a registered"):
        build_model(tiny_cfg(18, **{"MODEL.REID.LOSSES": ["Nope"]}))
    # Without the cross-entropy loss the head has no classifier and gives no logits.
    assert build_model(tiny_cfg(18)).roi_heads.reid_head.classifier is None


def _batchnorm_statistics(model):
    return {
        k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "batches" in k
    }


def test_the_record_embeds_any_boxes_without_moving_batchnorm_statistics(records):
    cfg = tiny_cfg(18)
    model = build_model(cfg).train()
    (inputs,) = model_inputs(cfg, records[:1])
    with EventStorage(), recording(model) as fields:
        model([inputs])
    statistics = _batchnorm_statistics(model)
    outputs = fields["embed_boxes"]([inputs["instances"].gt_boxes])
    assert outputs.embeddings.shape == (3, 256) and outputs.feature_map.shape[0] == 3
    assert torch.allclose(outputs.embeddings.norm(dim=1), torch.ones(3), atol=1e-5)
    outputs.embeddings.sum().backward()
    assert model.roi_heads.reid_head.proj.weight.grad.abs().sum() > 0
    # Normalised with the boxes' own statistics (training mode), which are not kept.
    after = _batchnorm_statistics(model)
    assert all(torch.equal(after[k], v) for k, v in statistics.items())


def test_outside_recording_the_student_keeps_nothing(records):
    cfg = tiny_cfg(18)
    model = build_model(cfg).train()
    with EventStorage():
        model(model_inputs(cfg, records[:1]))
    recorders = [m for m in model.modules() if isinstance(m, Recorder)]
    assert len(recorders) == 2  # the RPN and the ROI heads
    assert all(m._recorded is None for m in recorders)


class RecordProbe(nn.Module):
    """A distillation loss of a test: it keeps what it is given and adds a zero."""

    seen = []

    @configurable
    def __init__(self):
        super().__init__()

    @classmethod
    def from_config(cls, cfg, student, teachers):
        return {}

    def forward(self, record, teacher_outputs, student_losses):
        RecordProbe.seen.append((record, teacher_outputs, dict(student_losses)))
        return {"loss_probe": record.features["res4"].sum() * 0.0}


if "RecordProbe" not in DISTILL_LOSS_REGISTRY:
    DISTILL_LOSS_REGISTRY.register(RecordProbe)


def test_a_distillation_loss_reads_the_record_and_each_teachers_outputs(tmp_path, records):
    config_file, weights = det_teacher(tmp_path, depth=18)
    cfg = tiny_cfg(18, **{"MODEL.DISTILLATION.LOSSES": ["RecordProbe"]})
    add_teacher(cfg, "detector", "DetectorTeacher", weights, config_file)
    set_seed(0)
    model = build_model(cfg)
    RecordProbe.seen.clear()
    losses = _train_step(model, cfg, records)
    assert losses["loss_probe"] == 0
    ((record, teacher_outputs, student_losses),) = RecordProbe.seen
    assert set(student_losses) == {
        "loss_rpn_cls",
        "loss_rpn_loc",
        "loss_cls",
        "loss_box_reg",
        "loss_oim",
    }
    n, anchors = 2, sum(len(a) for a in record.anchors)
    assert record.rpn_labels.shape == (n, anchors)
    assert [x.shape for x in record.rpn_logits] == [(n, len(a)) for a in record.anchors]
    rois = sum(len(r) for r in record.rois)
    assert record.box_scores.shape == (rois, 2) and record.box_deltas.shape[0] == rois
    assert record.batched_inputs[0]["image"].shape[0] == 3 and len(record.gt_instances) == n
    assert callable(record.embed_boxes)
    teacher = teacher_outputs["detector"]
    assert teacher.features["res4"].shape == record.features["res4"].shape
    assert not teacher.features["res4"].requires_grad
    scores, _ = teacher.boxes
    assert scores.shape == record.box_scores.shape


def test_teachers_are_outside_the_module_tree_and_move_with_the_student(tmp_path):
    config_file, weights = det_teacher(tmp_path, depth=18)
    cfg = add_teacher(
        tiny_cfg(18, **{"MODEL.DISTILLATION.LOSSES": KD_DET}),
        "detector",
        "DetectorTeacher",
        weights,
        config_file,
    )
    model = build_model(cfg)
    teacher = model.teachers["detector"]
    assert not any(name.startswith("_teachers") for name, _ in model.named_modules())
    model.train()
    assert not teacher.training and not teacher.model.training
    model.double()  # any _apply, as .to(device) on a GPU
    assert next(teacher.parameters()).dtype == torch.float64
    assert next(model.student.backbone.parameters()).dtype == torch.float64


@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda c: c.MODEL.TEACHERS.detector.__setitem__("KIND", "Nope"), KeyError, r"KIND='Nope'"),
        (
            lambda c: c.MODEL.TEACHERS.__setitem__("detector", "x.pth"),
            ValueError,
            r"MODEL.TEACHERS.detector: expected a node with KIND",
        ),
        (
            lambda c: c.MODEL.KD_DET.__setitem__("TEACHER", "other"),
            ValueError,
            r"compares with the DetectorTeacher MODEL.KD_DET.TEACHER='other'",
        ),
        (
            lambda c: c.MODEL.DISTILLATION.__setitem__("LOSSES", ["Nope"]),
            KeyError,
            r"MODEL.DISTILLATION.LOSSES: 'Nope' is not a registered distillation loss",
        ),
    ],
)
def test_bad_teacher_or_loss_config_is_a_clear_error(tmp_path, change, error, message):
    config_file, weights = det_teacher(tmp_path, depth=18)
    cfg = tiny_cfg(18, **{"MODEL.DISTILLATION.LOSSES": KD_DET})
    add_teacher(cfg, "detector", "DetectorTeacher", weights, config_file)
    change(cfg)
    with pytest.raises(error, match=message):
        build_model(cfg)


def _fpn_teacher(tmp_path):
    """An untrained ResNet-18 FPN Faster R-CNN person detector (StandardROIHeads)."""
    set_seed(1)
    levels = ["res2", "res3", "res4", "res5"]
    cfg = tiny_cfg(
        18,
        **{
            "MODEL.META_ARCHITECTURE": "GeneralizedRCNN",
            "MODEL.BACKBONE.NAME": "build_resnet_fpn_backbone",
            "MODEL.RESNETS.OUT_FEATURES": levels,
            "MODEL.FPN.IN_FEATURES": levels,
            "MODEL.ANCHOR_GENERATOR.SIZES": [[32], [64], [128], [256], [512]],
            "MODEL.RPN.IN_FEATURES": ["p2", "p3", "p4", "p5", "p6"],
            "MODEL.ROI_HEADS.NAME": "StandardROIHeads",
            "MODEL.ROI_HEADS.IN_FEATURES": ["p2", "p3", "p4", "p5"],
            "MODEL.ROI_BOX_HEAD.NAME": "FastRCNNConvFCHead",
            "MODEL.ROI_BOX_HEAD.NUM_FC": 2,
            "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": 7,
        },
    )
    (tmp_path / "fpn.yaml").write_text(cfg.dump())
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("fpn")
    return str(tmp_path / "fpn.yaml"), str(tmp_path / "fpn.pth")


def test_fpn_teacher_gives_hint_and_box_head_terms_to_a_c4_student(tmp_path, records):
    config_file, weights = _fpn_teacher(tmp_path)
    losses = {"MODEL.DISTILLATION.LOSSES": ["HintLoss", "RCNDistillLoss"]}
    cfg = tiny_cfg(18, **losses, **{"MODEL.KD_DET.HINT_TEACHER_FEATURE": "p4"})
    add_teacher(cfg, "detector", "DetectorTeacher", weights, config_file)
    set_seed(0)
    model = build_model(cfg)
    # res4 of R18 (256 channels, stride 16) is adapted to the FPN's p4 (256, stride 16).
    adapter = model.distillation_losses["HintLoss"].adapter
    assert (adapter.in_channels, adapter.out_channels) == (256, 256)
    out = _train_step(model, cfg, records)
    for key in ("loss_hint", "loss_cls_kd", "loss_box_reg_kd", "loss_cls"):
        assert torch.isfinite(out[key]) and out[key].requires_grad, key
    assert out["loss_hint"] > 0 and out["loss_cls_kd"] > 0

    cfg.MODEL.DISTILLATION.LOSSES = KD_DET
    with pytest.raises(ValueError, match=r"RPNDistillLoss: student and teacher differ in MODEL"):
        build_model(cfg)


def test_a_distilled_checkpoint_loads_into_the_plain_student_without_key_surgery(tmp_path, records):
    config_file, weights = det_teacher(tmp_path, depth=18)
    cfg = add_teacher(
        tiny_cfg(18, **{"MODEL.DISTILLATION.LOSSES": KD_DET}),
        "detector",
        "DetectorTeacher",
        weights,
        config_file,
    )
    assert cfg.MODEL.META_ARCHITECTURE == "Distiller"
    assert cfg.MODEL.DISTILLATION.STUDENT_ARCHITECTURE == "PersonSearchRCNN"
    set_seed(0)
    distiller = build_model(cfg)
    assert isinstance(distiller, Distiller) and student_of(distiller) is distiller.student
    _train_step(distiller, cfg, records)
    DetectionCheckpointer(distiller, save_dir=str(tmp_path)).save("distilled")
    saved = torch.load(tmp_path / "distilled.pth", weights_only=False)["model"]
    student_keys = set(distiller.student.state_dict())
    assert student_keys <= set(saved) and not any(k.startswith("student.") for k in saved)
    assert set(saved) - student_keys == {k for k in saved if k.startswith("distillation_losses.")}

    for plain in (build_student(cfg), build_model(student_config(cfg))):
        assert type(plain) is PersonSearchRCNN and not hasattr(plain, "teachers")
        plain_state = plain.state_dict()
        plain.load_state_dict({k: v for k, v in saved.items() if k in plain_state})
        assert set(plain_state) == student_keys
        for key, value in plain.state_dict().items():
            assert torch.equal(value, saved[key]), key
    # And back: the Distiller loads its own checkpoint (resume) and a plain student's.
    again = build_model(cfg)
    incompatible = again.load_state_dict(saved)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    again.load_state_dict(plain.state_dict(), strict=False)
    assert torch.equal(again.student.roi_heads.oim_loss.lut, saved["roi_heads.oim_loss.lut"])


def test_teachers_without_a_distiller_are_an_error_not_ignored(tmp_path):
    cfg = tiny_cfg(18, **{"MODEL.DISTILLATION.LOSSES": KD_DET})
    (tmp_path / "c.yaml").write_text(cfg.dump())
    with pytest.raises(
        ValueError, match=r"MODEL.META_ARCHITECTURE is 'PersonSearchRCNN'; expected"
    ):
        load_config(str(tmp_path / "c.yaml"))
    cfg.MODEL.META_ARCHITECTURE = "Distiller"
    cfg.MODEL.DISTILLATION.STUDENT_ARCHITECTURE = "Distiller"
    with pytest.raises(ValueError, match=r"STUDENT_ARCHITECTURE='Distiller'"):
        build_model(cfg)
