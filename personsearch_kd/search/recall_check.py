# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
The recall self-check of an approximate gallery index: what recall@10 its search parameters give
on this index's own features, and the cheapest setting that reaches a target within a latency
budget. What an approximate index finds depends on the features (a trained model's are
concentrated and easy; structureless ones are hard: docs/search.md), which a user cannot know
in advance; so the index measures itself once it is built, and records the result.

The queries are rows of the index (sampled; each query's own row is left out of its ranking),
the ground truth their exact top-10 by brute force over every row's feature (faiss's blocked
matrix products: memory stays bounded at millions of rows). Exact features come from the caller,
or from the rows :meth:`GalleryIndex.merge` added (the shards are exact), or else are decoded
from the index's codes (exact for ``IVF*,Flat`` and ``HNSW*``, quantised for SQ/PQ codes; the
record says which).
"""

import logging
import re
import time
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from .index_files import GalleryIndexError, _faiss

__all__ = ["check_recall", "describe_recall", "search_parameter_ladder"]

logger = logging.getLogger(__name__)

K = 10
# Rows per block of the exact search and of the features decoded from an index.
BLOCK = 1 << 17
# The most efSearch tried for an HNSW index (its search time grows about linearly with it).
MAX_EF_SEARCH = 8192


def search_parameter_ladder(factory: str, search_params: str, rows: int) -> List[str]:
    """
    The search-parameter settings tried, in order: ``search_params`` first, then its nprobe (IVF
    types; up to the number of lists, where every list is scanned) or efSearch (HNSW; up to
    8192 or the number of rows) doubled each time; other settings in ``search_params`` are kept.
    One setting for types with no such parameter (e.g. "PQ32").
    """
    ivf = re.search(r"IVF(\d+)", factory)
    if ivf:
        name, default, limit = "nprobe", 1, int(ivf.group(1))
    elif "HNSW" in factory:
        name, default, limit = "efSearch", 16, max(16, min(MAX_EF_SEARCH, rows))
    else:
        return [search_params]
    others = [p for p in search_params.split(",") if p and not p.startswith(name + "=")]
    ours = [p for p in search_params.split(",") if p.startswith(name + "=")]
    value = int(float(ours[-1].split("=", 1)[1])) if ours else default
    values = [value]
    while values[-1] < limit:
        values.append(min(limit, 2 * values[-1]))
    return [",".join(others + [f"{name}={v}"]) for v in values]


@contextmanager
def _decodable(index, needed: bool) -> Iterator:
    """
    The CPU faiss index of ``index``, able to decode rows (an IVF index's row map made, and
    removed again after); None where nothing is to be decoded.
    """
    if not needed:
        yield None
        return
    faiss = _faiss()
    cpu = faiss.index_gpu_to_cpu(index.index) if index.on_gpus else index.index
    try:
        ivf = faiss.extract_index_ivf(cpu)
    except RuntimeError:  # not an IVF index: rows decode without a map
        ivf = None
    made = ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap
    if made:
        ivf.make_direct_map()
    try:
        yield cpu
    finally:
        if made:
            ivf.make_direct_map(False)  # as it was: the saved index stays the same


def _segments(index, features: Optional[np.ndarray]) -> List[Tuple[int, np.ndarray]]:
    """(first row, exact features) pieces, sorted and disjoint; rows outside them are decoded."""
    if features is not None:
        features = np.ascontiguousarray(features, np.float32)
        if features.shape != (len(index), index.dim):
            raise ValueError(f"features {features.shape}: expected ({len(index)}, {index.dim})")
        return [(0, features)]
    return sorted(index._exact_segments, key=lambda s: s[0])


def _blocks(segments, decoder, rows: int) -> Iterator[Tuple[int, np.ndarray]]:
    """Every row's feature once, as (first row, block): exact pieces, decoded gaps."""
    position = 0
    for first, feats in segments + [(rows, None)]:
        for start in range(position, first, BLOCK):  # a gap: decoded from the index
            yield start, decoder.reconstruct_n(start, min(BLOCK, first - start))
        if feats is not None:
            for start in range(0, len(feats), BLOCK):
                yield first + start, feats[start : start + BLOCK]
            position = first + len(feats)


