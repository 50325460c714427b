# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
from typing import Dict, List

import torch

from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.structures import Boxes, Instances

__all__ = ["PersonSearchRCNN"]


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
    ``reid_feats`` (K, EMBED_DIM).
    """

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        """
        See :meth:`GeneralizedRCNN.forward`; in inference, inputs with ``"query_boxes"`` run
        :meth:`embed_query_boxes`.
        """
        if not self.training:
            with_query = ["query_boxes" in x for x in batched_inputs]
            if any(with_query):
                if not all(with_query):
                    raise ValueError(
                        "PersonSearchRCNN: either every input of a batch has 'query_boxes' "
                        f"(query mode) or none has; got {with_query}"
                    )
                return self.embed_query_boxes(batched_inputs)
        return super().forward(batched_inputs)

    def embed_query_boxes(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        """
        Args:
            batched_inputs: dicts with ``image`` (C, H', W') as in :meth:`forward`, optional
                ``height``/``width`` of the original image and ``query_boxes`` (K, 4) XYXY in
                original-image coordinates.

        Returns:
            list[dict]: ``{"instances": Instances}`` per input, of the original image size, with
            ``pred_boxes`` (the given boxes), ``scores`` (K,) ones and ``reid_feats`` (K, D).
        """
        assert not self.training
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        given, scaled = [], []
        for inputs, (input_h, input_w) in zip(batched_inputs, images.image_sizes):
            boxes = torch.as_tensor(inputs["query_boxes"], dtype=torch.float32, device=self.device)
            if boxes.dim() != 2 or boxes.shape[1] != 4:
                raise ValueError(
                    f"query_boxes of {inputs.get('file_name', 'an input')}: expected shape (K, 4) "
                    f"XYXY, got {tuple(boxes.shape)}"
                )
            height, width = inputs.get("height", input_h), inputs.get("width", input_w)
            # Inverse of detector_postprocess: original-image -> network-input coordinates.
            scale = boxes.new_tensor([input_w / width, input_h / height] * 2)
            inst = Instances((input_h, input_w))
            inst.pred_boxes = Boxes(boxes * scale)
            scaled.append(inst)
            given.append((boxes, (height, width)))
        scaled = self.roi_heads.forward_with_given_boxes(features, scaled)
        results = []
        for (boxes, image_size), inst in zip(given, scaled):
            out = Instances(image_size)
            out.pred_boxes = Boxes(boxes)
            out.scores = boxes.new_ones(len(boxes))
            out.reid_feats = inst.reid_feats
            results.append({"instances": out})
        return results
