# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
from functools import partial
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.backbone.resnet import BasicBlock, ResNet
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads
from detectron2.structures import Boxes, ImageList, Instances

from ..layers.batch_norm import call_with_statistics_unchanged
from ..layers.oim_loss import UNLABELED_PID
from .record import Recorder
from .reid_head import ReIDOutputs, build_reid_head
from .reid_losses import build_reid_losses

__all__ = ["OIMROIHeads", "PersonDetectorROIHeads", "build_res5_for_depth"]

# Number of res5 BasicBlocks for the ResNets built from BasicBlock (detectron2's table).
_BASIC_RES5_BLOCKS = {18: 2, 34: 3}


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
class OIMROIHeads(Recorder, Res5ROIHeads):
    """
    C4 ROI heads of person search: the res5 box head of :class:`Res5ROIHeads` (built from
    BasicBlocks for ResNet-18/34) and a re-ID head (MODEL.REID.HEAD_NAME) on the same res5 ROI
    features, or on those of its own res5 (MODEL.REID.SEPARATE_RES5: separate detection and re-ID
    heads, as in DKD), trained on the foreground ROIs with the re-ID losses of MODEL.REID.LOSSES
    (OIM by default).

    Training runs :class:`Res5ROIHeads`' own pass, then :meth:`_forward_reid` on the ROI
    features that pass computed (kept by narrow hooks: :meth:`label_and_sample_proposals`,
    :meth:`_shared_roi_transform` and a forward hook of the box predictor), and records for
    distillation (:class:`Recorder`) the sampled ROIs, the box head's predictions and
    :meth:`embed_for_distillation`.

    Inference adds ``reid_feats`` (L2-normalised) to every predicted instance; they are computed
    on the final (regressed) boxes, exactly as for a query box given by the user.
    """

    @configurable
    def __init__(
        self,
        *,
        reid_head: nn.Module,
        reid_losses: List[nn.Module],
        reid_res5: Optional[nn.Module] = None,
        reid_on_proposals: bool = False,
        **kwargs,
    ):
        """
        Args:
            reid_head: maps (R, C, h, w) res5 ROI features to :class:`ReIDOutputs`.
            reid_res5: the re-ID head's own res5 on the pooled ROI features; None shares the
                box head's.
            reid_on_proposals: in inference, each detection's feature comes from the ROI
                features of its proposal in the detector's pass, not from its regressed box.
            reid_losses: re-ID loss modules (REID_LOSS_REGISTRY), each held as ``<name>_loss``
                for its key ``loss_<name>`` (so checkpoints keep ``roi_heads.oim_loss.lut``).
            kwargs: arguments of :class:`Res5ROIHeads` (a mask head is not supported).
        """
        super().__init__(**kwargs)
        self.reid_res5 = reid_res5
        self.reid_on_proposals = reid_on_proposals
        if self.mask_on:
            raise ValueError("OIMROIHeads does not support masks: set MODEL.MASK_ON=False")
        self.reid_head = reid_head
        if not reid_losses:
            raise ValueError("MODEL.REID.LOSSES is empty: the re-ID head needs at least one loss")
        self.reid_loss_names = []
        for loss in reid_losses:
            name = loss.KEY[len("loss_") :] + "_loss"
            setattr(self, name, loss)
            self.reid_loss_names.append(name)
        self.box_predictor.register_forward_hook(self._keep_predictions)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["reid_head"] = build_reid_head(cfg, ret["res5"][-1].out_channels)
        ret["reid_losses"] = build_reid_losses(cfg)
        if cfg.MODEL.REID.SEPARATE_RES5:
            ret["reid_res5"] = cls._build_res5_block(cfg)[0]
        ret["reid_on_proposals"] = cfg.TEST.PERSON_SEARCH.REID_ON_PROPOSALS
        return ret

    @classmethod
    def _build_res5_block(cls, cfg):
        return build_res5_for_depth(cfg)

    @property
    def reid_branch_res5(self) -> nn.Module:
        """The res5 whose ROI features the re-ID head reads: its own, or the box head's."""
        return self.res5 if self.reid_res5 is None else self.reid_res5

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints written before the re-ID head was a component call it "embed_head".
        for key in [k for k in state_dict if k.startswith(prefix + "embed_head.")]:
            renamed = prefix + "reid_head." + key[len(prefix + "embed_head.") :]
            state_dict[renamed] = state_dict.pop(key)
        # A separate re-ID res5 starts from the box head's res5 where the checkpoint has none
        # (ImageNet / model-zoo weights, a shared-head model), as res5 itself does.
        if self.reid_res5 is not None and not any(
            k.startswith(prefix + "reid_res5.") for k in state_dict
        ):
            for key in [k for k in state_dict if k.startswith(prefix + "res5.")]:
                state_dict[prefix + "reid_" + key[len(prefix) :]] = state_dict[key].clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]] = None,
    ) -> Tuple[List[Instances], Dict[str, torch.Tensor]]:
        """
        See :meth:`Res5ROIHeads.forward`, whose training pass this runs unchanged before
        :meth:`_forward_reid`. Training targets must carry ``gt_pids`` (R_i,) int64: identity in
        [0, NUM_IDS) or -1 for an unlabeled person. Inference instances add ``reid_feats``.
        """
        if not self.training:
            if self.reid_on_proposals:
                return self._inference_on_proposals(features, proposals), {}
            return super().forward(images, features, proposals)
        self._training_pass = {}
        try:
            _, losses = super().forward(images, features, proposals, targets)
            rois, pooled, box_features = (
                self._training_pass[k] for k in ("rois", "pooled", "box_features")
            )
            box_scores, box_deltas = self._training_pass["predictions"]
        finally:
            self._training_pass = None
        losses.update(self._forward_reid(rois, pooled, box_features))
        self._record(
            features=features,
            gt_instances=targets,
            rois=rois,
            box_scores=box_scores,
            box_deltas=box_deltas,
            embed_boxes=partial(self.embed_for_distillation, features),
        )
        return [], losses

    # Hooks into Res5ROIHeads' training pass: they keep its intermediate results for
    # _forward_reid and the record, in self._training_pass (None outside a training forward).
    _training_pass: Optional[Dict] = None

    def label_and_sample_proposals(self, proposals, targets):
        rois = super().label_and_sample_proposals(proposals, targets)
        if self._training_pass is not None:
            self._training_pass["rois"] = rois
        return rois

    def _shared_roi_transform(self, features: List[torch.Tensor], boxes: List[Boxes]):
        pooled = self.pooler(features, boxes)
        box_features = self.res5(pooled)
        if self._training_pass is not None:
            self._training_pass.update(pooled=pooled, box_features=box_features)
        return box_features

    def _keep_predictions(self, box_predictor, inputs, predictions) -> None:
        """A forward hook of the box predictor: its (scores, deltas) of the sampled ROIs."""
        if self._training_pass is not None:
            self._training_pass["predictions"] = predictions

    def _forward_reid(
        self, rois: List[Instances], pooled: torch.Tensor, box_features: torch.Tensor
    ) -> Dict[str, torch.Tensor]:
        """
        The re-ID losses of a training step, on the foreground ROIs.

        Args:
            rois: the sampled ROIs, per image (R in all), with ``gt_classes`` and ``gt_pids``.
            pooled: (R, C, h, w) their pooled features, for a separate re-ID res5.
            box_features: (R, C', h', w') the box head's res5 features of them.
        """
        reid, pids = self._embed_foreground(box_features, rois, pooled)
        return self._reid_losses(reid, pids, box_features)

    def _inference_on_proposals(
        self, features: Dict[str, torch.Tensor], proposals: List[Instances]
    ) -> List[Instances]:
        """
        Detections whose ``reid_feats`` are the re-ID head's outputs on the ROI features of the
        proposals they came from, computed in the detector's own pass.
        """
        pooled = self.pooler(
            [features[f] for f in self.in_features], [x.proposal_boxes for x in proposals]
        )
        box_features = self.res5(pooled)
        predictions = self.box_predictor(box_features.mean(dim=[2, 3]))
        instances, kept = self.box_predictor.inference(predictions, proposals)
        reid_features = box_features if self.reid_res5 is None else self.reid_res5(pooled)
        embeddings = self.reid_head(reid_features).embeddings
        for inst, emb, keep in zip(instances, embeddings.split([len(p) for p in proposals]), kept):
            inst.reid_feats = emb[keep]
        return instances

    def _embed_foreground(
        self,
        box_features: torch.Tensor,
        rois: List[Instances],
        pooled: Optional[torch.Tensor] = None,
    ) -> Tuple[Optional[ReIDOutputs], torch.Tensor]:
        """
        The re-ID outputs of the foreground ROIs and their person ids (F,); background never
        enters the re-ID losses. None with fewer than 2 foreground ROIs: BatchNorm cannot
        normalise a single sample in training.

        Args:
            box_features: (R, C', h', w') the box head's res5 features of the sampled ROIs.
            rois: the sampled ROIs, per image.
            pooled: (R, C, h, w) their pooled res4 features, for a separate re-ID res5.
        """
        gt_classes = cat([r.gt_classes for r in rois])
        # An image without ground truth has only background ROIs and no gt_pids field.
        pids = cat(
            [
                r.gt_pids if r.has("gt_pids") else torch.full_like(r.gt_classes, UNLABELED_PID)
                for r in rois
            ]
        )
        foreground = gt_classes != self.num_classes
        if int(foreground.sum()) < 2:
            return None, pids[:0]
        if self.reid_res5 is None:  # the box head's res5 features serve re-ID too
            return self.reid_head(box_features[foreground]), pids[foreground]
        return self.reid_head(self.reid_res5(pooled[foreground])), pids[foreground]

    def _reid_losses(
        self, reid: Optional[ReIDOutputs], pids: torch.Tensor, box_features: torch.Tensor
    ) -> Dict[str, torch.Tensor]:
        """Every re-ID loss, on every process (the OIM memory update is a collective)."""
        losses = {}
        for name in self.reid_loss_names:
            losses.update(getattr(self, name)(reid, pids))
        if reid is None:
            # Zeros that keep every re-ID parameter in the graph, as DDP requires.
            reid_params = list(self.reid_head.parameters())
            if self.reid_res5 is not None:
                reid_params += list(self.reid_res5.parameters())
            zero = sum(p.sum() for p in reid_params) * 0.0 + box_features.sum() * 0.0
            losses = {key: value + zero for key, value in losses.items()}
        return losses

    def embed_for_distillation(
        self, features: Dict[str, torch.Tensor], boxes: List[Boxes]
    ) -> ReIDOutputs:
        """
        Re-ID outputs of any boxes in a training step (ground-truth or jittered boxes of a
        distillation loss), as :attr:`StudentRecord.embed_boxes` gives them.

        The boxes are normalised with their own batch statistics, but BatchNorm's running
        statistics cannot move (:func:`call_with_statistics_unchanged`): inference normalises the
        proposals with those, and a distillation loss embedding ground-truth boxes every step
        pulled res5's towards crops of persons (a DKD student lost 11 det AP at test).

        Args:
            features: the backbone features of the step.
            boxes: one Boxes per image, network-input coordinates.
        Returns:
            ReIDOutputs, rows in image order.
        """
        pooled = self.pooler([features[f] for f in self.in_features], boxes)
        return call_with_statistics_unchanged(
            self.reid_head, call_with_statistics_unchanged(self.reid_branch_res5, pooled)
        )

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
        boxes = [x.pred_boxes for x in instances]
        pooled = self.pooler([features[f] for f in self.in_features], boxes)
        embeddings = self.reid_head(self.reid_branch_res5(pooled)).embeddings
        for inst, emb in zip(instances, embeddings.split([len(x) for x in instances])):
            inst.reid_feats = emb
        return instances
