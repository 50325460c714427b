# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
The inference precision (TEST.PERSON_SEARCH.PRECISION) a device computes natively. A reduced
precision pays only where the hardware has it: on an x86 CPU without AVX-512 BF16 or AMX, oneDNN
emulates bf16, and one 3 x 3 convolution ran ~250x slower than in fp32 (docs/search.md). So
"bf16" / "fp16" are refused where the device would emulate them, and "auto" takes the fastest
native one. "int8" (modeling/int8.py) runs on a CPU with PyTorch's x86 quantized engine.
"""

from typing import Tuple

import torch

__all__ = [
    "AUTOCAST_DTYPES",
    "PRECISIONS",
    "check_precision",
    "native_precisions",
    "resolve_precision",
]

# int8 is not autocast: quantized stages replace the float ones (modeling/int8.py).
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": None}

# What TEST.PERSON_SEARCH.PRECISION accepts: a precision, or "auto" (the device's fastest float).
PRECISIONS = tuple(AUTOCAST_DTYPES) + ("auto",)


def check_precision(precision: str) -> None:
    """A ValueError unless ``precision`` is one TEST.PERSON_SEARCH.PRECISION accepts."""
    if precision not in PRECISIONS:
        raise ValueError(
            f"TEST.PERSON_SEARCH.PRECISION={precision!r}: expected one of {sorted(PRECISIONS)}"
        )


def cpu_capability() -> str:
    """ATen's CPU capability ("AVX512", "AVX2", "DEFAULT", ...; ATEN_CPU_CAPABILITY lowers it)."""
    return torch.backends.cpu.get_cpu_capability()


def _cpu_has(feature: str) -> bool:
    """A torch.cpu feature probe (e.g. "avx512_bf16"); False where this PyTorch lacks it."""
    probe = getattr(torch.cpu, f"_is_{feature}_supported", None)
    return bool(probe()) if probe is not None else False


def native_precisions(device) -> Tuple[str, ...]:
    """
    The precisions ``device`` computes natively, fastest last: on CUDA fp16, and bf16 from
    Ampere on; on a CPU whose ATen capability is AVX-512, bf16 with AVX-512 BF16 or AMX and
    fp16 with AMX-FP16 (the capability is checked too, so that ATEN_CPU_CAPABILITY=avx2 takes
    an AVX-512 machine for the AVX2 one it then is).
    """
    device = torch.device(device)
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        return ("fp32", "fp16") + (("bf16",) if bf16 else ())
    if device.type != "cpu" or not cpu_capability().startswith("AVX512"):
        return ("fp32",)
    native = ["fp32"]
    if _cpu_has("amx_fp16"):
        native.append("fp16")
    if _cpu_has("avx512_bf16") or _cpu_has("amx_tile"):
        native.append("bf16")
    return tuple(native)


def _check_int8(device) -> str:
    """ "int8" where PyTorch's x86 quantized engine runs (a CPU), else a ValueError."""
    if device.type != "cpu":
        raise ValueError(
            f"TEST.PERSON_SEARCH.PRECISION='int8': int8 runs on a CPU, not on {device}; use "
            "auto (bf16 or fp16 on a GPU)"
        )
    try:  # PyTorch marks it deprecated (modeling/int8.py)
        import torch.ao.quantization.quantize_fx  # noqa: F401
    except ImportError:
        raise ValueError(
            f"TEST.PERSON_SEARCH.PRECISION='int8': PyTorch {torch.__version__} lacks "
            "torch.ao.quantization.quantize_fx; use fp32 or auto"
        ) from None
    if "x86" not in torch.backends.quantized.supported_engines:
        raise ValueError(
            "TEST.PERSON_SEARCH.PRECISION='int8': this PyTorch has no x86 quantized engine "
            f"(torch.backends.quantized.supported_engines: "
            f"{torch.backends.quantized.supported_engines}); use fp32 or auto"
        )
    return "int8"


def resolve_precision(precision: str, device) -> str:
    """
    TEST.PERSON_SEARCH.PRECISION for ``device``: "auto" becomes the fastest native float
    precision (bf16 before fp16, else fp32); "bf16" / "fp16" where ``device`` would emulate them,
    and "int8" off a CPU, are a ValueError naming why.
    """
    check_precision(precision)
    if precision == "int8":
        return _check_int8(torch.device(device))
    native = native_precisions(device)
    if precision == "auto":
        return "bf16" if "bf16" in native else native[-1]
    if precision in native:
        return precision
    device = torch.device(device)
    if device.type == "cpu":
        hardware = (
            f"this CPU's capability is {cpu_capability()} "
            "(torch.backends.cpu.get_cpu_capability()); native bf16 needs AVX-512 BF16 or AMX, "
            "fp16 AMX-FP16"
        )
    else:
        hardware = f"{device} ({torch.cuda.get_device_name(device)}) lacks it"
    raise ValueError(
        f"TEST.PERSON_SEARCH.PRECISION={precision!r}: {device.type} would emulate {precision}, "
        f"much slower than fp32: {hardware}; use fp32, or auto (the fastest native precision)"
    )
