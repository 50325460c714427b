# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
The one way every tool gets a trained model: the student of a config, built and loaded. Keeping
it in one place keeps one answer to "which parts of a distillation config does inference need".
"""

import torch

from detectron2.checkpoint import DetectionCheckpointer
from ..config import load_config
from ..distillation import build_student
from ..modeling.int8 import quantize_int8
from ..modeling.precision import resolve_precision

__all__ = ["build_trained_student", "load_trained_student", "prepare_for_inference"]


def build_trained_student(cfg, weights: str = "", resume: bool = False) -> torch.nn.Module:
    """
    The student of ``cfg`` alone (:func:`build_student`: no teacher is built, so teacher files
    may be gone), in eval mode, with ``weights`` loaded (a detectron2 checkpoint; nothing is
    loaded when empty), prepared as TEST.PERSON_SEARCH asks (:func:`prepare_for_inference`).

    Args:
        resume: load the checkpoint that ``cfg.OUTPUT_DIR/last_checkpoint`` names instead, when
            there is one (``train_net.py --eval-only --resume``).
    """
    model = build_student(cfg).eval()
    checkpointer = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
    if resume:
        checkpointer.resume_or_load(weights, resume=True)
    elif weights:
        checkpointer.load(weights)
    return prepare_for_inference(model, cfg)


def prepare_for_inference(model: torch.nn.Module, cfg) -> torch.nn.Module:
    """
    ``model`` (in place) in the memory format of TEST.PERSON_SEARCH.CHANNELS_LAST (its parameters
    and state dict keep their names) and, for TEST.PERSON_SEARCH.PRECISION "int8", with its
    backbone, RPN conv and res5 quantized (:func:`quantize_int8`; calibrated on the first images
    it runs).
    For inference only: a trained model's checkpoint is loaded before, and training never sees it.
    """
    if cfg.TEST.PERSON_SEARCH.CHANNELS_LAST:
        model.to(memory_format=torch.channels_last)
    if resolve_precision(cfg.TEST.PERSON_SEARCH.PRECISION, cfg.MODEL.DEVICE) == "int8":
        quantize_int8(model, cfg.TEST.PERSON_SEARCH.INT8_CALIBRATION_IMAGES)
    return model


def load_trained_student(config_file: str, weights: str, opts=()):
    """``(cfg, model)``: the config of ``config_file`` with KEY VALUE ``opts``, and its
    :func:`build_trained_student` with ``weights``."""
    cfg = load_config(config_file, opts)
    return cfg, build_trained_student(cfg, weights)
