#!/usr/bin/env python3
# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Benchmark gallery-index types (faiss index_factory strings with their search parameters) on
synthetic re-ID-like features, or on the features of a real index built by index_gallery.py;
prints one Markdown table: build time, memory, single-query latency p50/p99 on one thread and on
all, batch throughput, and recall@1/10 against exact search.

A type is "FACTORY:PARAMS", and "FACTORY:P1|P2|P3" builds once and measures each parameter
setting (e.g. "IVF4096,SQ8:nprobe=16|nprobe=32|nprobe=64"). Latency is that of
``GalleryIndex.search`` as a user calls it (top-10, one box per image, the metadata looked up);
throughput and recall are of the faiss search alone, batched. Memory is faiss's index plus the
metadata arrays (not the Python interpreter's own overhead).

Synthetic features imitate re-ID galleries instead of uniform noise: N unit vectors in clusters
of about 10 (one person seen several times: a centre plus noise), 10 boxes per image, queries
another noisy view of random gallery persons.

    python tools/benchmark_index.py --sizes 1000000 \
        --types Flat "HNSW32:efSearch=64|efSearch=128" "IVF4096,SQ8:nprobe=16|nprobe=32"
    python tools/benchmark_index.py --index gallery_index --types Flat "HNSW32:efSearch=64"
"""

import argparse
import os
import platform
import time

import numpy as np

from personsearch_kd.search import GalleryIndex

MODEL = {"model": "benchmark"}
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


def benchmark(feats, types, num_queries: int, seed: int, train_size: int, boxes_per_image: int):
    """Yields one row per index type and search-parameter setting, as each is measured."""
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--index", help="measure the features of this real index instead")
    parser.add_argument(
        "--types", nargs="+", default=["Flat", "HNSW32:efSearch=64", "IVF4096,SQ8:nprobe=32"]
    )
    parser.add_argument("--queries", type=int, default=1000, help="for throughput and recall")
    parser.add_argument("--train-size", type=int, default=200_000)
    parser.add_argument("--boxes-per-image", type=int, default=10, help="synthetic galleries")
    parser.add_argument(
        "--intrinsic-dim", type=int, default=0, help="synthetic centres in a subspace (0: none)"
    )
    parser.add_argument("--noise", type=float, default=0.6, help="synthetic views' noise norm")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.index:
        real = GalleryIndex.load(args.index)
        datasets = [(os.path.basename(os.path.normpath(args.index)), real.features())]
        args.boxes_per_image = max(1, round(len(real) / max(1, real.num_sources)))
    else:
        datasets = (  # one at a time: 5M x 256 is 5 GB
            (
                f"synthetic {n}",
                synthetic_features(n, args.dim, args.seed, args.noise, 10, args.intrinsic_dim),
            )
            for n in args.sizes
        )
    print(f"Hardware: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(
        "| features | index | boxes | build s | memory GB | p50 ms 1 thr | p99 ms 1 thr "
        "| p50 ms all | p99 ms all | queries/s (batch) | recall@1 | recall@10 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    all_rows = []
    for name, feats in datasets:
        print(f"<!-- {name}: {feature_statistics(feats, args.seed)} -->", flush=True)
        queries = min(args.queries, len(feats))
        settings = (args.seed, args.train_size, args.boxes_per_image)
        for r in benchmark(feats, args.types, queries, *settings):
            print(
                f"| {name} | {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.3f} | {r[4]:.2f} | {r[5]:.2f} "
                f"| {r[6]:.2f} | {r[7]:.2f} | {r[8]:.0f} | {r[9]:.3f} | {r[10]:.3f} |",
                flush=True,
            )
            all_rows.append((name,) + r[:-1])
            threads = r[-1]
    print(f"(all = {threads} threads)")
    return all_rows


if __name__ == "__main__":
    main()  # pragma: no cover