def _row_features(rows: np.ndarray, segments, decoder, dim: int) -> np.ndarray:
    """The features of ``rows``: exact where a segment holds them, else decoded."""
    out = np.empty((len(rows), dim), np.float32)
    firsts = np.array([first for first, _ in segments], np.int64)
    for i, row in enumerate(rows.tolist()):
        j = int(np.searchsorted(firsts, row, side="right")) - 1
        if j >= 0 and row < firsts[j] + len(segments[j][1]):
            out[i] = segments[j][1][row - firsts[j]]
        else:
            out[i] = decoder.reconstruct(row)
    return out


def _exact_neighbours(queries: np.ndarray, blocks, k: int) -> np.ndarray:
    """(Q, k) row ids of the exact top-k by inner product over all blocks."""
    faiss = _faiss()
    best_sims = np.full((len(queries), 0), -np.inf, np.float32)
    best_ids = np.zeros((len(queries), 0), np.int64)
    for first, block in blocks:
        sims, ids = faiss.knn(
            queries, np.ascontiguousarray(block, np.float32), min(k, len(block)),
            metric=faiss.METRIC_INNER_PRODUCT,
        )  # fmt: skip
        sims, ids = np.concatenate([best_sims, sims], 1), np.concatenate([best_ids, ids + first], 1)
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        best_sims, best_ids = np.take_along_axis(sims, order, 1), np.take_along_axis(ids, order, 1)
    return best_ids


def _without(ids: np.ndarray, rows: np.ndarray, k: int) -> List[set]:
    """Per query the first k ids of its ranking, its own row left out."""
    return [set([i for i in line.tolist() if i != row][:k]) for line, row in zip(ids, rows)]


def _p50_ms(index, queries: np.ndarray) -> float:
    """Median time of one ``GalleryIndex.search`` (top-10, one match per image), one thread."""
    faiss = _faiss()
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        index.search(queries[:3], index.model, topk=K)  # warm up
        times = []
        for query in queries:
            start = time.perf_counter()
            index.search(query, index.model, topk=K)
            times.append(time.perf_counter() - start)
    finally:
        faiss.omp_set_num_threads(threads)
    return float(np.median(times) * 1000.0)


