# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
The re-ID head: ROI feature maps -> L2-normalised identity embeddings (and, for methods that need
them, identity logits). Registered in :data:`REID_HEAD_REGISTRY`, chosen by MODEL.REID.HEAD_NAME.
"""

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.utils.registry import Registry

__all__ = ["REID_HEAD_REGISTRY", "ReIDOutputs", "EmbeddingHead", "build_reid_head"]

REID_HEAD_REGISTRY = Registry("REID_HEAD")
REID_HEAD_REGISTRY.__doc__ = """
Re-ID heads: ``head(feature_map (R, C, h, w)) -> ReIDOutputs``. Built with ``(cfg, in_channels)``.
"""


@dataclass
class ReIDOutputs:
    """
    What a re-ID head computed for R boxes.

    Attributes:
        embeddings: (R, D) L2-normalised identity embeddings (the search feature).
        feature_map: (R, C, h, w) the ROI feature map they were computed from.
        logits: (R, P) identity logits over the P labeled training identities, or None when the
            head has no classifier (no loss needs one).
    """

    embeddings: torch.Tensor
    feature_map: torch.Tensor
    logits: Optional[torch.Tensor] = None


@REID_HEAD_REGISTRY.register()
class EmbeddingHead(nn.Module):
    """
    The identity branch of OIM: global average pooling -> Linear -> BatchNorm -> L2 norm. With
    ``num_classes`` > 0, a bias-free linear classifier on the BatchNorm output (the "BNNeck" of
    re-ID baselines) gives identity logits for a cross-entropy loss.
    """

    @configurable
    def __init__(self, *, in_channels: int, embed_dim: int, num_classes: int = 0):
        """
        Args:
            in_channels: C of the ROI feature maps.
            embed_dim: D of the embedding.
            num_classes: P, number of labeled identities for the logits; 0 = no classifier.
        """
        super().__init__()
        self.proj = nn.Linear(in_channels, embed_dim)
        self.norm = nn.BatchNorm1d(embed_dim)
        nn.init.normal_(self.proj.weight, std=0.01)
        nn.init.zeros_(self.proj.bias)
        self.classifier = None
        if num_classes > 0:
            self.classifier = nn.Linear(embed_dim, num_classes, bias=False)
            nn.init.normal_(self.classifier.weight, std=0.001)

    @classmethod
    def from_config(cls, cfg, in_channels: int):
        # Only losses that read logits pay for a classifier.
        with_logits = "IdentityCrossEntropyLoss" in cfg.MODEL.REID.LOSSES
        return {
            "in_channels": in_channels,
            "embed_dim": cfg.MODEL.OIM.EMBED_DIM,
            "num_classes": cfg.MODEL.OIM.NUM_IDS if with_logits else 0,
        }

    def forward(self, feature_map: torch.Tensor) -> ReIDOutputs:
        """
        Args:
            feature_map: (R, C, h, w) ROI features (res5 output for C4).
        Returns:
            ReIDOutputs with embeddings (R, D), the input map, logits (R, P) or None.
        """
        normed = self.norm(self.proj(feature_map.mean(dim=[2, 3])))
        logits = None if self.classifier is None else self.classifier(normed)
        # fp32 even under autocast: the search compares, and the OIM memory stores, these.
        return ReIDOutputs(F.normalize(normed.float(), dim=1), feature_map, logits)


def build_reid_head(cfg, in_channels: int) -> nn.Module:
    """The re-ID head named by MODEL.REID.HEAD_NAME, for ROI maps of ``in_channels`` channels."""
    return REID_HEAD_REGISTRY.get(cfg.MODEL.REID.HEAD_NAME)(cfg, in_channels)
