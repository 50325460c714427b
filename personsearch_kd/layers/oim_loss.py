# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Online Instance Matching (OIM) loss of Xiao et al., "Joint Detection and Identification Feature
Learning for Person Search", CVPR 2017, with the semantics of the PyTorch-era implementations
(SeqNet, NAE): scalar 30, momentum 0.5 with re-normalised lookup-table rows, a full-width circular
queue of unlabeled features used only as negatives.

Pure torch: no detectron2 import, so the loss can be reused and tested on its own.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["OIMLoss", "UNLABELED_PID"]

# Person id of a box that shows a person whose identity is not annotated.
UNLABELED_PID = -1


class OIMLoss(nn.Module):
    """
    OIM loss over a lookup table (LUT) of labeled identities and a circular queue of unlabeled
    persons. Both memories are registered buffers, so they live in checkpoints.

    Computing the loss (:meth:`forward`) and updating the memories (:meth:`update_memory`) are
    two calls, so that a caller can gather the features of every process in between (under DDP
    every rank must apply the same update to keep identical memories).
    """

    def __init__(
        self,
        feat_dim: int,
        num_ids: int,
        queue_size: int,
        scalar: float = 30.0,
        momentum: float = 0.5,
        freeze_lut: bool = False,
        init_lut: Optional[torch.Tensor] = None,
    ):
        """
        Args:
            feat_dim: D, dimension of the (L2-normalised) ID features.
            num_ids: P, number of labeled identities, i.e. LUT rows; labels are 0..P-1.
            queue_size: Q, number of unlabeled features kept in the circular queue (0 disables it).
            scalar: inverse temperature multiplying the cosine similarities before the softmax.
            momentum: LUT update ``v <- m * v + (1 - m) * x`` followed by re-normalisation.
            freeze_lut: never update the LUT (KD_reid: a teacher's table is copied and kept fixed).
            init_lut: optional (P, D) initial LUT; zeros otherwise.
        """
        super().__init__()
        if num_ids <= 0 or feat_dim <= 0 or queue_size < 0:
            raise ValueError(
                f"OIMLoss: need num_ids > 0, feat_dim > 0, queue_size >= 0; "
                f"got num_ids={num_ids}, feat_dim={feat_dim}, queue_size={queue_size}"
            )
        self.num_ids = num_ids
        self.scalar = scalar
        self.momentum = momentum
        self.freeze_lut = freeze_lut
        lut = torch.zeros(num_ids, feat_dim)
        if init_lut is not None:
            if tuple(init_lut.shape) != (num_ids, feat_dim):
                raise ValueError(
                    f"OIMLoss: initial LUT has shape {tuple(init_lut.shape)}, "
                    f"expected (num_ids, feat_dim) = ({num_ids}, {feat_dim})"
                )
            lut.copy_(init_lut)
        self.register_buffer("lut", lut)
        self.register_buffer("queue", torch.zeros(queue_size, feat_dim))
        # Index of the queue slot written next (a buffer, so a resumed run continues the cycle).
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def forward(self, feats: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
        """
        Args:
            feats: (N, D) L2-normalised ID features of person boxes (background already removed).
            pids: (N,) int64 identity labels in [0, P), or ``UNLABELED_PID`` (-1) for persons
                without identity, which add no loss term.

        Returns:
            Tensor: scalar, the mean cross-entropy over the labeled boxes of
            ``scalar * feats @ [LUT; queue]^T``; 0 (still attached to ``feats``) if none is
            labeled.
        """
        labeled = pids >= 0
        if not labeled.any():
            return feats.sum() * 0.0
        # The concatenation is a copy: update_memory may then change the buffers in place
        # without invalidating what autograd saved for the backward pass.
        memory = torch.cat([self.lut, self.queue], dim=0)
        logits = self.scalar * feats[labeled] @ memory.t()
        return F.cross_entropy(logits, pids[labeled])

    @torch.no_grad()
    def update_memory(self, feats: torch.Tensor, pids: torch.Tensor) -> None:
        """
        Apply one mini-batch to the memories, in the order given: each labeled feature moves its
        LUT row by momentum and the row is re-normalised (unless the LUT is frozen); each
        unlabeled feature is written to the queue slot after the previous one, wrapping around.

        Args:
            feats: (N, D) features (detached), from every process when training distributed.
            pids: (N,) labels as in :meth:`forward`.
        """
        feats = feats.detach().to(self.lut.dtype)
        if not self.freeze_lut:
            # Sequential on purpose: an identity seen twice in one batch is moved twice, as in
            # the reference implementations, which a vectorised scatter would not reproduce.
            for x, y in zip(feats[pids >= 0], pids[pids >= 0].tolist()):
                row = self.momentum * self.lut[y] + (1.0 - self.momentum) * x
                self.lut[y] = F.normalize(row, dim=0)
        unlabeled = feats[pids == UNLABELED_PID]
        queue_size = self.queue.shape[0]
        if queue_size == 0 or len(unlabeled) == 0:
            return
        ptr = int(self.queue_ptr)
        slots = (ptr + torch.arange(len(unlabeled), device=self.queue.device)) % queue_size
        # With more unlabeled features than slots only the newest queue_size ones survive;
        # keeping just those avoids writing one slot twice (undefined order on GPU).
        self.queue[slots[-queue_size:]] = unlabeled[-queue_size:]
        self.queue_ptr.fill_((ptr + len(unlabeled)) % queue_size)

    def extra_repr(self) -> str:
        return (
            f"num_ids={self.num_ids}, queue_size={self.queue.shape[0]}, "
            f"feat_dim={self.lut.shape[1]}, scalar={self.scalar}, momentum={self.momentum}, "
            f"freeze_lut={self.freeze_lut}"
        )