def check_recall(
    index,
    target: float = 0.95,
    budget_ms: float = 20.0,
    features: Optional[np.ndarray] = None,
    num_queries: int = 1000,
    latency_queries: int = 100,
    seed: int = 0,
) -> Optional[Dict]:
    """
    Measure recall@10 of ``index`` (a :class:`GalleryIndex`) against exact search on a sample
    of its own rows, and raise its search parameter (:func:`search_parameter_ladder`) until
    recall@10 reaches ``target`` or one query's search (p50, one thread) would exceed
    ``budget_ms``. The setting chosen is set on the index (the first that reaches the target;
    if none does, the best within the budget, with a warning; if even the first exceeds the
    budget, the first) and recorded as ``index.recall_check`` (saved in index.json).

    Args:
        features: (N, D) the exact features of every row, in row order; None: the rows that
            :meth:`GalleryIndex.merge` added, the others decoded from the index.
        num_queries: rows sampled as queries for recall; the first ``latency_queries`` of them
            are timed.
        seed: of the sample.

    Returns:
        the record (also ``index.recall_check``): {"recall_at_10", "search_params", "target",
        "reached", "p50_ms", "budget_ms", "queries", "rows", "ground_truth", "tried" (every
        setting measured: search_params, p50_ms, recall_at_10 (None when over the budget))};
        None, recorded as None, where search is exact (a Flat index, or one not trained yet:
        its rows are searched exactly) or ``target`` <= 0 (no check; nothing changes).
    """
    if index.read_only:
        raise GalleryIndexError("check_recall sets search parameters: the index is read-only")
    if target <= 0:
        return index.recall_check
    rows = index.index.ntotal
    if index.factory == "Flat" or index._num_pending or rows <= 1:
        index.recall_check = None
        return None
    k = min(K, rows - 1)
    segments = _segments(index, features)
    exact_rows = sum(len(f) for _, f in segments)
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(rows, min(num_queries, rows), replace=False))
    with _decodable(index, exact_rows < rows) as decoder:
        queries = _row_features(picked, segments, decoder, index.dim)
        ranked = _exact_neighbours(queries, _blocks(segments, decoder, rows), k + 1)
    exact = _without(ranked, picked, k)
    ground_truth = "exact features"
    if exact_rows < rows:  # "decoded": exact for IVF*,Flat and HNSW*, quantised for SQ, PQ codes
        ground_truth = f"features decoded from the index for {rows - exact_rows} of {rows} rows"
    tried, chosen = [], None
    for params in search_parameter_ladder(index.factory, index.search_params, rows):
        index._apply_search_params(params)
        p50 = _p50_ms(index, queries[:latency_queries])
        entry = {"search_params": params, "p50_ms": round(p50, 3), "recall_at_10": None}
        tried.append(entry)
        if p50 > budget_ms and chosen is not None:
            break  # over the budget: the settings after it are slower still
        _, found = index.index.search(queries, k + 1)
        hits = [len(f & e) for f, e in zip(_without(found, picked, k), exact)]
        entry["recall_at_10"] = round(float(np.mean(hits)) / k, 4)
        if chosen is None or entry["recall_at_10"] > chosen["recall_at_10"]:
            chosen = entry  # the first; later ones only within the budget (see above)
        if entry["recall_at_10"] >= target or p50 > budget_ms:
            break
    index._apply_search_params(chosen["search_params"])
    record = {
        "recall_at_10": chosen["recall_at_10"],
        "search_params": index.search_params,
        "target": float(target),
        "reached": bool(chosen["recall_at_10"] >= target),
        "p50_ms": chosen["p50_ms"],
        "budget_ms": float(budget_ms),
        "queries": int(len(picked)),
        "rows": int(rows),
        "ground_truth": ground_truth,
        "tried": tried,
    }
    index.recall_check = record
    index._exact_segments = []  # no longer needed: free them
    summary = (
        f"recall self-check of the {index.factory} index ({rows} rows, {len(picked)} of them as "
        f"queries): recall@10 {record['recall_at_10']:.3f} with {record['search_params']!r}, "
        f"{record['p50_ms']:.2f} ms per query (p50, one thread)"
    )
    if record["reached"]:
        logger.info(f"{summary}; target {target} reached")
    else:
        last = tried[-1]
        logger.warning(
            f"{summary}: the target recall@10 {target} was NOT reached within {budget_ms} ms "
            f"per query (the last setting tried, {last['search_params']!r}, took "
            f"{last['p50_ms']:.2f} ms); searches miss about "
            f"{100 * (1 - record['recall_at_10']):.0f}% of the exact top-10. Raise "
            "GALLERY_INDEX.LATENCY_BUDGET_MS or use another index type (docs/search.md)"
        )
    return record


def describe_recall(index) -> str:
    """One line on how far ``index``'s results can be trusted: its recorded recall self-check."""
    if index.factory == "Flat" or (index._num_pending and not index.index.ntotal):
        return f"{index.factory} index of {len(index)} boxes: exact search"
    check = index.recall_check
    if not check:
        return (
            f"{index.factory} index of {len(index)} boxes with {index.search_params!r}: recall "
            "not checked (personsearch_kd.search.check_recall measures it)"
        )
    line = (
        f"{index.factory} index of {len(index)} boxes: recall@10 {check['recall_at_10']:.3f} "
        f"against exact search with {check['search_params']!r} ("
        + ("target" if check["reached"] else "BELOW the target")
        + f" {check['target']}; {check['p50_ms']:.2f} ms per query)"
    )
    if check["search_params"] != index.search_params:
        line += f"; this search uses {index.search_params!r}"
    if check["rows"] != len(index):
        line += f"; measured at {check['rows']} boxes"
    return line
