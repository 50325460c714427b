# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
What a student computed in one training forward, for a distillation wrapper to read.

A student's parts that hold something worth distilling are :class:`Recorder` modules (the RPN, the
ROI heads, a crop network): inside :func:`recording` they hand their intermediate results to
:meth:`Recorder._record`; outside it (plain training, inference) they keep nothing.
"""

import contextlib
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional

import torch
from torch import nn

from detectron2.structures import Boxes, Instances

from .reid_head import ReIDOutputs

__all__ = ["CropRecord", "Recorder", "StudentRecord", "recording"]


@dataclass
class StudentRecord:
    """
    A person-search student's training step; N images, A anchors over all RPN feature maps, R
    sampled ROIs over the batch.

    Attributes:
        batched_inputs: the inputs of the forward (mapper outputs).
        features: the backbone outputs, name -> (N, C, H, W).
        gt_instances: per image, ``gt_boxes``, ``gt_classes``, ``gt_pids``.
        rois: per image, the sampled ROIs (``proposal_boxes``, ``gt_classes``; ``gt_boxes`` and
            ``gt_pids`` where the image has ground truth).
        box_scores: (R, K + 1) class logits of the box head on ``rois``.
        box_deltas: (R, 4K) or (R, 4) box deltas of the box head on ``rois``.
        embed_boxes: ``embed_boxes(boxes: List[Boxes]) -> ReIDOutputs``, the student's re-ID
            branch on any boxes of these images (network-input coordinates, one Boxes per image;
            rows in image order): how a distillation loss embeds ground-truth or jittered boxes.
            It normalises with the boxes' own batch statistics and never moves BatchNorm's
            running statistics (see :meth:`OIMROIHeads.embed_for_distillation`).
        anchors: per RPN feature map, Boxes (Hi*Wi*a, 4). The RPN fields are recorded by a
            :class:`RecordingRPN` only (None with another proposal generator).
        rpn_logits: per RPN feature map, (N, Hi*Wi*a) objectness logits.
        rpn_deltas: per RPN feature map, (N, Hi*Wi*a, 4) anchor deltas.
        rpn_labels: (N, A) anchor labels of the RPN's sampling: 1 positive, 0 negative, -1 unused.
        rpn_gt_boxes: per image, (A, 4) the matched ground-truth box of each anchor.
    """

    batched_inputs: List[Dict]
    features: Dict[str, torch.Tensor]
    gt_instances: List[Instances]
    rois: List[Instances]
    box_scores: torch.Tensor
    box_deltas: torch.Tensor
    embed_boxes: Callable[[List[Boxes]], ReIDOutputs]
    anchors: Optional[List[Boxes]] = None
    rpn_logits: Optional[List[torch.Tensor]] = None
    rpn_deltas: Optional[List[torch.Tensor]] = None
    rpn_labels: Optional[torch.Tensor] = None
    rpn_gt_boxes: Optional[List[torch.Tensor]] = None


@dataclass
class CropRecord:
    """
    A crop student's (:class:`CropReIDNet`) training step on N person crops.

    Attributes:
        batched_inputs: the inputs of the forward.
        crops: (N, 3, H, W) the crops the student saw (0-255, INPUT.FORMAT, augmented).
        person_ids: (N,) their identities.
        reid: the student's re-ID outputs on them.
    """

    batched_inputs: List[Dict]
    crops: torch.Tensor
    person_ids: torch.Tensor
    reid: ReIDOutputs


class Recorder(nn.Module):
    """
    A module that hands what it computed in a training forward to :meth:`_record`, which keeps
    it only inside :func:`recording`.
    """

    _recorded: Optional[Dict] = None

    def _record(self, **fields) -> None:
        if self._recorded is not None:
            self._recorded.update(fields)


@contextlib.contextmanager
def recording(model: nn.Module) -> Iterator[Dict]:
    """
    Inside the block, every :class:`Recorder` of ``model`` records into the yielded dict (field
    name -> value, the fields of the student's record type). Re-entrant: inside an enclosing
    ``recording`` of the same modules the block records into the enclosing dict.
    """
    recorders = [m for m in model.modules() if isinstance(m, Recorder)]
    enclosing = [m._recorded for m in recorders if m._recorded is not None]
    fields = enclosing[0] if enclosing else {}
    previous = [m._recorded for m in recorders]
    for m in recorders:
        m._recorded = fields
    try:
        yield fields
    finally:
        for m, value in zip(recorders, previous):
            m._recorded = value
