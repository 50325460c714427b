# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""A re-ID network on person crops: the external re-ID model of DKD, and a two-step re-ID stage."""

from typing import Dict, List

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.structures import Boxes, Instances

from ..layers.crops import crop_boxes, parse_view, view_boxes
from .record import CropRecord, Recorder
from .reid_head import ReIDOutputs, build_reid_head
from .reid_losses import build_reid_losses

__all__ = ["CropReIDNet"]


@META_ARCH_REGISTRY.register()
class CropReIDNet(Recorder):
    """
    A ResNet on person crops (INPUT.REID_CROP.SIZE, 256 x 128 by default; of the rows of the box
    that INPUT.REID_CROP.VIEW shows, the whole box by default) -> the re-ID head
    (MODEL.REID.HEAD_NAME; the EmbeddingHead's BatchNorm before its classifier is the BNNeck of
    re-ID baselines) trained with MODEL.REID.LOSSES (identity cross-entropy with label smoothing
    and batch-hard triplet in the shipped configs) on P x K batches of ground-truth crops
    (DATALOADER.PERSON_CROPS: :func:`build_person_crop_train_loader`).

    Inference embeds boxes of whole images, cut by :meth:`cut` exactly as the training crops
    were: an input with ``query_boxes`` (K, 4), the query mode of
    :class:`PersonSearchRCNN`, or with ``boxes`` (K, 4), gallery boxes given by a detector or the
    ground truth, both XYXY in original-image coordinates, gives ``{"instances": Instances}`` of
    those boxes with ``scores`` 1 and ``reid_feats`` (K, D).

    Inside :func:`recording` its training forward records the crops and its outputs, a
    :data:`RECORD` for distillation (factorized distillation from partial-view crop teachers).
    """

    RECORD = CropRecord

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        in_feature: str,
        reid_head: nn.Module,
        reid_losses: List[nn.Module],
        pixel_mean,
        pixel_std,
        input_format: str,
        crop_size,
        view=(0.0, 1.0),
    ):
        """
        Args:
            crop_size: (H, W) of the crops.
            view: (top, bottom) fractions of the box height that the crops show.
        """
        super().__init__()
        self.backbone = backbone
        self.in_feature = in_feature
        self.reid_head = reid_head
        self.reid_losses = nn.ModuleList(reid_losses)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.input_format = input_format
        self.crop_size = tuple(crop_size)
        self.view = tuple(view)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        in_feature = cfg.MODEL.RESNETS.OUT_FEATURES[-1]
        ret = {
            "backbone": backbone,
            "in_feature": in_feature,
            "reid_head": build_reid_head(cfg, backbone.output_shape()[in_feature].channels),
            "reid_losses": build_reid_losses(cfg),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
            "crop_size": cfg.INPUT.REID_CROP.SIZE,
            "view": parse_view(cfg.INPUT.REID_CROP.VIEW),
        }
        return ret

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def cut(self, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """
        This network's crops of boxes: the rows of its view, resized to its crop size.

        Args:
            image: (3, H, W) image, 0-255.
            boxes: (K, 4) XYXY boxes in the image's pixels.
        Returns:
            (K, 3, crop H, crop W) crops.
        """
        return crop_boxes(image, view_boxes(boxes, self.view), self.crop_size)

    def embed(self, crops: torch.Tensor) -> ReIDOutputs:
        """
        Args:
            crops: (N, 3, H, W) crops, 0-255, channels in INPUT.FORMAT.
        Returns:
            the re-ID head's outputs, N rows.
        """
        normalized = (crops.to(self.device) - self.pixel_mean) / self.pixel_std
        return self.reid_head(self.backbone(normalized)[self.in_feature])

    def forward(self, batched_inputs: List[Dict]):
        """
        Training: inputs ``{"image": (3, H, W) crop, "person_id": int}`` -> the re-ID losses.
        Inference: see the class docstring.
        """
        if self.training:
            crops = torch.stack([x["image"] for x in batched_inputs])
            pids = torch.tensor([x["person_id"] for x in batched_inputs], device=self.device)
            outputs = self.embed(crops)
            losses = {}
            for loss in self.reid_losses:
                losses.update(loss(outputs, pids))
            self._record(crops=crops.to(self.device), person_ids=pids, reid=outputs)
            return losses
        return [self._embed_given_boxes(x) for x in batched_inputs]

    def _embed_given_boxes(self, inputs: Dict) -> Dict:
        key = "query_boxes" if "query_boxes" in inputs else "boxes"
        if key not in inputs:
            raise ValueError(
                f"CropReIDNet embeds given boxes: {inputs.get('file_name', 'an input')} has "
                "neither 'query_boxes' nor 'boxes' (a detector gives gallery boxes: see "
                "personsearch_kd.evaluation.TwoStepSearch)"
            )
        boxes = torch.as_tensor(inputs[key], dtype=torch.float32).reshape(-1, 4)
        image = inputs["image"].to(self.device).float()
        height, width = inputs.get("height", image.shape[1]), inputs.get("width", image.shape[2])
        # Original-image -> network-input coordinates (the test-time resize, if any).
        scale = boxes.new_tensor([image.shape[2] / width, image.shape[1] / height] * 2)
        with torch.no_grad():
            crops = self.cut(image, (boxes * scale).to(self.device))
            feats = self.embed(crops).embeddings
        result = Instances((height, width))
        result.pred_boxes = Boxes(boxes.to(self.device))
        result.scores = torch.ones(len(boxes), device=self.device)
        result.reid_feats = feats
        return {"instances": result}
