# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
from .hooks import PeakMemory, peak_memory_gb
from .predictor import PersonSearchPredictor

__all__ = ["PeakMemory", "PersonSearchPredictor", "peak_memory_gb"]
