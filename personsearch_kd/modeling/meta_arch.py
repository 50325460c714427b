# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
import contextlib
from typing import Dict, List, Tuple

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.modeling.proposal_generator import RPN
from detectron2.structures import Boxes, Instances

from ..distillation import build_distillation_losses, build_teachers
from .predictions import rpn_predictions
from .record import StudentRecord
from .student import DistillationStudent

__all__ = ["PersonSearchRCNN", "as_fp32"]

_AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def as_fp32(instances: Instances) -> Instances:
    """
    The documented outputs are fp32 whatever the precision of the computation: casts the boxes,
    scores and (a query-guided model's) ``query_similarity`` in place; re-ID features are fp32.
    """
    instances.pred_boxes.tensor = instances.pred_boxes.tensor.float()
    instances.scores = instances.scores.float()
    if instances.has("query_similarity"):
        instances.query_similarity = instances.query_similarity.float()
    return instances


@META_ARCH_REGISTRY.register()
class PersonSearchRCNN(DistillationStudent, GeneralizedRCNN):
    """
    A :class:`GeneralizedRCNN` for end-to-end person search. With :class:`OIMROIHeads` its
    detections carry ``reid_feats``; in addition it has a *query mode* that embeds boxes given by
    the user (the query person's box) without running the detector.

    Query mode is selected per batch in inference: every input dict has a ``"query_boxes"`` entry,
    a (K, 4) tensor or nested list of XYXY boxes in the coordinates of the original image
    (the ``height``/``width`` of the dict, like detector outputs). Each output is then
    ``{"instances": Instances}`` with exactly those K boxes in ``pred_boxes``, ``scores`` = 1 and
    ``reid_feats`` (K, EMBED_DIM). Inputs with ``"boxes"`` instead are gallery images whose boxes
    are given (the ground truth, :class:`GroundTruthBoxes`): the same outputs, which an
    evaluation takes for detections, so that re-ID is measured alone.

    Distillation: the training forward records what the student computed in a
    :class:`StudentRecord`, and each distillation loss of MODEL.DISTILLATION.LOSSES reads it with
    the outputs of the teachers of MODEL.TEACHERS (held as :class:`DistillationStudent` says).
    """

    @configurable
    def __init__(
        self,
        *,
        teachers: Dict[str, nn.Module] = None,
        distillation_losses: Dict[str, nn.Module] = None,
        inference_precision: str = "fp32",
        **kwargs,
    ):
        """
        Args:
            teachers: name -> frozen teacher (see :func:`build_teachers`); none by default.
            distillation_losses: name -> distillation loss module (see
                :func:`build_distillation_losses`); none by default.
            inference_precision: "fp32", or "bf16" / "fp16" to run inference under autocast
                (re-ID features stay fp32).
            kwargs: arguments of :class:`GeneralizedRCNN`.
        """
        super().__init__(**kwargs)
        self._init_distillation(teachers, distillation_losses)
        if inference_precision not in _AUTOCAST_DTYPES:
            raise ValueError(
                f"TEST.PERSON_SEARCH.PRECISION={inference_precision!r}: expected one of "
                f"{sorted(_AUTOCAST_DTYPES)}"
            )
        self.inference_precision = inference_precision

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        teachers = build_teachers(cfg)
        ret["teachers"] = teachers
        ret["distillation_losses"] = build_distillation_losses(cfg, ret, teachers)
        ret["inference_precision"] = cfg.TEST.PERSON_SEARCH.PRECISION
        return ret

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        """
        See :meth:`GeneralizedRCNN.forward`; in inference, inputs with ``"query_boxes"`` run
        :meth:`embed_query_boxes`. Training adds the distillation losses to the student's.
        """
        if not self.training:
            with self.inference_autocast():
                outputs = self._inference(batched_inputs)
            for output in outputs:
                as_fp32(output["instances"])
            return outputs
        return self._training_forward(batched_inputs)

    def inference_autocast(self):
        """A context running its inference at ``inference_precision`` (nothing for fp32)."""
        dtype = _AUTOCAST_DTYPES[self.inference_precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def _inference(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        """Gallery images are detected, inputs with given boxes embedded; a batch may mix them."""
        groups = {}
        for i, x in enumerate(batched_inputs):
            kind = "query_boxes" if "query_boxes" in x else "boxes" if "boxes" in x else None
            groups.setdefault(kind, []).append(i)
        outputs = [None] * len(batched_inputs)
        for kind, indices in groups.items():
            inputs = [batched_inputs[i] for i in indices]
            if kind is None:
                results = super().forward(inputs)
            else:
                results = self.embed_query_boxes(inputs, kind)
            for i, result in zip(indices, results):
                outputs[i] = result
        return outputs

    def _training_forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        images = self.preprocess_image(batched_inputs)
        record = StudentRecord(
            batched_inputs=batched_inputs,
            images=images,
            features=self.backbone(images.tensor),
            gt_instances=[x["instances"].to(self.device) for x in batched_inputs],
        )
        losses = self._rpn_losses(record)
        _, detector_losses = self.roi_heads(
            images, record.features, record.proposals, record.gt_instances, record=record
        )
        losses.update(detector_losses)
        return self._distill(record, losses)

    def _rpn_losses(self, record: StudentRecord) -> Dict[str, torch.Tensor]:
        """
        The RPN's training pass, as :meth:`RPN.forward`, with its anchors, predictions and
        sampled anchor labels kept in ``record``.
        """
        rpn = self.proposal_generator
        if not isinstance(rpn, RPN):
            raise ValueError(
                f"PersonSearchRCNN: MODEL.PROPOSAL_GENERATOR.NAME builds {type(rpn).__name__}; "
                "training expects detectron2's RPN"
            )
        anchors, logits, deltas = rpn_predictions(rpn, record.features)
        labels, gt_boxes = rpn.label_and_sample_anchors(anchors, record.gt_instances)
        losses = rpn.losses(anchors, logits, labels, deltas, gt_boxes)
        record.anchors, record.rpn_logits, record.rpn_deltas = anchors, logits, deltas
        record.rpn_labels, record.rpn_gt_boxes = torch.stack(labels), gt_boxes
        record.proposals = rpn.predict_proposals(anchors, logits, deltas, record.images.image_sizes)
        return losses

    def _given_boxes(self, inputs: Dict, key: str, input_size) -> Tuple[torch.Tensor, Boxes]:
        """
        ``inputs[key]``, (K, 4) XYXY boxes in original-image coordinates (checked), and the same
        boxes in the coordinates of the network input of size ``input_size`` (H', W').
        """
        boxes = torch.as_tensor(inputs[key], dtype=torch.float32, device=self.device)
        if boxes.numel() == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(
                f"{key} of {inputs.get('file_name', 'an input')}: expected shape (K, 4) "
                f"XYXY, got {tuple(boxes.shape)}"
            )
        input_h, input_w = input_size
        height, width = inputs.get("height", input_h), inputs.get("width", input_w)
        # Inverse of detector_postprocess: original-image -> network-input coordinates.
        scale = boxes.new_tensor([input_w / width, input_h / height] * 2)
        return boxes, Boxes(boxes * scale)

    def embed_query_boxes(self, batched_inputs: List[Dict], key: str = "query_boxes"):
        """
        Args:
            batched_inputs: dicts with ``image`` (C, H', W') as in :meth:`forward`, optional
                ``height``/``width`` of the original image and ``key`` (K, 4) XYXY boxes in
                original-image coordinates.
            key: "query_boxes" or "boxes".

        Returns:
            list[dict]: ``{"instances": Instances}`` per input, of the original image size, with
            ``pred_boxes`` (the given boxes), ``scores`` (K,) ones and ``reid_feats`` (K, D).
        """
        assert not self.training
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        given, scaled = [], []
        for inputs, (input_h, input_w) in zip(batched_inputs, images.image_sizes):
            boxes, input_boxes = self._given_boxes(inputs, key, (input_h, input_w))
            inst = Instances((input_h, input_w))
            inst.pred_boxes = input_boxes
            scaled.append(inst)
            given.append((boxes, (inputs.get("height", input_h), inputs.get("width", input_w))))
        scaled = self.roi_heads.forward_with_given_boxes(features, scaled)
        results = []
        for (boxes, image_size), inst in zip(given, scaled):
            out = Instances(image_size)
            out.pred_boxes = Boxes(boxes)
            out.scores = boxes.new_ones(len(boxes))
            out.reid_feats = inst.reid_feats
            results.append({"instances": out})
        return results
