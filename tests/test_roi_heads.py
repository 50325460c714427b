# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""OIMROIHeads on random features; the LazyConfig model; the dataset mapper."""

import os

import pytest

pytest.importorskip("detectron2")

import torch  # noqa: E402

from detectron2.config import LazyConfig, instantiate  # noqa: E402
from detectron2.layers import ShapeSpec  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.modeling.roi_heads import build_roi_heads  # noqa: E402
from detectron2.structures import Boxes, ImageList, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from personsearch_kd import add_teacher  # noqa: E402
from personsearch_kd.layers import save_lut_file  # noqa: E402

from helpers import CONFIGS, model_inputs, set_seed, synthetic_record, tiny_cfg  # noqa: E402

IMAGE_SIZE = (96, 128)


def _head_and_inputs(cfg):
    """OIMROIHeads of an R18 config on random res4 features of 2 images, with fixed proposals:
    each ground-truth box plus two background boxes far away from every person."""
    head = build_roi_heads(cfg, {"res4": ShapeSpec(channels=256, stride=16)})
    features = {"res4": torch.rand(2, 256, IMAGE_SIZE[0] // 16, IMAGE_SIZE[1] // 16)}
    images = ImageList(torch.zeros(2, 3, *IMAGE_SIZE), [IMAGE_SIZE] * 2)
    gt = [
        (torch.tensor([[10.0, 10, 40, 80], [60, 10, 90, 80]]), torch.tensor([0, -1])),
        (torch.tensor([[20.0, 5, 50, 90]]), torch.tensor([3])),
    ]
    targets, proposals = [], []
    for boxes, pids in gt:
        t = Instances(IMAGE_SIZE)
        t.gt_boxes = Boxes(boxes)
        t.gt_classes = torch.zeros(len(boxes), dtype=torch.int64)
        t.gt_pids = pids
        targets.append(t)
        p = Instances(IMAGE_SIZE)
        background = torch.tensor([[100.0, 0, 127, 20], [100, 70, 127, 95]])
        p.proposal_boxes = Boxes(torch.cat([boxes, background]))
        p.objectness_logits = torch.zeros(len(boxes) + 2)
        proposals.append(p)
    return head, images, features, proposals, targets


def test_head_losses_and_memory_use_only_foreground():
    set_seed(0)
    cfg = tiny_cfg(18, **{"MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 512})
    head, images, features, proposals, targets = _head_and_inputs(cfg)
    head.train()
    with EventStorage():
        instances, losses = head(images, features, proposals, targets)
    assert instances == []
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_oim"}
    assert all(torch.isfinite(v) for v in losses.values())
    oim = head.oim_loss
    # Foreground = each given box and its appended ground-truth copy. Only the two copies of the
    # one unlabeled person reach the queue; the four background boxes reach nothing.
    assert int(oim.queue_ptr) == 2
    assert oim.queue[:2].norm(dim=1).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    assert not oim.queue[2:].any()
    assert [round(oim.lut[i].norm().item(), 5) for i in range(6)] == [1, 0, 0, 1, 0, 0]


def test_head_loss_weight_scales_oim_loss():
    cfgs = [tiny_cfg(18, **{"MODEL.OIM.LOSS_WEIGHT": w}) for w in (1.0, 0.1)]
    values = []
    for cfg in cfgs:
        set_seed(0)
        head, images, features, proposals, targets = _head_and_inputs(cfg)
        set_seed(1)
        with EventStorage():
            values.append(head(images, features, proposals, targets)[1]["loss_oim"].item())
    assert values[1] == pytest.approx(0.1 * values[0], rel=1e-5)


def _teacher_lut_cfg(tmp_path, person_ids=range(6), dim=256, dataset=None):
    lut = torch.nn.functional.normalize(torch.randn(len(person_ids), dim), dim=1)
    cfg = tiny_cfg(18, **{"MODEL.OIM.FREEZE_LUT": True})
    lut_file = str(tmp_path / "teacher_lut.pth")
    save_lut_file(
        lut_file,
        lut,
        dataset if dataset is not None else cfg.DATASETS.TRAIN,
        person_ids,
        "from_checkpoint",
        "",
        "teacher.pth",
    )
    return add_teacher(cfg, "table", "LUTFileTeacher", lut_file), lut


def test_frozen_lut_from_file_is_loaded_and_kept(tmp_path):
    cfg, lut = _teacher_lut_cfg(tmp_path)
    head = build_model(cfg).student.roi_heads.train()
    _, images, features, proposals, targets = _head_and_inputs(cfg)
    with EventStorage():
        head(images, features, proposals, targets)
    assert torch.equal(head.oim_loss.lut, lut)
    assert int(head.oim_loss.queue_ptr) == 2


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"person_ids": range(5)}, r"ids: 5 rows in the file, 6 in the student"),
        ({"dim": 128}, r"dim: the file has 128, MODEL.OIM.EMBED_DIM is 256"),
        ({"dataset": ["cuhk_sysu_train"]}, r"dataset: .*\['cuhk_sysu_train'\]"),
    ],
)
def test_teacher_lut_that_does_not_fit_the_student_is_an_error(tmp_path, kwargs, message):
    cfg, _ = _teacher_lut_cfg(tmp_path, **kwargs)
    with pytest.raises(
        ValueError, match=r"teacher_lut.pth.* does not fit this student: " + message
    ):
        build_model(cfg)


