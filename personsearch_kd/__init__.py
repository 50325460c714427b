# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
personsearch_kd: end-to-end person search (OIM) with knowledge distillation, as a detectron2
extension. ``import personsearch_kd`` registers its models; the pure torch/numpy cores
(``personsearch_kd.layers``) also import without detectron2.
"""

from importlib.util import find_spec

__version__ = "0.1.0"

if find_spec("detectron2") is not None:
    from .config import add_personsearch_config, add_teacher, load_config, student_config
    from .data import PersonSearchDatasetMapper
    from .distillation import Distiller
    from .modeling import EmbeddingHead, OIMROIHeads, PersonSearchRCNN
else:

    def __getattr__(name):
        raise ImportError(
            f"personsearch_kd.{name} needs detectron2, which is not importable: install it from "
            "https://github.com/facebookresearch/detectron2 (see README, Install)"
        )
