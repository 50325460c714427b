# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
The person-search evaluation protocol of the literature (OIM, NAE, SeqNet's eval_func.py), as pure
numpy functions over plain arrays so that they can be checked against any other implementation.

Search (per query): cosine similarity of the query feature with every gallery detection scoring
>= det_thresh; in a gallery image holding the query person, only the most similar detection with
IoU >= min(0.5, w*h / ((w+10)*(h+10))) to that person's box is a positive; AP is the ranking AP
scaled by the fraction of the gallery images holding the person that were found; top-k says
whether a positive is among the k most similar detections.
"""

from typing import Dict, Iterable, List, Sequence

import numpy as np

__all__ = ["average_precision", "box_iou", "search_metrics", "detection_metrics"]


def average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """
    Non-interpolated average precision of a ranking, equal to scikit-learn's
    ``average_precision_score``: sum over distinct score thresholds (high to low) of
    (recall gain) x precision; tied scores form one threshold.

    Args:
        y_true: (N,) 0/1 labels.
        y_score: (N,) scores, higher = more confident.
    Returns:
        float: AP in [0, 1]; 0 when there is no positive.
    """
    y_true = np.asarray(y_true, dtype=np.float64).ravel()
    y_score = np.asarray(y_score, dtype=np.float64).ravel()
    if y_true.size == 0 or y_true.sum() == 0:
        return 0.0
    order = np.argsort(y_score, kind="mergesort")[::-1]
    y_score, y_true = y_score[order], y_true[order]
    # Last index of each run of equal scores.
    thresholds = np.r_[np.where(np.diff(y_score))[0], y_true.size - 1]
    tps = np.cumsum(y_true)[thresholds]
    precision = tps / (thresholds + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """
    Args:
        a: (M, 4), b: (N, 4) XYXY boxes in continuous coordinates (no +1).
    Returns:
        (M, N) float64 IoU.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    width = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    height = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(width, 0, None) * np.clip(height, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def image_ground_truth(record: Dict) -> Dict:
    """A gallery image's dataset dict -> {"gt_boxes": (G, 4) XYXY, "gt_pids": (G,), "cam_id"}."""
    annos = record["annotations"]
    return {
        "gt_boxes": np.array([a["bbox"] for a in annos], dtype=np.float64).reshape(-1, 4),
        "gt_pids": np.array([a["person_id"] for a in annos], dtype=np.int64),
        "cam_id": record.get("cam_id"),
    }


def query_gallery(gallery: Dict, query: Dict, index: int, cross_camera: bool = False) -> List:
    """Image ids searched for one query: its own list, or every gallery image but its own."""
    image_ids = query.get("gallery")
    if image_ids is None:
        image_ids = [i for i in gallery if i != query["image_id"]]
    else:
        missing = [i for i in image_ids if i not in gallery]
        if missing:
            raise KeyError(f"query {index}: gallery image ids {missing[:5]} are not in `gallery`")
        if len(set(image_ids)) != len(image_ids):
            raise ValueError(f"query {index}: its 'gallery' list repeats image ids")
    if cross_camera:
        if query.get("cam_id") is None:
            raise ValueError(f"query {index}: cross_camera=True needs 'cam_id' on every query")
        for i in image_ids:
            if gallery[i].get("cam_id") is None:
                raise ValueError(f"gallery image {i!r}: cross_camera=True needs its 'cam_id'")
        image_ids = [i for i in image_ids if gallery[i]["cam_id"] != query["cam_id"]]
    return image_ids


def search_metrics(
    gallery: Dict,
    queries: Sequence[Dict],
    det_thresh: float = 0.5,
    topk: Iterable[int] = (1, 5, 10),
    cross_camera: bool = False,
) -> Dict:
    """
    Args:
        gallery: image_id -> {"gt_boxes": (G, 4) XYXY, "gt_pids": (G,) int (-1 unlabeled),
            "boxes": (N, 4) XYXY detections, "scores": (N,), "feats": (N, D), "cam_id": optional}.
        queries: list of {"image_id", "pid", "feat": (D,), "cam_id": optional, "gallery": optional
            list of image ids (the per-query gallery; default: every gallery image except the
            query's own)}.
        det_thresh: detections scoring below it are not searched.
        topk: ranks for the top-k accuracy.
        cross_camera: search only gallery images of another camera than the query's.

    Returns:
        dict: "mAP", "top{k}" for each k (fractions in [0, 1]), and "per_query": one dict per
        query with "ap", "top{k}" (0/1), "count_gt", "count_tp" and "ranked" (the 10 most similar
        detections as (image_id, box, similarity, is_match)).
    """
    topk = tuple(topk)
    kept = {}
    for image_id, g in gallery.items():
        keep = np.asarray(g["scores"]).ravel() >= det_thresh
        boxes = np.asarray(g["boxes"], dtype=np.float64).reshape(-1, 4)[keep]
        kept[image_id] = (boxes, np.asarray(g["feats"])[keep])

    per_query = []
    for index, query in enumerate(queries):
        pid, feat = query["pid"], np.asarray(query["feat"]).ravel()
        labels, sims, ranked_from = [], [], []
        count_gt = count_tp = 0
        for image_id in query_gallery(gallery, query, index, cross_camera):
            g = gallery[image_id]
            gt_boxes = np.asarray(g["gt_boxes"], dtype=np.float64).reshape(-1, 4)
            gt_boxes = gt_boxes[np.asarray(g["gt_pids"]).ravel() == pid]
            if len(gt_boxes) > 1:
                raise ValueError(f"gallery image {image_id!r}: person id {pid} appears twice")
            count_gt += len(gt_boxes)
            boxes, feats = kept[image_id]
            if len(boxes) == 0:
                continue
            sim = feats @ feat
            label = np.zeros(len(sim), dtype=np.int64)
            if len(gt_boxes):
                order = np.argsort(sim)[::-1]
                sim, boxes = sim[order], boxes[order]
                w, h = gt_boxes[0, 2] - gt_boxes[0, 0], gt_boxes[0, 3] - gt_boxes[0, 1]
                iou_thresh = min(0.5, w * h / ((w + 10) * (h + 10)))
                hits = np.nonzero(box_iou(boxes, gt_boxes)[:, 0] >= iou_thresh)[0]
                if len(hits):
                    label[hits[0]] = 1
                    count_tp += 1
            labels.append(label)
            sims.append(sim)
            ranked_from.extend((image_id, box) for box in boxes)
        if count_gt == 0:
            raise ValueError(
                f"query {index} (pid {pid}, image {query['image_id']!r}): no image of its gallery "
                "holds this person, so its AP is undefined"
            )
        y_true = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
        y_score = np.concatenate(sims) if sims else np.zeros(0)
        ap = 0.0 if count_tp == 0 else average_precision(y_true, y_score) * count_tp / count_gt
        order = np.argsort(y_score)[::-1]
        result = {"ap": ap, "count_gt": count_gt, "count_tp": count_tp}
        for k in topk:
            result[f"top{k}"] = float(min(1, y_true[order[:k]].sum()))
        result["ranked"] = [
            (ranked_from[j][0], ranked_from[j][1].tolist(), float(y_score[j]), bool(y_true[j]))
            for j in order[:10]
        ]
        per_query.append(result)

    if not per_query:
        raise ValueError("search_metrics: no query given")
    out = {"mAP": float(np.mean([q["ap"] for q in per_query]))}
    for k in topk:
        out[f"top{k}"] = float(np.mean([q[f"top{k}"] for q in per_query]))
    out["per_query"] = per_query
    return out


def detection_metrics(
    gallery: Dict, det_thresh: float = 0.01, iou_thresh: float = 0.5, labeled_only: bool = False
) -> Dict:
    """
    Person detection AP and recall with one-to-one matching: a detection and a ground-truth box
    match when each is the other's highest-IoU partner and IoU >= iou_thresh. AP is the ranking
    AP of all detections scaled by the recall.

    Args:
        gallery: image_id -> {"gt_boxes", "gt_pids", "boxes", "scores"} as in
            :func:`search_metrics`.
        det_thresh: detections scoring below it are dropped.
        iou_thresh: IoU needed for a match.
        labeled_only: count only labeled persons (pid >= 0) as ground truth; images without
            any are left out, their detections too (as in the reference).

    Returns:
        dict: {"AP": float, "recall": float}.
    """
    y_true, y_score = [], []
    count_gt = count_tp = 0
    for image_id, g in gallery.items():
        gt_boxes = np.asarray(g["gt_boxes"], dtype=np.float64).reshape(-1, 4)
        if labeled_only:
            gt_boxes = gt_boxes[np.asarray(g["gt_pids"]).ravel() >= 0]
            if len(gt_boxes) == 0:
                continue
        scores = np.asarray(g["scores"], dtype=np.float64).ravel()
        keep = scores >= det_thresh
        boxes = np.asarray(g["boxes"], dtype=np.float64).reshape(-1, 4)[keep]
        scores = scores[keep]
        count_gt += len(gt_boxes)
        if len(boxes) == 0:
            continue
        matched = np.zeros(len(boxes), dtype=bool)
        if len(gt_boxes):
            # float32 as in the reference, whose IoU matrix is float32.
            ious = box_iou(gt_boxes, boxes).astype(np.float32)
            best_gt = ious.argmax(axis=0)
            best_det = ious.argmax(axis=1)
            rows, cols = np.arange(len(gt_boxes))[:, None], np.arange(len(boxes))[None, :]
            match = (ious >= iou_thresh) & (rows == best_gt[None, :]) & (cols == best_det[:, None])
            matched = match.any(axis=0)
            count_tp += int(match.sum())
        y_true.append(matched)
        y_score.append(scores)
    if count_gt == 0:
        raise ValueError("detection_metrics: the gallery holds no ground-truth person")
    recall = count_tp / count_gt
    y_true = np.concatenate(y_true) if y_true else np.zeros(0)
    y_score = np.concatenate(y_score) if y_score else np.zeros(0)
    return {"AP": average_precision(y_true, y_score) * recall, "recall": recall}
