#!/usr/bin/env python3
# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Benchmark gallery-index types (faiss index_factory strings with their search parameters) on
synthetic re-ID-like features, or on the features of a real index built by index_gallery.py;
prints one Markdown table: build time, index memory, single-query latency p50/p99 on one thread
and on all, batch throughput, and recall@1/10 against exact search.

Synthetic features imitate re-ID galleries instead of uniform noise: N unit vectors in clusters
of about 10 (one person seen several times: a centre plus noise), queries another noisy view of
random gallery persons.

    python tools/benchmark_index.py --sizes 1000000 5000000 \
        --types Flat "HNSW32:efSearch=64" "HNSW32,SQ8:efSearch=64" "IVF4096,PQ32:nprobe=32"
    python tools/benchmark_index.py --index gallery_index --types Flat "HNSW32:efSearch=64"
"""

import argparse
import os
import platform
import time

import numpy as np

from personsearch_kd.search import GalleryIndex


def synthetic_features(n: int, dim: int, seed: int, noise: float = 0.6, per_person: int = 10):
    """(n, dim) unit vectors: one random centre per ``per_person`` rows, plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // per_person), dim)).astype(np.float32)
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


def queries_like(feats: np.ndarray, count: int, seed: int, noise: float = 0.6) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    picked = feats[rng.integers(0, len(feats), count)]
    q = picked + noise / np.sqrt(feats.shape[1]) * rng.standard_normal(picked.shape, np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _build(spec: str, feats: np.ndarray, train_size: int) -> GalleryIndex:
    factory, _, params = spec.partition(":")
    index = GalleryIndex(feats.shape[1], {}, factory, params, train_size=train_size)
    # One "source" per 10 rows keeps the metadata small; the faiss part is what is measured.
    for start in range(0, len(feats), 1 << 16):
        chunk = feats[start : start + (1 << 16)]
        index.add(chunk, np.zeros((len(chunk), 4)), np.ones(len(chunk)), f"chunk_{start}")
    if len(index._pending):  # fewer rows than train_size: train on what there is
        index.index.train(index._pending)
        index.index.add(index._pending)
        index._pending = index._pending[:0]
    return index


def _latencies(index: GalleryIndex, queries: np.ndarray, k: int) -> np.ndarray:
    times = []
    for q in queries:
        start = time.perf_counter()
        index._raw_search(q[None], k)
        times.append(time.perf_counter() - start)
    return np.array(times) * 1000.0


def _recall(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Fraction of the exact top-k rows found in the top-k."""
    hits = [len(set(f[:k]) & set(e[:k])) for f, e in zip(found, exact)]
    return float(np.mean(hits)) / k


def benchmark(feats: np.ndarray, types, num_queries: int, seed: int, train_size: int):
    import faiss

    all_threads = faiss.omp_get_max_threads()
    queries = queries_like(feats, num_queries, seed)
    exact_index = _build("Flat", feats, train_size)
    _, exact = exact_index._raw_search(queries, 10)
    del exact_index
    rows = []
    for spec in types:
        start = time.perf_counter()
        index = _build(spec, feats, train_size)
        build_s = time.perf_counter() - start
        memory_gb = len(faiss.serialize_index(index.index)) / 1e9
        latency = {}
        for threads in (1, all_threads):
            faiss.omp_set_num_threads(threads)
            latency[threads] = _latencies(index, queries[: min(200, num_queries)], 10)
        start = time.perf_counter()
        _, found = index._raw_search(queries, 10)
        throughput = num_queries / (time.perf_counter() - start)
        rows.append(
            (
                spec,
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
            )
        )
        del index
    return rows, all_threads


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--index", help="measure the features of this real index instead")
    parser.add_argument(
        "--types", nargs="+", default=["Flat", "HNSW32:efSearch=64", "IVF4096,PQ32:nprobe=32"]
    )
    parser.add_argument("--queries", type=int, default=1000, help="for throughput and recall")
    parser.add_argument("--train-size", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.index:
        real = GalleryIndex.load(args.index)
        datasets = [(os.path.basename(os.path.normpath(args.index)), real.features())]
    else:
        datasets = [
            (f"synthetic {n}", synthetic_features(n, args.dim, args.seed)) for n in args.sizes
        ]
    print(f"Hardware: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(
        "| features | index | boxes | build s | memory GB | p50 ms 1 thr | p99 ms 1 thr "
        "| p50 ms all | p99 ms all | queries/s (batch) | recall@1 | recall@10 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    all_rows = []
    for name, feats in datasets:
        # Check the distribution: the mean cosine of random pairs and of nearest neighbours.
        rng = np.random.default_rng(args.seed)
        a, b = feats[rng.integers(0, len(feats), 2000)], feats[rng.integers(0, len(feats), 2000)]
        print(f"<!-- {name}: mean cosine of random pairs {np.mean(np.sum(a * b, 1)):.3f} -->")
        rows, threads = benchmark(
            feats, args.types, min(args.queries, len(feats)), args.seed, args.train_size
        )
        for r in rows:
            print(
                f"| {name} | {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.3f} | {r[4]:.2f} | {r[5]:.2f} "
                f"| {r[6]:.2f} | {r[7]:.2f} | {r[8]:.0f} | {r[9]:.3f} | {r[10]:.3f} |"
            )
        all_rows += [(name,) + r for r in rows]
    print(f"(all = {threads} threads)")
    return all_rows


if __name__ == "__main__":
    main()  # pragma: no cover
