# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
import torch
from torch import nn

__all__ = ["call_with_statistics_unchanged"]


def call_with_statistics_unchanged(module: nn.Module, *args):
    """
    ``module(*args)`` in the module's own mode, its buffers replaced by copies for the call: a
    training-mode BatchNorm still normalises the batch with the batch's own statistics, but its
    running statistics (mean, variance, batch count) cannot move, whatever the call does.
    Parameters are the module's own, so gradients reach them as in a plain call.

    An extra training forward through layers that inference normalises with their running
    statistics (a distillation loss embedding ground-truth boxes through the box head's res5)
    would otherwise pull those statistics towards its own inputs.
    """
    copies = {name: buffer.clone() for name, buffer in module.named_buffers()}
    return torch.func.functional_call(module, copies, args)
