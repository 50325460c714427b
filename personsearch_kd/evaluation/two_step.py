# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Two-step person search: a re-ID network on crops (:class:`CropReIDNet`), or an ensemble of them,
as the re-ID stage, on the boxes of a detector or on the ground-truth boxes, evaluated by
:class:`PersonSearchEvaluator` exactly as an end-to-end model.
"""

from typing import Callable, Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.data import detection_utils as utils
from detectron2.structures import BoxMode

__all__ = ["CropReIDEnsemble", "GroundTruthBoxes", "TwoStepSearch"]


class GroundTruthBoxes:
    """
    Wraps a test mapper so that each gallery image also carries ``boxes``: its ground-truth
    person boxes (XYXY, original coordinates), which a :class:`CropReIDNet` embeds as if a
    perfect detector had found them (score 1). Queries pass unchanged.
    """

    def __init__(self, mapper: Callable[[Dict], Dict]):
        self.mapper = mapper

    def __call__(self, record: Dict) -> Dict:
        boxes = None
        if "query_boxes" not in record:
            boxes = [
                BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                for a in record.get("annotations", [])
            ]
        # detectron2 mappers copy the dict they are given: the boxes above are read first anyway.
        mapped = self.mapper(record)
        if boxes is not None:
            mapped["boxes"] = boxes
        return mapped


class TwoStepSearch(nn.Module):
    """
    Detector boxes, then the re-ID network on them. Inputs are prepared for the detector (its
    test mapper); the re-ID network reads the image file again in its own format and size.
    Gallery outputs are the detector's instances with ``reid_feats`` of the re-ID network;
    queries (``query_boxes``) are embedded by the re-ID network alone.
    """

    def __init__(self, detector: nn.Module, reid: nn.Module, reid_image_format: str):
        """
        Args:
            detector: a detectron2 detector in eval mode (e.g. DET_18 / DET_50).
            reid: a :class:`CropReIDNet` in eval mode.
            reid_image_format: its INPUT.FORMAT.
        """
        super().__init__()
        self.detector = detector
        self.reid = reid
        self.reid_image_format = reid_image_format

    def _reid_inputs(self, inputs: Dict, key: str, boxes) -> Dict:
        image = utils.read_image(inputs["file_name"], format=self.reid_image_format)
        return {
            "image": torch.as_tensor(image.transpose(2, 0, 1).copy()),
            "height": image.shape[0],
            "width": image.shape[1],
            key: boxes,
            "file_name": inputs["file_name"],
        }

    def forward(self, batched_inputs: List[Dict]) -> List[Dict]:
        outputs = []
        for inputs in batched_inputs:
            if "query_boxes" in inputs:
                reid_inputs = self._reid_inputs(inputs, "query_boxes", inputs["query_boxes"])
                outputs.append(self.reid([reid_inputs])[0])
                continue
            (detections,) = self.detector([inputs])
            instances = detections["instances"]
            boxes = instances.pred_boxes.tensor.cpu()
            (embedded,) = self.reid([self._reid_inputs(inputs, "boxes", boxes)])
            instances.reid_feats = embedded["instances"].reid_feats.to(instances.scores.device)
            outputs.append({"instances": instances})
        return outputs


class CropReIDEnsemble(nn.Module):
    """
    A plain ensemble of crop re-ID networks (the partial-view teachers of factorized
    distillation, its upper reference): each embeds the same given boxes (``query_boxes`` or
    ``boxes``, see :class:`CropReIDNet`), and the feature is the concatenation of their
    L2-normalised features divided by sqrt(K), so that its cosine similarity is the mean of theirs.
    """

    def __init__(self, members: List[nn.Module]):
        """
        Args:
            members: K :class:`CropReIDNet` in eval mode, all with the same INPUT.FORMAT.
        """
        super().__init__()
        formats = {m.input_format for m in members}
        if len(formats) != 1:
            raise ValueError(f"CropReIDEnsemble: members read different INPUT.FORMATs {formats}")
        self.members = nn.ModuleList(members)
        self.input_format = formats.pop()

    def forward(self, batched_inputs: List[Dict]) -> List[Dict]:
        outputs = [m(batched_inputs) for m in self.members]
        scale = len(self.members) ** -0.5
        for i, first in enumerate(outputs[0]):
            feats = [F.normalize(out[i]["instances"].reid_feats, dim=1) for out in outputs]
            first["instances"].reid_feats = torch.cat(feats, dim=1) * scale
        return outputs[0]
