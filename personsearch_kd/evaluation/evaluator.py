# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
import json
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional

import cv2
import torch
from tabulate import tabulate

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from ..utils.visualization import draw_ranked_matches
from .metrics import detection_metrics, image_ground_truth, search_metrics

__all__ = ["PersonSearchEvaluator"]

logger = logging.getLogger(__name__)


def _merge(dicts: List[Dict]) -> Dict:
    merged = {}
    for d in dicts:
        merged.update(d)
    return merged


class PersonSearchEvaluator(DatasetEvaluator):
    """
    Person search evaluation of a test set made of gallery images (dicts with ``annotations``
    carrying ``person_id``) and queries (dicts with ``query_boxes``, ``query_pid``, ``query_id``
    and optionally ``gallery``, a list of image ids). The model runs on both through the usual
    test loader: gallery images give detections with ``reid_feats``, queries are embedded from
    their ground-truth box by the model's query mode.

    Reports, in percent: search mAP and top-1/5/10 (:func:`search_metrics`), detection AP and
    recall on all persons, recall on labeled ones (:func:`detection_metrics`), and the cross-camera
    search too when the dataset's metadata lists ``"cross_camera"`` in ``search_protocols``.
    """

    def __init__(
        self,
        dataset_name: str,
        search_score_thresh: float = 0.5,
        detection_score_thresh: float = 0.01,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        vis_queries: int = 0,
        vis_topk: int = 5,
        detection_only: bool = False,
    ):
        """
        Args:
            dataset_name: a registered person-search test set.
            search_score_thresh: detections scoring less are not searched (0.5 in the literature).
            detection_score_thresh: detections scoring less are not counted for detection AP.
            distributed: gather the predictions of every process on the main one.
            output_dir: where to write ``search_results.json`` (per-query AP and ranked matches).
            vis_queries: also write the ranked-matches picture of this many queries (the first
                by query id) to ``<output_dir>/ranked_matches/``.
            vis_topk: matches per picture.
            detection_only: evaluate a plain detector (e.g. a KD_det teacher): detection AP and
                recall only; query inputs are ignored (leave them out of the loader).
        """
        self._dataset_name = dataset_name
        self._search_thresh = search_score_thresh
        self._detection_thresh = detection_score_thresh
        self._distributed = distributed
        self._output_dir = output_dir
        self._vis_queries = vis_queries
        self._vis_topk = vis_topk
        self._detection_only = detection_only
        self._protocols = MetadataCatalog.get(dataset_name).get("search_protocols", ("all",))
        records = DatasetCatalog.get(dataset_name)
        self._ground_truth = {}
        self._query_records = {}
        self._file_names = {r["image_id"]: r["file_name"] for r in records}
        for r in records:
            if "query_boxes" in r:
                self._query_records[r["query_id"]] = r
            else:
                self._ground_truth[r["image_id"]] = image_ground_truth(r)
        if detection_only:
            self._query_records = {}
        elif not self._query_records:
            raise ValueError(f"{dataset_name}: has no query (dicts with 'query_boxes')")
        self.reset()

    def reset(self):
        self._detections = {}  # image_id -> boxes, scores, feats of the searchable detections
        self._query_feats = {}  # query_id -> (D,)

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            inst = out["instances"].to("cpu")
            if "query_boxes" in inp:
                if self._detection_only:
                    continue
                self._query_feats[inp["query_id"]] = inst.reid_feats[0].numpy()
                continue
            scores = inst.scores.numpy()
            searchable = scores >= self._search_thresh
            self._detections[inp["image_id"]] = {
                "boxes": inst.pred_boxes.tensor.numpy(),
                "scores": scores,
                "searchable": searchable,
            }
            if not self._detection_only:
                # Features are kept only where they can be searched: memory grows with the
                # gallery.
                feats = inst.reid_feats[torch.from_numpy(searchable)].numpy()
                self._detections[inp["image_id"]]["feats"] = feats

    def evaluate(self):
        if self._distributed:
            comm.synchronize()
            detections = _merge(comm.gather(self._detections, dst=0))
            query_feats = _merge(comm.gather(self._query_feats, dst=0))
            if not comm.is_main_process():
                return {}
        else:
            detections, query_feats = self._detections, self._query_feats
        self._check_complete(detections, query_feats)

        gallery = {}
        for image_id, gt in self._ground_truth.items():
            det = detections[image_id]
            gallery[image_id] = dict(gt, boxes=det["boxes"], scores=det["scores"])
        results = OrderedDict()
        detection = detection_metrics(gallery, det_thresh=self._detection_thresh)
        labeled = detection_metrics(gallery, det_thresh=self._detection_thresh, labeled_only=True)
        results["det_AP"], results["det_recall"] = detection["AP"], detection["recall"]
        # Only the recall: in labeled-only mode detections of unlabeled persons are false
        # positives, which makes that AP meaningless (the reference does not report it either).
        results["det_recall_labeled"] = labeled["recall"]
        if self._detection_only:
            return self._report(results, len(gallery), 0)

        for image_id, det in detections.items():
            keep = det["searchable"]
            gallery[image_id].update(boxes=det["boxes"][keep], scores=det["scores"][keep])
            gallery[image_id]["feats"] = det["feats"]
        queries = [
            {
                "image_id": r["image_id"],
                "pid": r["query_pid"],
                "feat": query_feats[qid],
                "cam_id": r.get("cam_id"),
                "gallery": r.get("gallery"),
            }
            for qid, r in sorted(self._query_records.items())
        ]
        per_protocol = {}
        for protocol in self._protocols:
            cross = protocol == "cross_camera"
            search = search_metrics(
                gallery, queries, det_thresh=self._search_thresh, cross_camera=cross
            )
            suffix = "_cross_cam" if cross else ""
            for key in ("mAP", "top1", "top5", "top10"):
                results[key + suffix] = search[key]
            per_protocol[protocol] = search["per_query"]
        self._write(per_protocol)
        self._draw(queries, per_protocol[self._protocols[0]])
        return self._report(results, len(gallery), len(queries))

    def _report(self, results, num_images: int, num_queries: int):
        """Log the metrics in percent and return them under the key ``person_search``."""
        results = OrderedDict((k, 100.0 * v) for k, v in results.items())
        what = "Detection" if self._detection_only else "Person search"
        logger.info(
            f"{what} on {self._dataset_name} ({num_images} gallery images, "
            f"{num_queries} queries), in %:\n"
            + tabulate(
                [list(results.values())], headers=list(results), floatfmt=".2f", tablefmt="pipe"
            )
        )
        return OrderedDict(person_search=results)

    def _check_complete(self, detections, query_feats):
        missing_images = sorted(set(self._ground_truth) - set(detections))
        missing_queries = sorted(set(self._query_records) - set(query_feats))
        if missing_images or missing_queries:
            raise RuntimeError(
                f"{self._dataset_name}: no prediction for {len(missing_images)} gallery images "
                f"(e.g. {missing_images[:3]}) and {len(missing_queries)} queries "
                f"(e.g. {missing_queries[:3]}); was the whole test set run?"
            )

    def _write(self, per_protocol):
        if not self._output_dir:
            return
        os.makedirs(self._output_dir, exist_ok=True)
        path = os.path.join(self._output_dir, "search_results.json")
        with open(path, "w") as f:
            json.dump(per_protocol, f)
        logger.info(f"Per-query search results written to {path}")

    def _draw(self, queries, per_query):
        if not self._output_dir or self._vis_queries <= 0:
            return
        folder = os.path.join(self._output_dir, "ranked_matches")
        os.makedirs(folder, exist_ok=True)
        query_ids = sorted(self._query_records)[: self._vis_queries]
        for qid, query, result in zip(query_ids, queries, per_query):
            record = self._query_records[qid]
            matches = [
                {
                    "image": read_image(self._file_names[image_id], format="RGB"),
                    "box": box,
                    "score": score,
                    "is_match": is_match,
                }
                for image_id, box, score, is_match in result["ranked"][: self._vis_topk]
            ]
            picture = draw_ranked_matches(
                read_image(record["file_name"], format="RGB"),
                record["query_boxes"][0],
                matches,
                title=f"query {qid} (AP {100 * result['ap']:.1f})",
            )
            name = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(qid))
            cv2.imwrite(os.path.join(folder, f"{name}.jpg"), picture[:, :, ::-1])
        logger.info(f"Ranked matches of {len(query_ids)} queries drawn in {folder}")
