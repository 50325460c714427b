# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
import contextlib
from typing import Dict, List, Tuple

import torch

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.structures import Boxes, Instances

from .precision import AUTOCAST_DTYPES, check_precision, resolve_precision
from .record import StudentRecord

__all__ = ["PersonSearchRCNN", "as_fp32"]


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
class PersonSearchRCNN(GeneralizedRCNN):
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

    Training is :meth:`GeneralizedRCNN.forward`'s. Inside :func:`recording` its RPN (a
    :class:`RecordingRPN`) and ROI heads record a :data:`RECORD` of the step for distillation
    (:class:`personsearch_kd.distillation.Distiller`).
    """

    RECORD = StudentRecord

    @configurable
    def __init__(self, *, inference_precision: str = "fp32", **kwargs):
        """
        Args:
            inference_precision: "fp32", or "bf16" / "fp16" to run inference under autocast
                (re-ID features stay fp32), or "auto": the fastest the model's device computes
                natively (:func:`resolve_precision`, checked at each inference: a model can move),
                or "int8" on a CPU, for a model that :func:`quantize_int8` prepared.
            kwargs: arguments of :class:`GeneralizedRCNN`.
        """
        super().__init__(**kwargs)
        check_precision(inference_precision)  # the device is known at inference: checked there
        self.inference_precision = inference_precision

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        precision = cfg.TEST.PERSON_SEARCH.PRECISION
        resolve_precision(precision, cfg.MODEL.DEVICE)  # an emulated precision fails at build
        ret["inference_precision"] = precision
        return ret

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        """
        See :meth:`GeneralizedRCNN.forward`; in inference, inputs with ``"query_boxes"`` run
        :meth:`embed_query_boxes`.
        """
        if self.training:
            return super().forward(batched_inputs)
        with self.inference_autocast():
            outputs = self._inference(batched_inputs)
        for output in outputs:
            as_fp32(output["instances"])
        return outputs

    def resolved_precision(self) -> str:
        """The precision its inference runs at on its device ("auto" resolved)."""
        return resolve_precision(self.inference_precision, self.device)

    def inference_autocast(self):
        """A context running its inference at ``inference_precision`` (nothing for fp32 and
        int8, whose quantized stages replace the float ones)."""
        precision = self.resolved_precision()
        if precision == "int8" and getattr(self, "int8_calibration", None) is None:
            raise ValueError(
                "TEST.PERSON_SEARCH.PRECISION='int8': this model's stages are not quantized: "
                "build it with personsearch_kd.engine.build_trained_student, or call "
                "personsearch_kd.engine.prepare_for_inference(model, cfg)"
            )
        dtype = AUTOCAST_DTYPES[precision]
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
