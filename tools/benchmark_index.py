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

--self-check runs instead the recall self-check that a built approximate index runs
(personsearch_kd.search.check_recall: nprobe or efSearch raised from the type's PARAMS until
recall@10 against exact search reaches --target-recall within --latency-budget-ms per query) and
prints per type the setting chosen, its recall@10 on the index's own rows and on new queries,
its p50 latency on one thread, and every setting tried.

Synthetic features imitate re-ID galleries instead of uniform noise: N unit vectors in clusters
of about 10 (one person seen several times: a centre plus noise), 10 boxes per image, queries
another noisy view of random gallery persons.

    python tools/benchmark_index.py --sizes 1000000 \
        --types Flat "HNSW32:efSearch=64|efSearch=128" "IVF4096,SQ8:nprobe=16|nprobe=32"
    python tools/benchmark_index.py --index gallery_index --types Flat "HNSW32:efSearch=64"
    python tools/benchmark_index.py --self-check --types "IVF4096,SQ8:nprobe=32"
    python tools/benchmark_index.py --self-check --types "IVF4096,SQ8:nprobe=32" \
        --intrinsic-dim 32 --noise 0.3
"""

import argparse
import os
import platform

from personsearch_kd.engine.command_line import one_line_errors, require_dir, run_cli
from personsearch_kd.search import GalleryIndex
from personsearch_kd.search.index_benchmark import (
    benchmark_index_types,
    feature_statistics,
    self_check_index_types,
    synthetic_features,
)


def main(argv=None):
    parser = one_line_errors(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
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
    parser.add_argument(
        "--self-check", action="store_true", help="run each type's recall self-check instead"
    )
    parser.add_argument("--target-recall", type=float, default=0.95, help="for --self-check")
    parser.add_argument(
        "--latency-budget-ms", type=float, default=20.0, help="for --self-check (p50, 1 thread)"
    )
    args = parser.parse_args(argv)
    require_dir(
        parser, "--index", args.index, "a gallery index folder made by tools/index_gallery.py"
    )
    for name in ("sizes", "dim", "queries", "train_size", "boxes_per_image"):
        values = getattr(args, name)
        if min(values if isinstance(values, list) else [values]) < 1:
            parser.error(f"--{name.replace('_', '-')} {values}: expected integers >= 1")
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
    if args.self_check:
        return _self_check(args, datasets)
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
        for r in benchmark_index_types(feats, args.types, queries, *settings):
            print(
                f"| {name} | {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.3f} | {r[4]:.2f} | {r[5]:.2f} "
                f"| {r[6]:.2f} | {r[7]:.2f} | {r[8]:.0f} | {r[9]:.3f} | {r[10]:.3f} |",
                flush=True,
            )
            all_rows.append((name,) + r[:-1])
            threads = r[-1]
    print(f"(all = {threads} threads)")
    return all_rows


def _self_check(args, datasets):
    print(
        f"Recall self-check: target recall@10 {args.target_recall}, budget "
        f"{args.latency_budget_ms} ms per query (p50, 1 thread)"
    )
    print(
        "| features | index (start) | boxes | build s | check s | setting chosen | recall@10 "
        "(own rows) | recall@10 (new queries) | p50 ms 1 thr | target reached |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    all_rows = []
    for name, feats in datasets:
        print(f"<!-- {name}: {feature_statistics(feats, args.seed)} -->", flush=True)
        settings = (args.seed, args.train_size, args.boxes_per_image)
        budget = (args.target_recall, args.latency_budget_ms)
        queries = min(args.queries, len(feats))
        for spec, boxes, build_s, check_s, r in self_check_index_types(
            feats, args.types, queries, *settings, *budget
        ):
            if r is None:
                print(f"| {name} | {spec} | {boxes} | {build_s:.1f} | - | exact | 1 | 1 | - | - |")
            else:
                print(
                    f"| {name} | {spec} | {boxes} | {build_s:.1f} | {check_s:.1f} "
                    f"| {r['search_params']} | {r['recall_at_10']:.3f} "
                    f"| {r['new_queries_recall_at_10']:.3f} | {r['p50_ms']:.2f} "
                    f"| {'yes' if r['reached'] else 'NO'} |"
                )
                tried = "; ".join(
                    f"{t['search_params']}: {t['p50_ms']:.2f} ms"
                    + ("" if t["recall_at_10"] is None else f", recall@10 {t['recall_at_10']:.3f}")
                    for t in r["tried"]
                )
                print(f"<!-- tried: {tried} -->", flush=True)
            all_rows.append((name, spec, boxes, build_s, check_s, r))
    return all_rows


if __name__ == "__main__":
    run_cli(main)  # pragma: no cover
