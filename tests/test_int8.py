# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""TEST.PERSON_SEARCH.PRECISION "int8": the backbone and res5 as int8 stages on a CPU."""

import copy
import os
import types

import cv2
import pytest
import torch

pytest.importorskip("detectron2")

from detectron2.layers import FrozenBatchNorm2d  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from personsearch_kd.engine import prepare_for_inference  # noqa: E402
from personsearch_kd.modeling.int8 import Int8Module, plain_copy  # noqa: E402
from personsearch_kd.modeling.precision import resolve_precision  # noqa: E402

from helpers import REPO_ROOT, set_seed, tiny_cfg  # noqa: E402

FRAMES = os.path.join(REPO_ROOT, "datasets", "mot15-ps-sample", "PETS09-S2L1", "img1")


def _frames(count: int):
    """Model inputs of the first ``count`` sample frames at a quarter of their size."""
    inputs = []
    for name in sorted(os.listdir(FRAMES))[:count]:
        image = cv2.imread(os.path.join(FRAMES, name))[::4, ::4]
        tensor = torch.as_tensor(image.astype("float32").transpose(2, 0, 1).copy())
        inputs.append({"image": tensor, "height": image.shape[0], "width": image.shape[1]})
    return inputs


def _with_trained_norms(model):
    """``model`` with random FrozenBN statistics and affine terms, so that folding them matters."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, FrozenBatchNorm2d):
            n = module.weight.numel()
            module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
    return model


@pytest.mark.parametrize("depth", [18, 50])
def test_plain_copies_compute_what_detectron2_stages_compute(depth):
    set_seed(0)
    model = _with_trained_norms(build_model(tiny_cfg(depth)).eval())
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        for stage in [model.backbone.stem] + list(model.backbone.stages):
            expected = stage(x)
            found = plain_copy(stage)(x)
            assert torch.allclose(found, expected, rtol=1e-4, atol=1e-4), type(stage).__name__
            x = expected
        pooled = torch.randn(3, model.roi_heads.res5[0].in_channels, 14, 14)
        res5 = model.roi_heads.res5
        assert torch.allclose(plain_copy(res5)(pooled), res5(pooled), rtol=1e-4, atol=1e-4)
        rpn_conv = model.proposal_generator.rpn_head.conv  # ReLU inside, no norm
        assert torch.allclose(plain_copy(rpn_conv)(x), rpn_conv(x), rtol=1e-4, atol=1e-4)


def _relative_error(found, expected):
    return float((found - expected).norm() / expected.norm())


def test_int8_runs_its_first_images_in_fp32_then_int8_stages_close_to_fp32():
    set_seed(0)
    cfg = tiny_cfg(18, **{"TEST.DETECTIONS_PER_IMAGE": 20})
    plain = _with_trained_norms(build_model(cfg).eval())
    cfg.defrost()
    cfg.TEST.PERSON_SEARCH.PRECISION = "int8"
    cfg.TEST.PERSON_SEARCH.INT8_CALIBRATION_IMAGES = 2
    int8 = prepare_for_inference(copy.deepcopy(plain), cfg)
    stages = [m for m in int8.modules() if isinstance(m, Int8Module)]
    assert len(stages) == 1 + 3 + 1 + 1  # stem, res2-res4, the RPN head's conv, res5
    frames = _frames(4)
    empty = torch.zeros(0, plain.roi_heads.res5[0].in_channels, 14, 14)  # a frame without ROIs
    with torch.no_grad():
        assert int8.roi_heads.res5(empty).shape == plain.roi_heads.res5(empty).shape
        for frame in frames[:2]:  # calibration: the fp32 computation, BatchNorm folded
            assert all(stage.quantized is None for stage in stages)
            expected, found = plain([frame])[0]["instances"], int8([frame])[0]["instances"]
            assert len(found) == len(expected) > 0
            assert torch.allclose(found.scores, expected.scores, atol=1e-4)
            assert torch.allclose(found.reid_feats, expected.reid_feats, atol=1e-3)
        assert all(stage.quantized is not None for stage in stages)
        image = int8.preprocess_image(frames[2:3]).tensor
        expected, found = plain.backbone(image)["res4"], int8.backbone(image)["res4"]
        assert found.dtype == torch.float32 and found.shape == expected.shape
        assert 0 < _relative_error(found, expected) < 0.1  # int8, not fp32, and close to it
        pooled = torch.randn(5, plain.roi_heads.res5[0].in_channels, 14, 14).relu()
        error = _relative_error(int8.roi_heads.res5(pooled), plain.roi_heads.res5(pooled))
        assert 0 < error < 0.1
        assert len(int8(frames[2:])[0]["instances"]) > 0
        assert int8.roi_heads.res5(empty).shape == plain.roi_heads.res5(empty).shape


def test_int8_is_refused_off_a_cpu_or_without_the_x86_engine(monkeypatch):
    assert resolve_precision("int8", "cpu") == "int8"
    with pytest.raises(ValueError, match="PRECISION='int8': int8 runs on a CPU, not on cuda"):
        resolve_precision("int8", "cuda")
    arm_only = types.SimpleNamespace(supported_engines=["qnnpack"])
    monkeypatch.setattr(torch.backends, "quantized", arm_only)
    with pytest.raises(ValueError, match="no x86 quantized engine"):
        resolve_precision("int8", "cpu")


def test_a_model_asked_for_int8_but_not_quantized_says_how_to_prepare_it():
    cfg = tiny_cfg(18, **{"TEST.PERSON_SEARCH.PRECISION": "int8"})
    model = build_model(cfg).eval()
    with pytest.raises(ValueError, match="prepare_for_inference"), torch.no_grad():
        model(_frames(1))


def test_int8_calibration_needs_an_image():
    cfg = tiny_cfg(18, **{"TEST.PERSON_SEARCH.PRECISION": "int8"})
    cfg.defrost()
    cfg.TEST.PERSON_SEARCH.INT8_CALIBRATION_IMAGES = 0
    with pytest.raises(ValueError, match="INT8_CALIBRATION_IMAGES=0: expected >= 1"):
        prepare_for_inference(build_model(cfg).eval(), cfg)
