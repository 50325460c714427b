# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Losses of the re-ID head, registered in :data:`REID_LOSS_REGISTRY` and chosen by
MODEL.REID.LOSSES: OIM (lookup table + queue), identity cross-entropy, batch-hard triplet.
Each is called as ``loss(outputs, pids) -> {key: weighted loss}`` on the foreground boxes.
"""

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.utils import comm
from detectron2.utils.registry import Registry

from ..layers.oim_loss import OIMLoss
from ..layers.triplet_loss import batch_hard_triplet_loss
from .reid_head import ReIDOutputs

__all__ = [
    "OIM_SYNC_LABEL",
    "REID_LOSS_REGISTRY",
    "OIMReIDLoss",
    "IdentityCrossEntropyLoss",
    "TripletReIDLoss",
    "build_reid_losses",
]

OIM_SYNC_LABEL = "oim_memory_sync"

REID_LOSS_REGISTRY = Registry("REID_LOSS")
REID_LOSS_REGISTRY.__doc__ = """
Re-ID losses: ``loss(outputs: ReIDOutputs | None, pids (R,)) -> {KEY: Tensor}``, built with
``(cfg)``; the class attribute ``KEY`` ("loss_<name>") names the loss, and the ROI head holds the
module as ``<name>_loss``. ``outputs`` is None on a process whose batch has too few foreground
boxes to embed; the loss must still return its key (a zero) and take part in any collective.
"""


def _gather_from_all_ranks(feats: torch.Tensor, pids: torch.Tensor):
    """
    Concatenate (feats, pids) of every process, in rank order, so that each rank applies the same
    OIM memory update (detectron2's DDP does not broadcast buffers).
    """
    if comm.get_world_size() == 1:
        return feats, pids
    # Through CPU: comm.all_gather pickles over a gloo group whatever the training backend. The
    # label shows the sync in profiler traces; dev/benchmark_train_step.py --num-gpus reads it.
    with torch.profiler.record_function(OIM_SYNC_LABEL):
        gathered = comm.all_gather((feats.cpu(), pids.cpu()))
    return (
        torch.cat([f for f, _ in gathered]).to(feats.device),
        torch.cat([p for _, p in gathered]).to(pids.device),
    )


@REID_LOSS_REGISTRY.register()
class OIMReIDLoss(OIMLoss):
    """
    :class:`OIMLoss` as a re-ID loss (key ``loss_oim``), with the memory update synchronised over
    processes: every process gathers every iteration, also with nothing to add, because a process
    that skipped the gather would leave the others waiting forever.
    """

    KEY = "loss_oim"

    @configurable
    def __init__(self, *, weight: float, **kwargs):
        """
        Args:
            weight: lambda_oim.
            kwargs: arguments of :class:`OIMLoss`.
        """
        super().__init__(**kwargs)
        self.weight = weight

    @classmethod
    def from_config(cls, cfg):
        oim = cfg.MODEL.OIM
        return {
            "feat_dim": oim.EMBED_DIM,
            "num_ids": oim.NUM_IDS,
            "queue_size": oim.QUEUE_SIZE,
            "scalar": oim.SCALAR,
            "momentum": oim.MOMENTUM,
            "freeze_lut": oim.FREEZE_LUT,
            "weight": oim.LOSS_WEIGHT,
        }

    def forward(
        self, outputs: Optional[ReIDOutputs], pids: torch.Tensor
    ) -> Dict[str, torch.Tensor]:
        if outputs is None:
            feats = self.lut.new_zeros((0, self.lut.shape[1]))
            loss, pids = self.lut.new_zeros(()), pids[:0]
        else:
            feats = outputs.embeddings
            loss = self.weight * super().forward(feats, pids)
        self.update_memory(*_gather_from_all_ranks(feats.detach(), pids))
        return {self.KEY: loss}


@REID_LOSS_REGISTRY.register()
class IdentityCrossEntropyLoss(nn.Module):
    """Cross-entropy of the head's identity logits on labeled boxes (key ``loss_id_ce``)."""

    KEY = "loss_id_ce"

    @configurable
    def __init__(self, *, weight: float, label_smoothing: float):
        super().__init__()
        self.weight = weight
        self.label_smoothing = label_smoothing

    @classmethod
    def from_config(cls, cfg):
        ce = cfg.MODEL.REID.ID_CE
        return {"weight": ce.WEIGHT, "label_smoothing": ce.LABEL_SMOOTHING}

    def forward(
        self, outputs: Optional[ReIDOutputs], pids: torch.Tensor
    ) -> Dict[str, torch.Tensor]:
        if outputs is None:
            return {self.KEY: pids.new_zeros((), dtype=torch.float32)}
        if outputs.logits is None:
            raise ValueError("IdentityCrossEntropyLoss: the re-ID head gives no identity logits")
        labeled = pids >= 0
        if not labeled.any():
            return {self.KEY: outputs.logits.sum() * 0.0}
        loss = F.cross_entropy(
            outputs.logits[labeled], pids[labeled], label_smoothing=self.label_smoothing
        )
        return {self.KEY: self.weight * loss}


@REID_LOSS_REGISTRY.register()
class TripletReIDLoss(nn.Module):
    """Batch-hard triplet loss on the labeled boxes' embeddings (key ``loss_triplet``)."""

    KEY = "loss_triplet"

    @configurable
    def __init__(self, *, weight: float, margin: float):
        super().__init__()
        self.weight = weight
        self.margin = margin

    @classmethod
    def from_config(cls, cfg):
        triplet = cfg.MODEL.REID.TRIPLET
        return {"weight": triplet.WEIGHT, "margin": triplet.MARGIN}

    def forward(
        self, outputs: Optional[ReIDOutputs], pids: torch.Tensor
    ) -> Dict[str, torch.Tensor]:
        if outputs is None:
            return {self.KEY: pids.new_zeros((), dtype=torch.float32)}
        labeled = pids >= 0
        loss = batch_hard_triplet_loss(outputs.embeddings[labeled], pids[labeled], self.margin)
        return {self.KEY: self.weight * loss}


def build_reid_losses(cfg) -> List[nn.Module]:
    """The losses named in MODEL.REID.LOSSES, in that order."""
    losses = []
    for name in cfg.MODEL.REID.LOSSES:
        if name not in REID_LOSS_REGISTRY:
            raise KeyError(
                f"MODEL.REID.LOSSES: {name!r} is not a registered re-ID loss; registered: "
                f"{sorted(k for k, _ in REID_LOSS_REGISTRY)}"
            )
        losses.append(REID_LOSS_REGISTRY.get(name)(cfg))
    return losses
