# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
import resource
import sys

import torch

from detectron2.engine import HookBase

__all__ = ["PeakMemory", "peak_memory_gb"]


def peak_memory_gb(device: str = "cpu") -> float:
    """
    Peak memory of this process so far, in GB: the CUDA caching allocator's peak on a GPU, the
    resident set size's peak (main process only, not data-loader workers) on CPU.
    """
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 1024**3
    # ru_maxrss is in KiB on Linux and in bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1024**3


class PeakMemory(HookBase):
    """
    Puts ``peak_mem_gb`` (:func:`peak_memory_gb`) into the event storage after every step, so it
    reaches metrics.json and tensorboard on CPU too (detectron2's printer logs ``max_mem`` only
    for CUDA).
    """

    def __init__(self, device: str):
        self._device = device

    def after_step(self):
        self.trainer.storage.put_scalar(
            "peak_mem_gb", peak_memory_gb(self._device), smoothing_hint=False
        )
