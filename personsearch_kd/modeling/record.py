# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""What the student computed in one training forward, for the distillation losses to read."""

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from detectron2.structures import Boxes, ImageList, Instances

from .reid_head import ReIDOutputs

__all__ = ["CropRecord", "StudentRecord"]


@dataclass
class StudentRecord:
    """
    Filled by :class:`PersonSearchRCNN`'s training forward, stage by stage; N images, A anchors
    over all RPN feature maps, R sampled ROIs over the batch, F foreground ROIs among them.

    Attributes:
        batched_inputs: the inputs of the forward (mapper outputs).
        images: the normalised, padded images.
        features: the backbone outputs, name -> (N, C, H, W).
        gt_instances: per image, ``gt_boxes``, ``gt_classes``, ``gt_pids``.
        anchors: per RPN feature map, Boxes (Hi*Wi*a, 4).
        rpn_logits: per RPN feature map, (N, Hi*Wi*a) objectness logits.
        rpn_deltas: per RPN feature map, (N, Hi*Wi*a, 4) anchor deltas.
        rpn_labels: (N, A) anchor labels of the RPN's sampling: 1 positive, 0 negative, -1 unused.
        rpn_gt_boxes: per image, (A, 4) the matched ground-truth box of each anchor.
        proposals: per image, the RPN's proposals.
        rois: per image, the sampled ROIs (``proposal_boxes``, ``gt_classes``; ``gt_boxes`` and
            ``gt_pids`` where the image has ground truth).
        box_scores: (R, K + 1) class logits of the box head on ``rois``.
        box_deltas: (R, 4K) or (R, 4) box deltas of the box head on ``rois``.
        reid: the re-ID head's outputs on the F foreground ROIs, or None when the batch has too
            few to embed (fewer than 2).
        reid_pids: (F,) their person ids (-1 = unlabeled).
    """

    batched_inputs: List[Dict]
    images: ImageList
    features: Dict[str, torch.Tensor]
    gt_instances: List[Instances]
    anchors: Optional[List[Boxes]] = None
    rpn_logits: Optional[List[torch.Tensor]] = None
    rpn_deltas: Optional[List[torch.Tensor]] = None
    rpn_labels: Optional[torch.Tensor] = None
    rpn_gt_boxes: Optional[List[torch.Tensor]] = None
    proposals: Optional[List[Instances]] = None
    rois: Optional[List[Instances]] = None
    box_scores: Optional[torch.Tensor] = None
    box_deltas: Optional[torch.Tensor] = None
    reid: Optional[ReIDOutputs] = None
    reid_pids: Optional[torch.Tensor] = None


@dataclass
class CropRecord:
    """
    Filled by :class:`CropReIDNet`'s training forward: N person crops.

    Attributes:
        crops: (N, 3, H, W) the crops the student saw (0-255, INPUT.FORMAT, augmented).
        person_ids: (N,) their identities.
        reid: the student's re-ID outputs on them.
    """

    crops: torch.Tensor
    person_ids: torch.Tensor
    reid: ReIDOutputs
