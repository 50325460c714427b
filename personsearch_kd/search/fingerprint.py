# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""The identity of the model that embeds a gallery and its queries (detectron2 config glue)."""

import hashlib
import os
from typing import Dict

from ..config import student_config

__all__ = ["model_fingerprint"]

# Test-time detection settings: they change which boxes a gallery has, not how a box is embedded
# (MODEL.RPN.NMS_THRESH also sets training's, which is over once a model is indexed).
_DETECTION_ONLY_KEYS = (
    "MODEL.WEIGHTS",
    "MODEL.DEVICE",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    "MODEL.ROI_HEADS.NMS_THRESH_TEST",
    "MODEL.RPN.PRE_NMS_TOPK_TEST",
    "MODEL.RPN.POST_NMS_TOPK_TEST",
    "MODEL.RPN.NMS_THRESH",
    "MODEL.RPN.MIN_OBJECTNESS_TEST",
)


def _file_sha1(path: str) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_fingerprint(cfg) -> Dict[str, str]:
    """
    ``{"config_sha1", "weights_sha1"}``: digests of what decides a box's embedding, the student's
    MODEL config (without its weights path, device and test-time detection settings) with the
    test input (INPUT.FORMAT, MIN/MAX_SIZE_TEST), and of the MODEL.WEIGHTS file's bytes (its
    path for a URL, which detectron2 fetches). The same checkpoint copied elsewhere matches.
    """
    weights = cfg.MODEL.WEIGHTS
    cfg = student_config(cfg)
    cfg.defrost()
    for key in _DETECTION_ONLY_KEYS:
        *parents, name = key.split(".")
        node = cfg
        for part in parents:
            node = node[part]
        node[name] = None
    embedding = f"{cfg.MODEL.dump()}{cfg.INPUT.FORMAT} {cfg.INPUT.MIN_SIZE_TEST} "
    embedding += str(cfg.INPUT.MAX_SIZE_TEST)
    if os.path.isfile(weights):
        weights_sha1 = _file_sha1(weights)
    elif "://" in weights:
        weights_sha1 = hashlib.sha1(weights.encode()).hexdigest()
    else:
        raise FileNotFoundError(f"MODEL.WEIGHTS={weights!r}: expected the model's checkpoint")
    return {
        "config_sha1": hashlib.sha1(embedding.encode()).hexdigest(),
        "weights_sha1": weights_sha1,
    }
