# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Search evaluation of a query-guided model (QEEPS): its gallery detections and their scores
depend on the query, so every query is run against every image of its gallery as one pair pass,
O(queries x gallery) passes. Each query's ranked list is then scored by the same protocol as
:class:`PersonSearchEvaluator` (:func:`search_metrics`), its similarities standing in for the
features. The gallery of a query may be restricted to the top-N images of a query-agnostic model
(:func:`top_gallery_images`), an option for speed that is off by default: the images left out
still count their ground truth, so a person missed by the pre-filter is a miss. Under several
processes (detectron2's launcher) the pairs are shared among them and the main process scores.
"""

from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from tqdm import tqdm

from detectron2.data import DatasetCatalog
from detectron2.utils import comm

from .metrics import image_ground_truth, query_gallery, search_metrics

__all__ = ["pair_search", "top_gallery_images"]


def _split(dataset_name: str):
    records = DatasetCatalog.get(dataset_name)
    gallery = {r["image_id"]: r for r in records if "query_boxes" not in r}
    queries = sorted((r for r in records if "query_boxes" in r), key=lambda r: r["query_id"])
    if not queries:
        raise ValueError(f"{dataset_name}: has no query (dicts with 'query_boxes')")
    return gallery, queries


def pair_search(
    model,
    dataset_name: str,
    mapper: Callable[[Dict], Dict],
    score: str = "query_similarity",
    batch_size: int = 4,
    search_thresh: float = 0.5,
    top_images: Optional[Dict[int, List]] = None,
) -> Dict:
    """
    Args:
        model: in eval mode, with ``search_pair(queries, galleries)`` (:class:`QEEPS`).
        dataset_name: a registered person-search test set (gallery dicts and query dicts).
        mapper: dataset dict -> model input (detectron2's test :class:`DatasetMapper`).
        score: rank detections by "query_similarity" (QSimNet) or "cosine" (pair-conditioned
            ID features against the query's).
        batch_size: pairs per forward pass.
        search_thresh: detections scoring less are not searched.
        top_images: query_id -> the only gallery image ids to run (e.g.
            :func:`top_gallery_images`); None runs every pair.
    Returns:
        "mAP", "top1", "top5", "top10" (fractions) and "per_query", as :func:`search_metrics`, on
        the main process; {} on the others.
    """
    if score not in ("query_similarity", "cosine"):
        raise ValueError(f"score={score!r}: expected 'query_similarity' or 'cosine'")
    gallery, queries = _split(dataset_name)
    plans = []
    for index, query in enumerate(queries):
        ids = query_gallery(gallery, query, index)
        kept = None if top_images is None else set(top_images[query["query_id"]])
        plans.append((ids, ids if kept is None else [i for i in ids if i in kept]))
    # Every process runs every world_size-th pair; the main process scores them all.
    pairs = [(q, image_id) for q, (_, run) in enumerate(plans) for image_id in run]
    mine = pairs[comm.get_rank() :: comm.get_world_size()]
    found = _run_pairs(model, mapper, queries, gallery, mine, score, batch_size)
    if comm.get_world_size() > 1:
        parts = comm.gather(found, dst=0)
        if not comm.is_main_process():
            return {}
        found = {pair: result for part in parts for pair, result in part.items()}
    # Images not run keep their ground truth with no detection: a miss, not a smaller gallery.
    nothing = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "feats": np.zeros((0, 1))}
    per_query = []
    for q, (query, (ids, _)) in enumerate(zip(queries, plans)):
        searched = {i: dict(image_ground_truth(gallery[i]), **found.get((q, i), nothing))
                    for i in ids}  # fmt: skip
        one = {"image_id": query["image_id"], "pid": query["query_pid"], "feat": np.ones(1),
               "gallery": ids}  # fmt: skip
        per_query += search_metrics(searched, [one], det_thresh=search_thresh)["per_query"]
    results = {"mAP": float(np.mean([q["ap"] for q in per_query]))}
    for k in (1, 5, 10):
        results[f"top{k}"] = float(np.mean([q[f"top{k}"] for q in per_query]))
    results["per_query"] = per_query
    return results


def _run_pairs(model, mapper, queries, gallery, pairs, score, batch_size) -> Dict:
    """
    (query index, gallery image id) -> {"boxes" (D, 4), "scores" (D,), "feats" (D, 1): the
    query similarity of each detection} for each pair of ``pairs``, ``batch_size`` per pass.
    """
    query_inputs = {}  # the mapped query images of the current batch
    found = {}
    # With several processes each shows its own share; the main one's bar stands for all.
    main = comm.is_main_process()
    progress = tqdm(total=len(pairs), desc="query-gallery pairs", disable=not main)
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start : start + batch_size]
        # A query's pairs are consecutive: each query image is mapped once and then dropped.
        query_inputs = {q: query_inputs.get(q) or mapper(queries[q]) for q, _ in batch}
        results = model.search_pair(
            [query_inputs[q] for q, _ in batch], [mapper(gallery[i]) for _, i in batch]
        )
        for pair, result in zip(batch, results):
            detections = result["instances"].to("cpu")
            if score == "query_similarity":
                similarity = detections.query_similarity
            else:
                similarity = detections.reid_feats @ result["query_feat"].cpu()
            found[pair] = {
                "boxes": detections.pred_boxes.tensor.numpy(),
                "scores": detections.scores.numpy(),
                "feats": similarity.float().numpy()[:, None],
            }
        progress.update(len(batch))
    progress.close()
    return found


@torch.no_grad()
def top_gallery_images(
    model, dataset_name: str, mapper: Callable[[Dict], Dict], top_n: int, search_thresh=0.5
) -> Dict[int, List]:
    """
    query_id -> the ``top_n`` images of its gallery whose best detection (score >=
    ``search_thresh``) is most similar to the query, by a query-agnostic person-search model
    (e.g. the OIM model QEEPS started from): one pass per gallery image and per query, shared
    among processes; every process gets the result.
    """
    gallery, queries = _split(dataset_name)
    rank, world = comm.get_rank(), comm.get_world_size()
    best, query_feats = {}, {}  # each process embeds its share of the images and queries
    for image_id in tqdm(list(gallery)[rank::world], desc="pre-filter gallery", disable=rank != 0):
        found = model([mapper(gallery[image_id])])[0]["instances"].to("cpu")
        best[image_id] = found.reid_feats[found.scores >= search_thresh]
    for index in range(rank, len(queries), world):
        query_feats[index] = model([mapper(queries[index])])[0]["instances"].reid_feats[0].cpu()
    if world > 1:
        for part_best, part_queries in comm.all_gather((best, query_feats)):
            best.update(part_best)
            query_feats.update(part_queries)
    top = {}
    for index, query in enumerate(queries):
        ids = query_gallery(gallery, query, index)
        sims = [float((best[i] @ query_feats[index]).max()) if len(best[i]) else -2.0 for i in ids]
        top[query["query_id"]] = [ids[j] for j in np.argsort(sims)[::-1][:top_n]]
    return top