def test_inference_adds_reid_feats():
    cfg = tiny_cfg(18)
    head, images, features, proposals, _ = _head_and_inputs(cfg)
    head.eval()
    with torch.no_grad():
        instances, losses = head(images, features, proposals)
    assert losses == {}
    for inst in instances:
        assert inst.reid_feats.shape == (len(inst), 256)
        assert inst.has("pred_boxes") and inst.has("scores")


def test_lazy_config_model_has_the_yacs_model_structure():
    lazy = LazyConfig.load(os.path.join(CONFIGS, "lazy", "oim_R_50_C4.py"))
    lazy.model.roi_heads.reid_losses[0].num_ids = 6
    lazy.model.roi_heads.reid_losses[0].queue_size = 16
    model = instantiate(lazy.model)
    cfg = tiny_cfg(50)
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    reference = build_model(cfg)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.randint(0, 255, (3, 128, 160)).float()}])
    assert out[0]["instances"].reid_feats.shape[1] == 256


def test_mapper_carries_person_ids_through_flip(tmp_path):
    cfg = tiny_cfg(18, **{"INPUT.RANDOM_FLIP": "horizontal"})
    record = synthetic_record(tmp_path, 3, [4, -1, 1])
    orders = []
    for seed in range(8):  # both flip outcomes are drawn among 8 tries (p = 1 - 2^-7)
        set_seed(seed)
        (mapped,) = model_inputs(cfg, [record])
        inst = mapped["instances"]
        assert inst.gt_pids.tolist() == [4, -1, 1]
        order = inst.gt_boxes.tensor[:, 0].argsort().tolist()
        orders.append(order)
    # Unflipped the persons stand left to right 4, -1, 1; flipped, right to left.
    assert [0, 1, 2] in orders and [2, 1, 0] in orders


@pytest.mark.parametrize(
    "person_id, message",
    [
        (None, "person_id=None"),
        (6, r"person_id=6; expected an int in \[0, 6\)"),
        (-2, "person_id=-2"),
    ],
)
def test_mapper_rejects_bad_person_ids_naming_file_and_field(tmp_path, person_id, message):
    cfg = tiny_cfg(18)
    record = synthetic_record(tmp_path, 4, [0, 1])
    if person_id is None:
        del record["annotations"][1]["person_id"]
    else:
        record["annotations"][1]["person_id"] = person_id
    with pytest.raises(ValueError, match=rf"synthetic_4.png: annotation 1 has {message}"):
        model_inputs(cfg, [record])


def test_separate_reid_res5_carries_the_reid_losses_only():
    set_seed(0)
    cfg = tiny_cfg(18, **{"MODEL.REID.SEPARATE_RES5": True})
    head, images, features, proposals, targets = _head_and_inputs(cfg)
    # A non-empty LUT: with the initial all-zero one the OIM gradient is exactly zero.
    head.oim_loss.lut.copy_(torch.nn.functional.normalize(torch.randn_like(head.oim_loss.lut)))
    head.train()
    with EventStorage():
        _, losses = head(images, features, proposals, targets)
    # The box losses never reach the re-ID res5; the re-ID loss reaches it but not the box res5.
    (losses["loss_cls"] + losses["loss_box_reg"]).backward(retain_graph=True)
    assert all(p.grad is None for p in head.reid_res5.parameters())
    box_grads = [p.grad.clone() for p in head.res5.parameters()]
    losses["loss_oim"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.reid_res5.parameters())
    assert all(torch.equal(p.grad, g) for p, g in zip(head.res5.parameters(), box_grads))

    # In inference the detections come from res5 and the embeddings from reid_res5 alone.
    head.eval()
    with torch.no_grad():
        before, _ = head(images, features, proposals)
        for p in head.reid_res5.parameters():
            p.add_(0.5)
        after, _ = head(images, features, proposals)
    for a, b in zip(before, after):
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        assert torch.equal(a.scores, b.scores)
        assert not torch.allclose(a.reid_feats, b.reid_feats)


