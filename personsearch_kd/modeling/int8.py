# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
int8 inference on a CPU (TEST.PERSON_SEARCH.PRECISION "int8"): the backbone's stem and stages,
the RPN head's 3 x 3 convolution and res5 run as int8 convolutions (PyTorch's FX quantization
for the "x86" engine: fbgemm and oneDNN, VNNI where the CPU has it), per-channel weights,
activations calibrated on the first images the model runs. Each is first copied into a plain
traceable module with its BatchNorm folded into the convolutions (detectron2's Conv2d holds the
norm, and its forward has a branch FX cannot trace); the rest of the model (the RPN's 1 x 1
outputs, ROI pooling, box predictor, re-ID head) stays fp32.

PyTorch marks its FX quantization and quantized tensors deprecated in favour of torchao's PT2E
quantization, which runs through torch.compile (tried for the float model: a minute of
compiling, and wrong outputs with ATen forced to AVX2; docs/search.md). Their deprecation
warnings are silenced here; a PyTorch without them refuses "int8" (modeling/precision.py).
"""

import contextlib
import warnings
from typing import List, Optional

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock

__all__ = ["Int8Module", "quantize_int8", "plain_copy"]


def _folded(conv) -> nn.Conv2d:
    """A detectron2 Conv2d with its (frozen or eval-mode) BatchNorm, if any, folded in, as
    nn.Conv2d (its activation is the caller's)."""
    norm = conv.norm
    if norm is not None and not isinstance(norm, (FrozenBatchNorm2d, nn.BatchNorm2d)):
        raise ValueError(
            f"TEST.PERSON_SEARCH.PRECISION='int8': a convolution with norm {type(norm).__name__}:"
            " expected MODEL.RESNETS.NORM FrozenBN or BN"
        )
    folded = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
    )
    weight = conv.weight
    bias = conv.bias if conv.bias is not None else torch.zeros_like(weight[:, 0, 0, 0])
    if norm is not None:
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
        weight = weight * scale.reshape(-1, 1, 1, 1)
        bias = (bias - norm.running_mean) * scale + norm.bias
    with torch.no_grad():
        folded.weight.copy_(weight)
        folded.bias.copy_(bias)
    return folded.to(conv.weight.device)


def _without_activation(conv):
    """``conv``, which must apply no activation of its own (ResNet blocks apply theirs)."""
    if conv.activation is not None:
        raise ValueError(
            f"TEST.PERSON_SEARCH.PRECISION='int8': a block convolution with activation "
            f"{conv.activation}: expected detectron2's ResNet blocks"
        )
    return conv


class _PlainStem(nn.Module):
    """detectron2's BasicStem: conv, ReLU, 3 x 3 max pooling of stride 2."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return F.max_pool2d(torch.relu(self.conv(x)), kernel_size=3, stride=2, padding=1)


class _PlainBlock(nn.Module):
    """A residual block (BasicBlock: 2 convolutions, BottleneckBlock: 3), ReLU between them
    and after the sum with the shortcut."""

    def __init__(self, convs: List[nn.Conv2d], shortcut: Optional[nn.Conv2d]):
        super().__init__()
        self.convs = nn.ModuleList(convs)
        self.shortcut = shortcut

    def forward(self, x):
        out = x
        for i, conv in enumerate(self.convs):
            out = conv(out)
            if i < len(self.convs) - 1:
                out = torch.relu(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return torch.relu(out + shortcut)


def plain_copy(module: nn.Module) -> nn.Module:
    """
    A traceable fp32 copy of a detectron2 BasicStem, BasicBlock, BottleneckBlock, Conv2d (with
    ReLU or no activation) or a Sequential of them, BatchNorm folded in: the same outputs up to
    rounding.
    """
    if isinstance(module, nn.Sequential):
        return nn.Sequential(*[plain_copy(block) for block in module])
    if isinstance(module, BasicStem):
        return _PlainStem(_folded(_without_activation(module.conv1)))
    if isinstance(module, (BasicBlock, BottleneckBlock)):
        convs = [module.conv1, module.conv2] + ([module.conv3] if hasattr(module, "conv3") else [])
        convs = [_folded(_without_activation(conv)) for conv in convs]
        shortcut = module.shortcut
        return _PlainBlock(convs, None if shortcut is None else _folded(shortcut))
    if isinstance(module, Conv2d) and isinstance(module.activation, (nn.ReLU, type(None))):
        activation = [] if module.activation is None else [nn.ReLU()]
        return nn.Sequential(_folded(module), *activation)  # the RPN head's convolution
    raise ValueError(
        f"TEST.PERSON_SEARCH.PRECISION='int8': cannot quantize a {type(module).__name__}: expected "
        "detectron2's BasicStem, BasicBlock, BottleneckBlock (a ResNet backbone and res5) or a "
        "Conv2d with ReLU or no activation (the RPN head's)"
    )


@contextlib.contextmanager
def _quiet():
    """Silences the deprecation warnings of torch.ao's FX quantization."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.ao.quantization is deprecated")
        warnings.filterwarnings("ignore", message="torch.quantize_per_tensor, torch.quantize_per")
        warnings.filterwarnings("ignore", message="Please use quant_min and quant_max")
        yield


