# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np
import torch

from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.engine import DefaultPredictor

from .trained_model import build_trained_student

__all__ = ["PersonSearchPredictor"]


class PersonSearchPredictor(DefaultPredictor):
    """
    detectron2's DefaultPredictor (weights from cfg.MODEL.WEIGHTS, BGR input, test-time resize)
    for a :class:`PersonSearchRCNN`: calling it on a gallery image gives detections with
    ``reid_feats``; :meth:`embed_query` embeds a given box; :meth:`search` ranks a gallery.
    For demos and small galleries: every gallery image is run once per call.

    A distillation config gives its student alone (:func:`build_trained_student`): teacher files
    are not needed.
    """

    def __init__(self, cfg):
        # DefaultPredictor.__init__'s fields, with the model of the tools' one builder.
        self.cfg = cfg.clone()
        self.model = build_trained_student(cfg, cfg.MODEL.WEIGHTS)
        if len(cfg.DATASETS.TEST):
            self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        self.aug = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
        self.input_format = cfg.INPUT.FORMAT

    def _inputs(self, original_image: np.ndarray) -> Dict:
        if self.input_format == "RGB":
            original_image = original_image[:, :, ::-1]
        height, width = original_image.shape[:2]
        image = self.aug.get_transform(original_image).apply_image(original_image)
        image = torch.as_tensor(image.astype("float32").transpose(2, 0, 1))
        return {"image": image, "height": height, "width": width}

    def detect_batch(self, original_images: Sequence[np.ndarray]) -> List:
        """
        Detections of several gallery images in one forward pass (batched inference).

        Args:
            original_images: (H_i, W_i, 3) BGR images.
        Returns:
            per image, its Instances (on the CPU) as :meth:`__call__` gives them.
        """
        with torch.no_grad():
            outputs = self.model([self._inputs(image) for image in original_images])
        return [output["instances"].to("cpu") for output in outputs]

    def embed_query(self, original_image: np.ndarray, box: Sequence[float]) -> torch.Tensor:
        """
        Args:
            original_image: (H, W, 3) BGR image.
            box: the query person's (x0, y0, x1, y1) in that image's pixels.

        Returns:
            (D,) L2-normalised ID embedding of the box.
        """
        inputs = dict(self._inputs(original_image), query_boxes=[list(map(float, box))])
        with torch.no_grad():
            return self.model([inputs])[0]["instances"].reid_feats[0].cpu()

    def search(
        self,
        query_image: np.ndarray,
        query_box: Sequence[float],
        gallery: Iterable[Tuple[str, np.ndarray]],
        topk: int = 5,
        score_thresh: float = 0.5,
    ) -> List[Dict]:
        """
        Args:
            query_image, query_box: as in :meth:`embed_query`.
            gallery: (name, (H, W, 3) BGR image) pairs.
            topk: number of matches returned.
            score_thresh: detections scoring less are not searched (0.5 in the literature).

        Returns:
            Up to ``topk`` dicts {"name", "box" (x0, y0, x1, y1), "score" (cosine similarity),
            "det_score"}, most similar first, at most one per gallery image (its most similar
            detection).
        """
        query = self.embed_query(query_image, query_box)
        best = []
        for name, image in gallery:
            with torch.no_grad():
                inst = self.model([self._inputs(image)])[0]["instances"].to("cpu")
            inst = inst[inst.scores >= score_thresh]
            if len(inst) == 0:
                continue
            sims = inst.reid_feats @ query
            i = int(sims.argmax())
            best.append(
                {
                    "name": name,
                    "box": inst.pred_boxes.tensor[i].tolist(),
                    "score": float(sims[i]),
                    "det_score": float(inst.scores[i]),
                }
            )
        return sorted(best, key=lambda m: -m["score"])[:topk]