def test_separate_reid_res5_starts_from_a_checkpoints_res5():
    # A shared-head model's weights (as ImageNet or model-zoo weights: no reid_res5) load into a
    # separate-head model with nothing missing; reid_res5 is a copy of res5, then trains alone.
    shared = build_model(tiny_cfg(18))
    separate = build_model(tiny_cfg(18, **{"MODEL.REID.SEPARATE_RES5": True}))
    result = separate.load_state_dict(shared.state_dict(), strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    res5 = separate.roi_heads.res5.state_dict()
    reid_res5 = separate.roi_heads.reid_res5.state_dict()
    assert res5.keys() == reid_res5.keys()
    assert all(torch.equal(res5[k], reid_res5[k]) for k in res5)
    assert all(torch.equal(res5[k], shared.roi_heads.res5.state_dict()[k]) for k in res5)
    assert reid_res5["0.conv1.weight"].data_ptr() != res5["0.conv1.weight"].data_ptr()
    # Its own checkpoint keeps its own reid_res5.
    with torch.no_grad():
        for p in separate.roi_heads.reid_res5.parameters():
            p.mul_(2.0)
    again = build_model(tiny_cfg(18, **{"MODEL.REID.SEPARATE_RES5": True}))
    again.load_state_dict(separate.state_dict())
    assert torch.equal(
        again.roi_heads.reid_res5[0].conv1.weight, separate.roi_heads.reid_res5[0].conv1.weight
    )


def test_reid_on_proposals_gives_each_detection_its_proposals_feature():
    cfg = tiny_cfg(18)
    head, images, features, proposals, _ = _head_and_inputs(cfg)
    head.eval()
    with torch.no_grad():
        default, _ = head(images, features, proposals)
        head.reid_on_proposals = True
        fast, _ = head(images, features, proposals)
        own = head.embed_for_distillation(
            features, [p.proposal_boxes for p in proposals]
        ).embeddings
    own = own.split([len(p) for p in proposals])
    for a, b, candidates in zip(default, fast, own):
        # The same detections; each feature is that of one of the image's proposals.
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        assert torch.equal(a.scores, b.scores)
        assert b.reid_feats.shape == a.reid_feats.shape and b.reid_feats.dtype == torch.float32
        distance = torch.cdist(b.reid_feats, candidates)
        assert (distance.min(dim=1).values < 1e-5).all()


def test_bf16_autocast_inference_keeps_reid_features_fp32_and_normalised():
    cfg = tiny_cfg(18)
    head, images, features, proposals, _ = _head_and_inputs(cfg)
    head.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        instances, _ = head(images, features, proposals)
    for inst in instances:
        assert inst.reid_feats.dtype == torch.float32
        assert torch.allclose(inst.reid_feats.norm(dim=1), torch.ones(len(inst)), atol=1e-5)


def test_a_bf16_autocast_training_step_updates_the_oim_memory_in_fp32():
    set_seed(0)
    cfg = tiny_cfg(18)
    head, images, features, proposals, targets = _head_and_inputs(cfg)
    head.train()
    with EventStorage(), torch.autocast("cpu", dtype=torch.bfloat16):
        _, losses = head(images, features, proposals, targets)
    sum(losses.values()).backward()
    oim = head.oim_loss
    assert oim.lut.dtype == torch.float32 and oim.queue.dtype == torch.float32
    assert [round(oim.lut[i].norm().item(), 4) for i in (0, 3)] == [1.0, 1.0]
    assert int(oim.queue_ptr) == 2 and torch.isfinite(losses["loss_oim"])


def _batch_norm_buffers(module):
    buffers = module.state_dict().items()
    return {k: v.clone() for k, v in buffers if "running" in k or "num_batches" in k}


@pytest.mark.parametrize("separate", [False, True])
def test_embedding_boxes_in_training_leaves_the_running_statistics_alone(separate):
    set_seed(0)
    head, images, features, proposals, targets = _head_and_inputs(
        tiny_cfg(18, **{"MODEL.REID.SEPARATE_RES5": separate})
    )
    head.train()
    before = _batch_norm_buffers(head)
    assert any("res5" in k and "running_mean" in k for k in before)
    boxes = [t.gt_boxes for t in targets]
    reid = head.embed_for_distillation(features, boxes)
    # Still a training forward: the batch's own statistics, gradients to res5 and the head.
    reid.embeddings.sum().backward()
    res5 = head.res5 if not separate else head.reid_res5
    assert res5[0].conv1.weight.grad.abs().sum() > 0
    after = _batch_norm_buffers(head)
    assert all(torch.equal(before[k], after[k]) for k in before)
    head.eval()
    with torch.no_grad():
        assert not torch.allclose(
            head.embed_for_distillation(features, boxes).embeddings, reid.embeddings
        )
    # The head's own training forward does move them.
    head.train()
    with EventStorage():
        head(images, features, proposals, targets)
    moved = _batch_norm_buffers(head)
    key = "res5.0.conv1.norm.running_mean"
    assert not torch.equal(moved[key], before[key])
