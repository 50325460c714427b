# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.backbone.resnet import BasicBlock, ResNet
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads
from detectron2.structures import ImageList, Instances
from detectron2.utils import comm

from ..layers.lut_file import check_lut_file, load_lut_file
from ..layers.oim_loss import UNLABELED_PID, OIMLoss

__all__ = ["IDEmbeddingHead", "OIMROIHeads", "PersonDetectorROIHeads", "build_res5_for_depth"]

# Number of res5 BasicBlocks for the ResNets built from BasicBlock (detectron2's table).
_BASIC_RES5_BLOCKS = {18: 2, 34: 3}


class IDEmbeddingHead(nn.Module):
    """
    Identity embedding of the OIM paper: pooled res5 feature -> Linear -> BatchNorm -> L2 norm.
    """

    def __init__(self, in_channels: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_channels, embed_dim)
        self.norm = nn.BatchNorm1d(embed_dim)
        nn.init.normal_(self.proj.weight, std=0.01)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (R, C) pooled per-box features.
        Returns:
            Tensor: (R, embed_dim) L2-normalised embeddings.
        """
        return F.normalize(self.norm(self.proj(x)), dim=1)


def _gather_from_all_ranks(feats: torch.Tensor, pids: torch.Tensor):
    """
    Concatenate (feats, pids) of every process, in rank order, so that each rank applies the same
    OIM memory update (detectron2's DDP does not broadcast buffers).
    """
    if comm.get_world_size() == 1:
        return feats, pids
    # Through CPU: comm.all_gather pickles over a gloo group whatever the training backend.
    gathered = comm.all_gather((feats.cpu(), pids.cpu()))
    return (
        torch.cat([f for f, _ in gathered]).to(feats.device),
        torch.cat([p for _, p in gathered]).to(pids.device),
    )


def build_res5_for_depth(cfg) -> Tuple[nn.Module, int]:
    """
    res5 as in the backbone of MODEL.RESNETS.DEPTH: Bottleneck blocks for depth >= 50
    (detectron2's builder), BasicBlocks for 18/34, so that ImageNet res5 weights load.

    Returns:
        the res5 stage and its output channels.
    """
    depth = cfg.MODEL.RESNETS.DEPTH
    if depth >= 50:
        return Res5ROIHeads._build_res5_block(cfg)
    if depth not in _BASIC_RES5_BLOCKS:
        raise ValueError(f"MODEL.RESNETS.DEPTH={depth}: expected 18, 34, 50, 101 or 152")
    num_blocks = _BASIC_RES5_BLOCKS[depth]
    out_channels = cfg.MODEL.RESNETS.RES2_OUT_CHANNELS * 8  # res5 is 8x res2
    blocks = ResNet.make_stage(
        BasicBlock,
        num_blocks,
        stride_per_block=[2] + [1] * (num_blocks - 1),
        in_channels=out_channels // 2,
        out_channels=out_channels,
        norm=cfg.MODEL.RESNETS.NORM,
    )
    return nn.Sequential(*blocks), out_channels


@ROI_HEADS_REGISTRY.register()
class PersonDetectorROIHeads(Res5ROIHeads):
    """
    The plain C4 box head of a person detector (the DET models, KD_det teachers): detectron2's
    :class:`Res5ROIHeads` with res5 matching the backbone depth (BasicBlocks for ResNet-18/34).
    """

    @classmethod
    def _build_res5_block(cls, cfg):
        return build_res5_for_depth(cfg)


@ROI_HEADS_REGISTRY.register()
class OIMROIHeads(Res5ROIHeads):
    """
    C4 ROI heads of OIM person search: the res5 box head of :class:`Res5ROIHeads` (built from
    BasicBlocks for ResNet-18/34) plus an identity-embedding branch on the same pooled res5
    feature, trained with the OIM loss on foreground boxes.

    Inference adds ``reid_feats`` (L2-normalised) to every predicted instance; they are computed
    on the final (regressed) boxes, exactly as for a query box given by the user.
    """

    @configurable
    def __init__(
        self,
        *,
        embed_head: nn.Module,
        oim_loss: OIMLoss,
        oim_loss_weight: float = 1.0,
        **kwargs,
    ):
        """
        Args:
            embed_head: maps (R, C) pooled res5 features to (R, D) L2-normalised embeddings.
            oim_loss: the OIM loss holding the LUT and the queue.
            oim_loss_weight: lambda_oim.
            kwargs: arguments of :class:`Res5ROIHeads` (a mask head is not supported).
        """
        super().__init__(**kwargs)
        if self.mask_on:
            raise ValueError("OIMROIHeads does not support masks: set MODEL.MASK_ON=False")
        self.embed_head = embed_head
        self.oim_loss = oim_loss
        self.oim_loss_weight = oim_loss_weight

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        res5_channels = ret["res5"][-1].out_channels
        ret["embed_head"] = IDEmbeddingHead(res5_channels, cfg.MODEL.OIM.EMBED_DIM)
        ret["oim_loss"] = OIMLoss(
            feat_dim=cfg.MODEL.OIM.EMBED_DIM,
            num_ids=cfg.MODEL.OIM.NUM_IDS,
            queue_size=cfg.MODEL.OIM.QUEUE_SIZE,
            scalar=cfg.MODEL.OIM.SCALAR,
            momentum=cfg.MODEL.OIM.MOMENTUM,
            freeze_lut=cfg.MODEL.OIM.FREEZE_LUT,
            init_lut=cls._teacher_lut(cfg),
        )
        ret["oim_loss_weight"] = cfg.MODEL.OIM.LOSS_WEIGHT
        return ret

    @staticmethod
    def _teacher_lut(cfg):
        """MODEL.OIM.LUT_FILE's table, checked against this student (KD_reid), or None."""
        path = cfg.MODEL.OIM.LUT_FILE
        if not path:
            return None
        content = load_lut_file(path)
        # The mapper keeps person ids in [0, NUM_IDS) and OIM uses the id as the row.
        check_lut_file(
            content, path, cfg.DATASETS.TRAIN, range(cfg.MODEL.OIM.NUM_IDS), cfg.MODEL.OIM.EMBED_DIM
        )
        return content["lut"]

    @classmethod
    def _build_res5_block(cls, cfg):
        return build_res5_for_depth(cfg)

    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        targets: List[Instances] = None,
    ) -> Tuple[List[Instances], Dict[str, torch.Tensor]]:
        """
        See :meth:`Res5ROIHeads.forward`. Training targets must carry ``gt_pids`` (R_i,) int64:
        identity in [0, NUM_IDS) or -1 for an unlabeled person. The returned losses add
        ``loss_oim``; inference instances add ``reid_feats`` (R_i, EMBED_DIM).
        """
        if not self.training:
            return super().forward(images, features, proposals)
        losses, _, _ = self.losses_and_predictions(features, proposals, targets)
        return [], losses

    def losses_and_predictions(
        self,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        targets: List[Instances],
    ) -> Tuple[Dict[str, torch.Tensor], List[Instances], Tuple[torch.Tensor, torch.Tensor]]:
        """
        The training pass, also returning what a distillation loss needs (KD_det).

        Returns:
            losses: ``loss_cls``, ``loss_box_reg``, ``loss_oim``;
            sampled proposals: with ``proposal_boxes``, ``gt_classes``, ``gt_boxes`` and
                ``gt_pids`` (R_i ROIs of image i);
            predictions: ``(scores, deltas)`` of :class:`FastRCNNOutputLayers`, (R, K + 1) and
                (R, 4K) or (R, 4), R = sum R_i.
        """
        proposals = self.label_and_sample_proposals(proposals, targets)
        box_features = self._shared_roi_transform(
            [features[f] for f in self.in_features], [x.proposal_boxes for x in proposals]
        )
        pooled = box_features.mean(dim=[2, 3])
        predictions = self.box_predictor(pooled)
        losses = self.box_predictor.losses(predictions, proposals)
        losses["loss_oim"] = self.oim_loss_weight * self._oim_loss(pooled, proposals)
        return losses, proposals, predictions

    def _oim_loss(self, pooled: torch.Tensor, proposals: List[Instances]) -> torch.Tensor:
        """
        Args:
            pooled: (R, C) pooled res5 features of all sampled proposals of the batch.
            proposals: sampled proposals with ``gt_classes`` and, for images with ground truth,
                ``gt_pids`` of the matched ground-truth box.
        Returns:
            Tensor: scalar OIM loss over foreground proposals; background never enters the LUT,
            the queue or the loss.
        """
        gt_classes = cat([p.gt_classes for p in proposals])
        # An image without ground truth has only background proposals and no gt_pids field.
        pids = cat(
            [
                p.gt_pids if p.has("gt_pids") else torch.full_like(p.gt_classes, UNLABELED_PID)
                for p in proposals
            ]
        )
        foreground = gt_classes != self.num_classes
        if int(foreground.sum()) >= 2:
            embeddings = self.embed_head(pooled[foreground])
            fg_pids = pids[foreground]
            loss = self.oim_loss(embeddings, fg_pids)
        else:
            # BatchNorm cannot normalise a single sample in training, so this process embeds
            # nothing; the zero keeps every parameter in the graph, as DDP requires.
            embeddings = pooled.new_zeros((0, self.oim_loss.lut.shape[1]))
            fg_pids = pids[:0]
            loss = sum(p.sum() for p in self.embed_head.parameters()) * 0.0 + pooled.sum() * 0.0
        # Every process enters the gather every iteration, even with nothing to add: skipping it
        # here would leave the others waiting forever.
        self.oim_loss.update_memory(*_gather_from_all_ranks(embeddings.detach(), fg_pids))
        return loss

    def forward_with_given_boxes(
        self, features: Dict[str, torch.Tensor], instances: List[Instances]
    ) -> List[Instances]:
        """
        Embed the boxes in ``instances[i].pred_boxes`` (coordinates of the network input).

        Returns:
            the same Instances, each with a new field ``reid_feats``: (R_i, EMBED_DIM),
            L2-normalised.
        """
        assert not self.training
        box_features = self._shared_roi_transform(
            [features[f] for f in self.in_features], [x.pred_boxes for x in instances]
        )
        embeddings = self.embed_head(box_features.mean(dim=[2, 3]))
        for inst, emb in zip(instances, embeddings.split([len(x) for x in instances])):
            inst.reid_feats = emb
        return instances