class Int8Module(nn.Module):
    """
    One stage of the model in int8: its fp32 plain copy (:func:`plain_copy`) observing its
    activations until :meth:`convert`, then the int8 conversion. Input and output are fp32, e.g.
    res5's (R, 256, 14, 14) ROI features in and (R, 512, 7, 7) out for R-18; R may be 0.
    """

    def __init__(self, module: nn.Module, example: torch.Tensor):
        """
        Args:
            module: a stage of the model (what :func:`plain_copy` copies); left unchanged.
            example: an input of the stage's channels, for FX's tracing.
        """
        super().__init__()
        # Imported here: PyTorch may drop this deprecated API (precision.py refuses int8 then).
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import prepare_fx

        with _quiet():
            self.observed = prepare_fx(
                plain_copy(module).eval(), get_default_qconfig_mapping("x86"), (example,)
            )
        self.quantized = None

    def convert(self) -> None:
        """Replace the observing copy by its int8 conversion (observers' ranges frozen)."""
        from torch.ao.quantization.quantize_fx import convert_fx

        with _quiet():
            self.quantized = convert_fx(self.observed)
        self.observed = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantized is None:
            return self.observed(x)
        with _quiet():
            return self.quantized(x)


class _Calibration:
    """Counts the images a model runs; converts its Int8Modules once ``images`` have run."""

    def __init__(self, modules: List[Int8Module], images: int):
        self.modules, self.images, self.seen = modules, images, 0

    def __call__(self, model, args, outputs):
        if self.modules[0].quantized is not None:
            return
        self.seen += len(args[0])
        if self.seen >= self.images:
            for module in self.modules:
                module.convert()


def quantize_int8(model: nn.Module, calibration_images: int) -> nn.Module:
    """
    ``model`` (a PersonSearchRCNN in eval mode on the CPU, in place) with its ResNet backbone's
    stem and stages, its RPN head's convolution and its ROI heads' res5 (and the re-ID head's own
    res5) as :class:`Int8Module`: its first ``calibration_images`` images run in fp32 and set the
    activation ranges, the rest in int8. Returns ``model``.
    """
    if calibration_images < 1:
        raise ValueError(
            f"TEST.PERSON_SEARCH.INT8_CALIBRATION_IMAGES={calibration_images}: expected >= 1"
        )
    backbone = model.backbone
    if not hasattr(backbone, "stages"):
        raise ValueError(
            f"TEST.PERSON_SEARCH.PRECISION='int8': backbone {type(backbone).__name__}: "
            "expected detectron2's ResNet (MODEL.BACKBONE.NAME build_resnet_backbone)"
        )
    stem_channels = backbone.stem.conv1.in_channels
    modules = [Int8Module(backbone.stem, torch.zeros(1, stem_channels, 64, 64))]
    backbone.stem = modules[0]
    for i, (name, stage) in enumerate(zip(backbone.stage_names, backbone.stages)):
        example = torch.zeros(1, stage[0].in_channels, 16, 16)
        modules.append(Int8Module(stage, example))
        backbone.stages[i] = modules[-1]
        setattr(backbone, name, modules[-1])
    rpn_head = getattr(model.proposal_generator, "rpn_head", None)
    if isinstance(getattr(rpn_head, "conv", None), Conv2d):  # StandardRPNHead with one conv
        conv = rpn_head.conv
        modules.append(Int8Module(conv, torch.zeros(1, conv.in_channels, 16, 16)))
        rpn_head.conv = modules[-1]
    heads = model.roi_heads
    for name in ("res5", "reid_res5"):
        res5 = getattr(heads, name, None)
        if res5 is not None:
            modules.append(Int8Module(res5, torch.zeros(1, res5[0].in_channels, 14, 14)))
            setattr(heads, name, modules[-1])
    model.int8_calibration = _Calibration(modules, calibration_images)
    model.register_forward_hook(model.int8_calibration)
    return model
