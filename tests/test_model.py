# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""PersonSearchRCNN R18 and R50 C4: training step, inference, query mode, checkpoints."""

import pytest

pytest.importorskip("detectron2")

import torch  # noqa: E402

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from helpers import NUM_IDS, model_inputs, set_seed, synthetic_record, tiny_cfg  # noqa: E402

LOSS_KEYS = {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_oim"}


@pytest.fixture
def records(tmp_path):
    return [
        synthetic_record(tmp_path, 1, [0, 1, -1]),
        synthetic_record(tmp_path, 2, [2, -1, 0]),
    ]


def _train_step(model, inputs, lr=0.01):
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    with EventStorage():
        losses = model(inputs)
    total = sum(losses.values())
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    return losses


@pytest.mark.parametrize("depth, norm", [(18, "BN"), (50, "BN"), (18, "GN")])
def test_training_step_updates_lut_rows_of_seen_ids(depth, norm, records):
    set_seed(0)
    cfg = tiny_cfg(depth, **{"MODEL.RESNETS.NORM": norm})
    model = build_model(cfg)
    oim = model.roi_heads.oim_loss
    assert not oim.lut.any()
    losses = _train_step(model, model_inputs(cfg, records))
    assert set(losses) == LOSS_KEYS
    for name, value in losses.items():
        assert torch.isfinite(value), name
    assert losses["loss_oim"] > 0
    for param in model.parameters():
        assert torch.isfinite(param).all()
    seen = {0, 1, 2}
    for pid in range(NUM_IDS):
        norm = oim.lut[pid].norm().item()
        assert norm == pytest.approx(1.0, abs=1e-5) if pid in seen else norm == 0.0, pid
    # Unlabeled persons (at least their two appended ground-truth boxes) entered the queue.
    assert int(oim.queue_ptr) >= 2


@pytest.mark.parametrize(
    "depth, block, num_blocks, channels",
    [(18, BasicBlock, 2, 512), (34, BasicBlock, 3, 512), (50, BottleneckBlock, 3, 2048)],
)
def test_res5_head_matches_backbone_depth(depth, block, num_blocks, channels):
    cfg = tiny_cfg(18 if depth == 34 else depth)
    cfg.MODEL.RESNETS.DEPTH = depth
    model = build_model(cfg)
    res5 = model.roi_heads.res5
    assert [type(b) for b in res5] == [block] * num_blocks
    assert res5[-1].out_channels == channels
    assert model.roi_heads.reid_head.proj.in_features == channels


def test_inference_returns_boxes_scores_and_normalised_reid_feats(records):
    set_seed(0)
    cfg = tiny_cfg(18)
    model = build_model(cfg).eval()
    with torch.no_grad():
        outputs = model(model_inputs(cfg, records, is_train=False))
    assert len(outputs) == 2
    for out, record in zip(outputs, records):
        inst = out["instances"]
        assert inst.image_size == (record["height"], record["width"])
        n = len(inst)
        assert n > 0
        assert inst.pred_boxes.tensor.shape == (n, 4) and inst.scores.shape == (n,)
        assert inst.reid_feats.shape == (n, cfg.MODEL.OIM.EMBED_DIM)
        assert torch.allclose(inst.reid_feats.norm(dim=1), torch.ones(n), atol=1e-5)


def test_query_mode_embeds_each_given_box_in_original_coordinates(records):
    set_seed(0)
    cfg = tiny_cfg(18)
    model = build_model(cfg)
    _train_step(model, model_inputs(cfg, records))  # non-trivial BN statistics
    model.eval()
    inputs = model_inputs(cfg, records[:1], is_train=False)[0]
    gt = torch.tensor([a["bbox"] for a in records[0]["annotations"]])
    with torch.no_grad():
        (out,) = model([dict(inputs, query_boxes=gt)])
        inst = out["instances"]
        assert len(inst) == len(gt)
        assert torch.equal(inst.pred_boxes.tensor, gt)
        assert inst.reid_feats.shape == (len(gt), cfg.MODEL.OIM.EMBED_DIM)
        assert torch.allclose(inst.reid_feats.norm(dim=1), torch.ones(len(gt)), atol=1e-5)
        # The same network input declared as a 2x larger original image, with 2x boxes, must
        # give the same features: boxes are mapped to input coordinates by the size ratio.
        doubled = dict(
            inputs,
            height=2 * inputs["height"],
            width=2 * inputs["width"],
            query_boxes=(2 * gt).tolist(),
        )
        (out2,) = model([doubled])
        assert torch.allclose(out2["instances"].reid_feats, inst.reid_feats, atol=1e-5)
        # Different people give different features.
        assert not torch.allclose(inst.reid_feats[0], inst.reid_feats[1], atol=1e-3)
    with pytest.raises(ValueError, match=r"query_boxes.*\(K, 4\)"):
        model([dict(inputs, query_boxes=[1.0, 2.0, 3.0])])
    # A batch may mix queries and gallery images (see the mixed-batch test).
    mixed = model([dict(inputs, query_boxes=gt), inputs])
    assert len(mixed[0]["instances"]) == len(gt) and mixed[1]["instances"].has("scores")


def test_checkpoint_round_trip_restores_outputs_and_oim_memory(records, tmp_path):
    set_seed(0)
    cfg = tiny_cfg(18)
    model = build_model(cfg)
    _train_step(model, model_inputs(cfg, records))
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model_test")

    set_seed(1)
    fresh = build_model(cfg)
    assert not torch.equal(fresh.roi_heads.oim_loss.lut, model.roi_heads.oim_loss.lut)
    DetectionCheckpointer(fresh).load(str(tmp_path / "model_test.pth"))
    for key in ("lut", "queue", "queue_ptr"):
        a = getattr(model.roi_heads.oim_loss, key)
        b = getattr(fresh.roi_heads.oim_loss, key)
        assert torch.equal(a, b), key

    model.eval()
    fresh.eval()
    inputs = model_inputs(cfg, records, is_train=False)
    with torch.no_grad():
        for a, b in zip(model(inputs), fresh(inputs)):
            a, b = a["instances"], b["instances"]
            assert len(a) == len(b) > 0
            assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
            assert torch.equal(a.scores, b.scores)
            assert torch.equal(a.reid_feats, b.reid_feats)


def test_checkpoints_from_before_the_reid_head_component_still_load(tmp_path):
    """Their re-ID head is under roi_heads.embed_head; it loads into roi_heads.reid_head."""
    set_seed(0)
    model = build_model(tiny_cfg(18))
    with torch.no_grad():
        model.roi_heads.reid_head.norm.running_mean.fill_(0.25)
    old_style = {
        k.replace("roi_heads.reid_head.", "roi_heads.embed_head."): v
        for k, v in model.state_dict().items()
    }
    torch.save({"model": old_style}, tmp_path / "old.pth")
    set_seed(1)
    fresh = build_model(tiny_cfg(18))
    incompatible = fresh.load_state_dict(old_style, strict=False)
    assert incompatible.missing_keys == [] and incompatible.unexpected_keys == []
    DetectionCheckpointer(fresh).load(str(tmp_path / "old.pth"))
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_bf16_inference_option_gives_the_documented_outputs(records, native_bf16):
    set_seed(0)
    cfg = tiny_cfg(18, **{"TEST.PERSON_SEARCH.PRECISION": "bf16"})
    model = build_model(cfg).eval()
    inputs = model_inputs(cfg, records[:1], is_train=False)
    with torch.no_grad():
        (detections,) = model(inputs)
        (query,) = model([dict(inputs[0], query_boxes=[[10.0, 10.0, 40.0, 80.0]])])
    for inst in (detections["instances"], query["instances"]):
        assert inst.reid_feats.dtype == torch.float32 and inst.reid_feats.shape[1] == 256
        assert torch.allclose(inst.reid_feats.norm(dim=1), torch.ones(len(inst)), atol=1e-5)
    for inst in (detections["instances"], query["instances"]):
        assert inst.pred_boxes.tensor.dtype == torch.float32 and inst.scores.dtype == torch.float32
    cfg.TEST.PERSON_SEARCH.PRECISION = "int4"
    with pytest.raises(ValueError, match="PRECISION='int4': expected one of"):
        build_model(cfg)


def test_a_batch_mixing_gallery_images_and_queries_equals_running_them_one_by_one(records):
    set_seed(0)
    cfg = tiny_cfg(18)
    model = build_model(cfg).eval()
    gallery = model_inputs(cfg, records[:2], is_train=False)  # same size: same padding
    query = dict(gallery[0], query_boxes=[[10.0, 10.0, 40.0, 80.0]])
    with torch.no_grad():
        mixed = model([gallery[0], query, gallery[1]])
        alone = [model([x])[0] for x in (gallery[0], query, gallery[1])]
    for a, b in zip(mixed, alone):
        a, b = a["instances"], b["instances"]
        assert torch.allclose(a.pred_boxes.tensor, b.pred_boxes.tensor, atol=1e-4)
        assert torch.allclose(a.reid_feats, b.reid_feats, atol=1e-5)
    assert len(mixed[1]["instances"]) == 1  # the query's own box
