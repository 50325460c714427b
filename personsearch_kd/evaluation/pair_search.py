# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Search evaluation of a query-guided model (QEEPS): its gallery detections and their scores
depend on the query, so every query is run against every image of its gallery as one pair pass,
O(queries x gallery) passes. Each query's ranked list is then scored by the same protocol as
:class:`PersonSearchEvaluator` (:func:`search_metrics`), its similarities standing in for the
features. The gallery of a query may be restricted to the top-N images of a query-agnostic model
(:func:`prefilter_search`), an option for speed that is off by default: the images left out
still count their ground truth, so a person missed by the pre-filter is a miss, and the
pre-filter's own search of the same images is the comparable baseline; any other query-agnostic
model can be searched on the same images (:func:`restricted_search`). Under several
processes (detectron2's launcher) the pairs are shared among them and the main process scores.
A :class:`PairCache` keeps the pair results as they come, so a stopped evaluation resumes.
"""

import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from detectron2.data import DatasetCatalog
from detectron2.utils import comm

from .metrics import detection_metrics, image_ground_truth, query_gallery, search_metrics
from .pair_cache import PairCache

__all__ = ["PAIR_SCORES", "pair_search", "prefilter_search", "restricted_search"]

# How a query-guided model's detections are ranked: QSimNet's probability, or the cosine of the
# pair-conditioned ID features with the query's.
PAIR_SCORES = ("query_similarity", "cosine")


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
    scores: Sequence[str] = ("query_similarity",),
    batch_size: int = 4,
    search_thresh: float = 0.5,
    top_images: Optional[Dict[int, List]] = None,
    detection_thresh: float = 0.01,
    cache: Optional[PairCache] = None,
) -> Dict[str, Dict]:
    """
    Args:
        model: in eval mode, with ``search_pair(queries, galleries)`` (:class:`QEEPS`).
        dataset_name: a registered person-search test set (gallery dicts and query dicts).
        mapper: dataset dict -> model input (detectron2's test :class:`DatasetMapper`).
        scores: any of :data:`PAIR_SCORES`; all come from the same pair passes.
        batch_size: pairs per forward pass.
        search_thresh: detections scoring less are not searched.
        top_images: query_id -> the only gallery image ids to run (e.g. the first result of
            :func:`prefilter_search`); None runs every pair.
        detection_thresh: detections scoring less are not counted for detection AP.
        cache: where the pair results are saved as they come; the pairs it already holds are
            not run again (a stopped evaluation resumes).
    Returns:
        score -> "mAP", "top1", "top5", "top10" (fractions) and "per_query", as
        :func:`search_metrics`; "det_AP" and "det_recall" (fractions) of the detections over the
        pairs run, each pair one image (:func:`detection_metrics`; the query-conditioned
        detector's, the same for every score); "pairs" (how many were run) and "seconds" (their
        wall time, all processes together); on the main process, {} on the others.
    """
    unknown = [score for score in scores if score not in PAIR_SCORES]
    if unknown or not scores:
        raise ValueError(f"scores={list(scores)!r}: expected one or more of {PAIR_SCORES}")
    gallery, queries = _split(dataset_name)
    plans = []
    for index, query in enumerate(queries):
        ids = query_gallery(gallery, query, index)
        kept = None if top_images is None else set(top_images[query["query_id"]])
        plans.append((ids, ids if kept is None else [i for i in ids if i in kept]))
    pairs = [(q, image_id) for q, (_, run) in enumerate(plans) for image_id in run]
    done = {}
    if cache is not None:
        # Only this evaluation's pairs: a cache made with another --top-n may hold others.
        wanted = set(pairs)
        done = {pair: r for pair, r in cache.load().items() if pair in wanted}
        comm.synchronize()  # every process has read the files before any rewrites its own
    todo = [pair for pair in pairs if pair not in done]
    # Every process runs every world_size-th pair; the main process scores them all.
    mine = todo[comm.get_rank() :: comm.get_world_size()]
    start = time.perf_counter()
    found = _run_pairs(model, mapper, queries, gallery, mine, batch_size, cache)
    if comm.get_world_size() > 1:
        parts = comm.gather(found, dst=0)
        if not comm.is_main_process():
            return {}
        found = {pair: result for part in parts for pair, result in part.items()}
    found.update(done)
    cost = {"pairs": len(pairs), "pairs_run": len(todo), "seconds": time.perf_counter() - start}
    galleries = [ids for ids, _ in plans]
    # The detections are the same for every score: detection is scored once.
    detection = _detection(found, gallery, detection_thresh)
    results = {}
    for score in scores:
        ranked = {pair: dict(r, feats=r[score]) for pair, r in found.items()}
        metrics = _score(ranked, gallery, queries, galleries, search_thresh)
        results[score] = dict(metrics, **detection, **cost)
    return results


def _score(found, gallery, queries, galleries, search_thresh) -> Dict:
    """
    The protocol's metrics of ranked pairs. ``found``: (query index, image id) -> "boxes" (D, 4),
    "scores" (D,), "feats" (D, 1) the similarity to the query; ``galleries``: each query's
    gallery image ids.
    """
    # Images not run keep their ground truth with no detection: a miss, not a smaller gallery.
    nothing = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "feats": np.zeros((0, 1))}
    per_query = []
    for q, (query, ids) in enumerate(zip(queries, galleries)):
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


def _detection(found, gallery, detection_thresh) -> Dict:
    """
    "det_AP" and "det_recall" of the pairs' detections (``found`` as :func:`_score`'s). Each
    pair run counts as one image: an image is detected once per query that ran it, so rows that
    ran the same pairs (a pair evaluation and its pre-filter) are comparable.
    """
    per_pair = {pair: dict(image_ground_truth(gallery[pair[1]]), **r) for pair, r in found.items()}
    detection = detection_metrics(per_pair, det_thresh=detection_thresh)
    return {"det_AP": detection["AP"], "det_recall": detection["recall"]}


def _run_pairs(model, mapper, queries, gallery, pairs, batch_size, cache) -> Dict:
    """
    (query index, gallery image id) -> {"boxes" (D, 4), "scores" (D,), and for each of
    :data:`PAIR_SCORES` (D, 1): the query similarity of each detection} for each pair of
    ``pairs``, ``batch_size`` per pass; each batch's results go to ``cache`` (if not None).
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
            cosine = detections.reid_feats @ result["query_feat"].cpu()
            found[pair] = {
                "boxes": detections.pred_boxes.tensor.numpy(),
                "scores": detections.scores.numpy(),
                "query_similarity": detections.query_similarity.float().numpy()[:, None],
                "cosine": cosine.float().numpy()[:, None],
            }
        if cache is not None:
            cache.add({pair: found[pair] for pair in batch})
        progress.update(len(batch))
    progress.close()
    if cache is not None:
        cache.add({}, flush=True)
    return found


@torch.no_grad()
def prefilter_search(
    model,
    dataset_name: str,
    mapper: Callable[[Dict], Dict],
    top_n: int,
    search_thresh=0.5,
    detection_thresh=0.01,
) -> Tuple[Dict[int, List], Dict]:
    """
    The pre-filter of the pair evaluation, and its own search on the images it keeps: the same
    candidates without the query's guidance, the baseline that a restricted pair evaluation is
    comparable with (its misses are the same).

    Args:
        model: a query-agnostic person-search model in eval mode (e.g. the OIM model QEEPS
            started from): one pass per gallery image and per query, shared among processes.
        top_n: gallery images kept per query (0: all of them).
    Returns:
        query_id -> the ``top_n`` images of its gallery whose best detection (score >=
        ``search_thresh``) is most similar to the query, best first (every process); and the
        model's metrics, as :func:`pair_search`'s, with each query's gallery restricted to those
        images (main process; {} on the others).
    """

    def best_images(query_id, ids, best):
        return [ids[j] for j in np.argsort(best, kind="stable")[::-1][: top_n or len(ids)]]

    return _query_agnostic_search(
        model, dataset_name, mapper, search_thresh, detection_thresh, best_images
    )


@torch.no_grad()
def restricted_search(
    model,
    dataset_name: str,
    mapper: Callable[[Dict], Dict],
    top_images: Optional[Dict[int, List]] = None,
    search_thresh=0.5,
    detection_thresh=0.01,
) -> Dict:
    """
    A query-agnostic model's search of only the given gallery images of each query, e.g. those
    another model's :func:`prefilter_search` kept: a second baseline on the same candidates (such
    as an OIM model trained as many extra steps as QEEPS, without the query's guidance).

    Args:
        model: as :func:`prefilter_search`'s.
        top_images: query_id -> the gallery image ids to search; None searches every image.
    Returns:
        the model's metrics, as :func:`pair_search`'s (main process; {} on the others).
    """

    def given_images(query_id, ids, best):
        if top_images is None:
            return ids
        if query_id not in top_images:
            raise KeyError(f"{dataset_name}: top_images has no entry for query_id {query_id}")
        outside = set(top_images[query_id]) - set(ids)
        if outside:
            raise ValueError(
                f"{dataset_name}: top_images[{query_id}] holds images outside the query's "
                f"gallery: {sorted(outside)}"
            )
        return list(top_images[query_id])

    return _query_agnostic_search(
        model, dataset_name, mapper, search_thresh, detection_thresh, given_images
    )[1]


def _query_agnostic_search(model, dataset_name, mapper, search_thresh, detection_thresh, choose):
    """
    One pass per gallery image and per query, shared among processes; then, for each query,
    ``choose(query_id, gallery ids, best similarity per image)`` names the images searched.
    Returns (query_id -> chosen ids, on every process; their search's metrics, on the main one).
    """
    gallery, queries = _split(dataset_name)
    rank, world = comm.get_rank(), comm.get_world_size()
    detections, query_feats = {}, {}  # each process embeds its share of the images and queries
    for image_id in tqdm(list(gallery)[rank::world], desc="query-agnostic gallery",
                         disable=rank != 0):  # fmt: skip
        found = model([mapper(gallery[image_id])])[0]["instances"].to("cpu")
        detections[image_id] = (found.pred_boxes.tensor, found.scores, found.reid_feats.float())
    for index in range(rank, len(queries), world):
        query_feats[index] = model([mapper(queries[index])])[0]["instances"].reid_feats[0].cpu()
    if world > 1:
        for part_detections, part_queries in comm.all_gather((detections, query_feats)):
            detections.update(part_detections)
            query_feats.update(part_queries)
    chosen, found, galleries = {}, {}, []
    for index, query in enumerate(queries):
        ids = query_gallery(gallery, query, index)
        galleries.append(ids)
        sims = {i: detections[i][2] @ query_feats[index].float() for i in ids}
        best = []
        for image_id in ids:
            searched = sims[image_id][detections[image_id][1] >= search_thresh]
            best.append(float(searched.max()) if len(searched) else -2.0)
        chosen[query["query_id"]] = choose(query["query_id"], ids, best)
        # Only the chosen images are searched; the others keep their ground truth, as misses.
        for image_id in chosen[query["query_id"]]:
            boxes, scores, _ = detections[image_id]
            similarity = sims[image_id].numpy()[:, None]
            found[(index, image_id)] = {
                "boxes": boxes.numpy(), "scores": scores.numpy(), "feats": similarity
            }  # fmt: skip
    if not comm.is_main_process():
        return chosen, {}
    metrics = _score(found, gallery, queries, galleries, search_thresh)
    return chosen, dict(metrics, **_detection(found, gallery, detection_thresh))
