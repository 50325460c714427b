# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
from .visualization import draw_ranked_matches

__all__ = ["draw_ranked_matches"]
