# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
from .checkpoint import SafeCheckpointer, non_finite_tensors
from .hooks import PeakMemory, peak_memory_gb
from .launcher import add_launcher_arguments, launch_from_args
from .predictor import PersonSearchPredictor, build_trained_student

__all__ = [
    "PeakMemory",
    "PersonSearchPredictor",
    "SafeCheckpointer",
    "add_launcher_arguments",
    "build_trained_student",
    "launch_from_args",
    "non_finite_tensors",
    "peak_memory_gb",
]
