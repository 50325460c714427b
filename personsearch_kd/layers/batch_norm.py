# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
from contextlib import contextmanager
from typing import Iterator

from torch import nn

__all__ = ["running_statistics_kept"]


@contextmanager
def running_statistics_kept(module: nn.Module) -> Iterator[None]:
    """
    Inside the block, the BatchNorm layers of ``module`` still normalise a training batch with
    its own statistics, but their running statistics (mean, variance, batch count) stay exactly
    as they were.

    An extra training forward through layers that inference normalises with their running
    statistics (a distillation loss embedding ground-truth boxes through the box head's res5)
    would otherwise pull those statistics towards its own inputs.
    """
    layers = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [layer.momentum for layer in layers]
    counts = [
        None if layer.num_batches_tracked is None else layer.num_batches_tracked.clone()
        for layer in layers
    ]
    for layer in layers:
        layer.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for layer, momentum, count in zip(layers, momenta, counts):
            layer.momentum = momentum
            if count is not None:
                layer.num_batches_tracked.copy_(count)
