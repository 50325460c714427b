# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Optimizer, schedule and run settings of the lazy configs, for tools/lazyconfig_train_net.py:
the SOLVER, OUTPUT_DIR, SEED and TEST.EVAL_PERIOD keys of the yacs configs.
"""

from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from detectron2.solver.build import get_default_optimizer_params

from .builders import sgd


def sgd_optimizer(lr: float, weight_decay: float = 0.0005, clip_gradients=None):
    """
    detectron2's build_optimizer: SGD, momentum 0.9, no weight decay on norm layers;
    ``params.model`` is set to the model by the training script. ``clip_gradients``:
    dict(enabled=True, clip_type="norm", clip_value=10.0, norm_type=2.0) as SOLVER.CLIP_GRADIENTS.
    """
    return L(sgd)(
        params=L(get_default_optimizer_params)(
            base_lr="${..lr}", weight_decay_norm=0.0, bias_lr_factor=1.0
        ),
        lr=lr,
        momentum=0.9,
        weight_decay=weight_decay,
        nesterov=False,
        clip_gradients=dict(
            enabled=False,
            clip_type="value",
            clip_value=1.0,
            norm_type=2.0,
            **(clip_gradients or {}),
        ),
    )


def warmup_multistep(steps, max_iter: int, warmup_iters: int, gamma: float = 0.1):
    """
    WarmupMultiStepLR of detectron2's build_lr_scheduler: the LR times gamma at each of
    ``steps``, after a linear warmup from 0.001 over ``warmup_iters`` (all in iterations).
    """
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[gamma**k for k in range(len(steps) + 1)],
            milestones=list(steps),
            num_updates=max_iter,
        ),
        warmup_factor=0.001,
        warmup_length=min(warmup_iters / max_iter, 1.0),
        warmup_method="linear",
    )


def train_settings(output_dir: str, max_iter: int, checkpoint_period: int, eval_period: int):
    """``train`` of the lazy configs (detectron2's configs/common/train.py, on the CPU)."""
    return dict(
        output_dir=output_dir,
        # MODEL.WEIGHTS: a checkpoint loaded before training (QEEPS: the OIM model).
        init_checkpoint="",
        max_iter=max_iter,
        amp=dict(enabled=False),
        ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
        checkpointer=dict(period=checkpoint_period, max_to_keep=100),
        # Evaluation every eval_period iterations (0: none) and always at the end.
        eval_period=eval_period,
        log_period=20,
        device="cpu",
        # A negative seed draws one (SEED -1 of the yacs configs).
        seed=-1,
    )
