# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
The measurements of tools/benchmark_index.py: gallery-index types (faiss index_factory strings
with their search parameters) built on given features, their memory, single-query latency of
``GalleryIndex.search`` as a user calls it (top-10, one box per image, the metadata looked up),
batched throughput and recall against exact search; the recall self-check of each type
(:func:`.recall_check.check_recall`: the setting it chooses, its recall and latency); and
synthetic features that imitate re-ID galleries instead of uniform noise (people seen several
times: a centre plus noise).
"""

import time

import numpy as np

from .gallery_index import GalleryIndex
from .recall_check import check_recall

__all__ = [
    "benchmark_index_types",
    "exact_topk",
    "feature_statistics",
    "queries_like",
    "self_check_index_types",
    "synthetic_features",
]

# The fingerprint of the features' model: there is none, but an index needs one.
MODEL = {"model": "benchmark"}
# Rows per add and per exact-search block: memory stays bounded at millions of rows.
CHUNK = 1 << 16


def synthetic_features(
    n: int,
    dim: int,
    seed: int,
    noise: float = 0.6,
    per_person: int = 10,
    intrinsic_dim: int = 0,
):
    """
    (n, dim) unit vectors: one centre per ``per_person`` rows, plus Gaussian noise. Centres are
    uniform on the sphere (``intrinsic_dim`` 0: people share nothing, the hardest case for
    approximate search) or Gaussian in a random ``intrinsic_dim``-dimensional subspace (as a
    trained model's features, which concentrate: compare the statistics printed for a real index).
    """
    rng = np.random.default_rng(seed)
    num_centres = max(1, n // per_person)
    if intrinsic_dim:
        basis = np.linalg.qr(rng.standard_normal((dim, intrinsic_dim)))[0].T.astype(np.float32)
        centres = rng.standard_normal((num_centres, intrinsic_dim), dtype=np.float32) @ basis
    else:
        centres = rng.standard_normal((num_centres, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    feats = np.empty((n, dim), np.float32)
    for start in range(0, n, 1 << 18):  # chunks: the noise of 5M x 256 would be another 5 GB
        stop = min(n, start + (1 << 18))
        owner = rng.integers(0, len(centres), stop - start)
        chunk = centres[owner] + noise / np.sqrt(dim) * rng.standard_normal(
            (stop - start, dim), dtype=np.float32
        )
        feats[start:stop] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return feats


def feature_statistics(feats: np.ndarray, seed: int, sample: int = 2000) -> str:
    """
    What makes features easy or hard to search approximately: the mean cosine of random pairs,
    of each row's nearest other row, and the principal components holding 90% of the variance.
    """
    rng = np.random.default_rng(seed)
    a, b = feats[rng.integers(0, len(feats), sample)], feats[rng.integers(0, len(feats), sample)]
    picked = rng.choice(len(feats), min(sample, len(feats)), replace=False)
    nearest = exact_topk(feats, feats[picked], 2)[:, 1]  # the first is the row itself
    nn_cos = np.sum(feats[picked] * feats[nearest], axis=1)
    centred = feats[picked] - feats[picked].mean(0)
    variance = np.linalg.svd(centred, compute_uv=False) ** 2
    dims_90 = int(np.searchsorted(np.cumsum(variance) / variance.sum(), 0.9)) + 1
    return (
        f"mean cosine of random pairs {np.mean(np.sum(a * b, 1)):.3f}, of nearest neighbours "
        f"{np.mean(nn_cos):.3f}; {dims_90} principal components hold 90% of the variance"
    )


def queries_like(feats: np.ndarray, count: int, seed: int, noise: float = 0.6) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    picked = feats[rng.integers(0, len(feats), count)]
    q = picked + noise / np.sqrt(feats.shape[1]) * rng.standard_normal(picked.shape, np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def exact_topk(feats: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) row ids of the exact top-k by inner product, in chunks (no copy of ``feats``)."""
    best_sims = np.full((len(queries), 0), -np.inf, np.float32)
    best_ids = np.zeros((len(queries), 0), np.int64)
    for start in range(0, len(feats), CHUNK):
        block = queries @ feats[start : start + CHUNK].T
        block_ids = np.broadcast_to(np.arange(start, start + block.shape[1]), block.shape)
        sims = np.concatenate([best_sims, block], axis=1)
        ids = np.concatenate([best_ids, block_ids], axis=1)
        keep = np.argpartition(-sims, min(k, sims.shape[1]) - 1, axis=1)[:, :k]
        best_sims, best_ids = np.take_along_axis(sims, keep, 1), np.take_along_axis(ids, keep, 1)
    order = np.argsort(-best_sims, axis=1, kind="stable")
    return np.take_along_axis(best_ids, order, 1)


def _build(factory: str, feats: np.ndarray, train_size: int, boxes_per_image: int):
    """The index of ``feats``, ``boxes_per_image`` rows per source image, trained."""
    index = GalleryIndex(feats.shape[1], MODEL, factory, train_size=train_size)
    step = CHUNK - CHUNK % boxes_per_image  # whole images per chunk
    for start in range(0, len(feats), step):
        chunk = feats[start : start + step]
        counts = [boxes_per_image] * (len(chunk) // boxes_per_image)
        counts += [len(chunk) % boxes_per_image] if len(chunk) % boxes_per_image else []
        first = start // boxes_per_image
        paths = [f"image_{first + i:08d}.jpg" for i in range(len(counts))]
        index.add_sources(chunk, np.zeros((len(chunk), 4)), np.ones(len(chunk)), counts, paths)
    index.train()  # fewer rows than train_size: train on what there is
    return index


def _latencies(index: GalleryIndex, queries: np.ndarray) -> np.ndarray:
    times = []
    for q in queries:
        start = time.perf_counter()
        index.search(q, MODEL, topk=10)
        times.append(time.perf_counter() - start)
    return np.array(times) * 1000.0


def _recall(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Fraction of the exact top-k rows found in the top-k."""
    hits = [len(set(f[:k]) & set(e[:k])) for f, e in zip(found, exact)]
    return float(np.mean(hits)) / k


def _memory_gb(index: GalleryIndex) -> float:
    import faiss

    records = sum(a.nbytes for a in index.arrays().values())
    return (len(faiss.serialize_index(index.index)) + records) / 1e9


def benchmark_index_types(
    feats, types, num_queries: int, seed: int, train_size: int, boxes_per_image: int
):
    """
    Yields one row per index type and search-parameter setting, as each is measured: (type,
    boxes, build s, memory GB, p50 and p99 ms on one thread, the same on all, batched queries/s,
    recall@1, recall@10, the number of threads of "all").

    Args:
        types: "FACTORY" or "FACTORY:P1|P2|..." (faiss index_factory string and search
            parameter settings, each measured on the same built index).
    """
    import faiss

    all_threads = faiss.omp_get_max_threads()
    queries = queries_like(feats, num_queries, seed)
    exact = exact_topk(feats, queries, 10)
    for spec in types:
        factory, _, settings = spec.partition(":")
        start = time.perf_counter()
        index = _build(factory, feats, train_size, boxes_per_image)
        build_s = time.perf_counter() - start
        memory_gb = _memory_gb(index)
        for params in settings.split("|"):
            index.set_search_params(params)
            latency = {}
            for threads in (1, all_threads):
                faiss.omp_set_num_threads(threads)
                latency[threads] = _latencies(index, queries[: min(200, num_queries)])
            start = time.perf_counter()
            _, found = index.index.search(queries, 10)
            throughput = num_queries / (time.perf_counter() - start)
            yield (
                f"{factory}:{params}" if params else factory,
                len(feats),
                build_s,
                memory_gb,
                np.percentile(latency[1], 50),
                np.percentile(latency[1], 99),
                np.percentile(latency[all_threads], 50),
                np.percentile(latency[all_threads], 99),
                throughput,
                _recall(found, exact, 1),
                _recall(found, exact, 10),
                all_threads,
            )
        del index


def self_check_index_types(
    feats,
    types,
    num_queries: int,
    seed: int,
    train_size: int,
    boxes_per_image: int,
    target: float,
    budget_ms: float,
):
    """
    Yields one row per index type as each is measured: the recall self-check a built index runs
    (:func:`.recall_check.check_recall`, starting from the type's search parameters, on the
    exact features), then the recall@10 of new queries (other noisy views of gallery persons, as
    in :func:`benchmark_index_types`) at the setting it chose: (type, boxes, build s, check s,
    the check's record).

    Args:
        types: "FACTORY" or "FACTORY:PARAMS" (the setting the check starts from).
    """
    queries = queries_like(feats, num_queries, seed)
    exact = exact_topk(feats, queries, 10)
    for spec in types:
        factory, _, params = spec.partition(":")
        start = time.perf_counter()
        index = _build(factory, feats, train_size, boxes_per_image)
        index.set_search_params(params)
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        record = check_recall(index, target, budget_ms, feats, num_queries, seed=seed)
        check_s = time.perf_counter() - start
        if record is not None:
            _, found = index.index.search(queries, 10)
            record = dict(record, new_queries_recall_at_10=_recall(found, exact, 10))
        yield spec, len(feats), build_s, check_s, record
        del index
