# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
from .checkpoint import SafeCheckpointer, non_finite_tensors
from .hooks import PeakMemory, peak_memory_gb
from .launcher import add_launcher_arguments, launch_from_args
from .predictor import PersonSearchPredictor
from .trained_model import build_trained_student, load_trained_student, prepare_for_inference
from .trainer import Trainer, setup_from_args, train_or_evaluate

__all__ = [
    "PeakMemory",
    "PersonSearchPredictor",
    "SafeCheckpointer",
    "Trainer",
    "add_launcher_arguments",
    "build_trained_student",
    "launch_from_args",
    "load_trained_student",
    "non_finite_tensors",
    "peak_memory_gb",
    "prepare_for_inference",
    "setup_from_args",
    "train_or_evaluate",
]
