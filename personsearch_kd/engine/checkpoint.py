# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
A checkpointer whose output can always be resumed from: files appear whole or not at all, and a
diverged model is never saved.
"""

import contextlib
import os
from typing import List

import torch
from torch import nn

from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["SafeCheckpointer", "non_finite_tensors"]


def non_finite_tensors(model: nn.Module) -> List[str]:
    """Names of the floating-point parameters and buffers of ``model`` holding a NaN or inf."""
    return [
        name
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]


class _AtomicWrites:
    """
    A PathManager whose files opened for writing go to a temporary name in the same folder and
    are renamed over the target when closed without error: a process killed at any instant
    leaves either the old file or the new one, never a truncated one. Reads pass through.
    """

    def __init__(self, path_manager):
        self._path_manager = path_manager

    def __getattr__(self, name):
        return getattr(self._path_manager, name)

    @contextlib.contextmanager
    def open(self, path: str, mode: str = "r", **kwargs):
        if not any(flag in mode for flag in "wax+"):
            with self._path_manager.open(path, mode, **kwargs) as f:
                yield f
            return
        path = self._path_manager.get_local_path(path)
        temporary = f"{path}.tmp{os.getpid()}"
        try:
            with open(temporary, mode, **kwargs) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, path)  # atomic on POSIX and Windows
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)


class SafeCheckpointer(DetectionCheckpointer):
    """
    :class:`DetectionCheckpointer` for training runs that must never lose their state:

    - each checkpoint and ``last_checkpoint`` are written atomically (temporary file, then
      rename), so ``last_checkpoint`` always names a complete checkpoint;
    - :meth:`save` refuses a model with non-finite parameters or buffers (a diverged run) and
      raises ``FloatingPointError`` naming the iteration, so the last good checkpoint stays the
      one a resumed run starts from. Every process checks, so all stop together under DDP.
    """

    def __init__(self, model, save_dir="", **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.path_manager = _AtomicWrites(self.path_manager)

    def save(self, name: str, **kwargs) -> None:
        bad = non_finite_tensors(self.model)
        if bad:
            iteration = kwargs.get("iteration", "?")
            raise FloatingPointError(
                f"iteration {iteration}: training diverged, {len(bad)} parameters or buffers "
                f"hold NaN or inf (e.g. {', '.join(bad[:3])}); checkpoint {name!r} was not "
                f"written, so {os.path.join(self.save_dir, 'last_checkpoint')} still names the "
                "last finite one. Resume from it with a lower SOLVER.BASE_LR or with "
                "SOLVER.CLIP_GRADIENTS enabled."
            )
        super().save(name, **kwargs)
