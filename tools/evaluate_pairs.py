#!/usr/bin/env python3
# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Search evaluation of a query-guided model (QEEPS): every query against every image of its
gallery, one pair pass each (O(queries x gallery), with a progress bar and ETA), scored by the
person-search protocol; prints one Markdown row per test set. ``--top-n N`` runs only the N
gallery images a query-agnostic model (``--prefilter-config/-weights``, e.g. the OIM model QEEPS
started from) ranks first for each query; off by default; the pre-filter's own search of those
images is printed beside it as the baseline with the same misses, and ``--baseline-config/
-weights`` adds a second query-agnostic model searched on the same images (e.g. the OIM model
trained as many extra steps as QEEPS, without the guidance). Every --score comes from the same
pair passes. With --num-gpus N (detectron2's launcher; processes on CPU too) the pairs are
shared among N processes. With ``--cache-dir D`` the pair results are saved in D as they come
(about every minute): the same command run again after a stop or crash runs only the pairs
missing, and refuses a D made with another config, weights or --batch-size.

    python tools/evaluate_pairs.py --config-file configs/mot15/qeeps_R_18.yaml \
        --weights output/mot15_qeeps_R_18/model_final.pth --dataset mot15_ps_mini_test \
        [--top-n 20 --prefilter-config configs/mot15/oim_R_18.yaml \
         --prefilter-weights output/mot15_oim_R_18/model_final.pth] \
        [--baseline-config configs/mot15/oim_R_18.yaml --baseline-weights W] [KEY VALUE ...]
"""

import argparse

from detectron2.utils import comm

from personsearch_kd.engine import add_launcher_arguments, launch_from_args, load_trained_student
from personsearch_kd.engine.command_line import one_line_errors, require_file, run_cli
from personsearch_kd.engine.pair_evaluation import evaluate_query_guided
from personsearch_kd.evaluation import PAIR_SCORES


def build_parser():
    parser = one_line_errors(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--config-file", required=True, help="a query-guided model's config")
    parser.add_argument("--weights", required=True)
    parser.add_argument("--dataset", action="append", help="a test set, repeatable")
    parser.add_argument(
        "--score", nargs="+", default=["query_similarity"], choices=PAIR_SCORES,
        help="rank by QSimNet's probability or by the pair-conditioned ID features' cosine "
        "(both from the same pair passes)",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per forward pass")
    parser.add_argument(
        "--cache-dir", help="save the pair results here as they come; a rerun resumes from them"
    )
    parser.add_argument("--top-n", type=int, default=0, help="gallery images per query (0: all)")
    parser.add_argument("--prefilter-config")
    parser.add_argument("--prefilter-weights")
    parser.add_argument(
        "--baseline-config", help="a second query-agnostic model, searched on the same images"
    )
    parser.add_argument("--baseline-weights")
    add_launcher_arguments(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser


def evaluate_and_print(args):
    cfg, model = load_trained_student(args.config_file, args.weights, args.opts)
    # The query-agnostic models are built once for all test sets.
    prefilter = (
        load_trained_student(args.prefilter_config, args.prefilter_weights) if args.top_n else None
    )
    baseline = (
        load_trained_student(args.baseline_config, args.baseline_weights)
        if args.baseline_weights
        else None
    )
    results = evaluate_query_guided(
        cfg, model, args.weights, args.dataset or cfg.DATASETS.TEST, args.score, args.batch_size,
        args.cache_dir, args.top_n, prefilter, baseline,
    )  # fmt: skip
    if not comm.is_main_process():
        return {}
    print(
        "| dataset | score | gallery | mAP | top-1 | top-5 | top-10 | det AP | det recall | pairs"
        " | s/pair |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    gallery = f"top {args.top_n}" if args.top_n else "all"
    for (dataset, score), r in results.items():
        cost = (
            f"{r['pairs']} | {r['seconds'] / max(r['pairs_run'], 1):.2f}"
            if "pairs" in r
            else "– | –"
        )
        print(
            f"| {dataset} | {score} | {gallery} | {100 * r['mAP']:.2f} | {100 * r['top1']:.2f} "
            f"| {100 * r['top5']:.2f} | {100 * r['top10']:.2f} | {100 * r['det_AP']:.2f} "
            f"| {100 * r['det_recall']:.2f} | {cost} |"
        )
    return results


def main(argv=None):
    """The results, when run in this process (one process); printed either way."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.baseline_config) != bool(args.baseline_weights):
        parser.error("--baseline-config and --baseline-weights go together")
    if args.top_n and not (args.prefilter_config and args.prefilter_weights):
        parser.error("--top-n needs --prefilter-config and --prefilter-weights")
    for option, expected in (
        ("config_file", "a config .yaml file"), ("weights", "a detectron2 checkpoint file"),
        ("prefilter_config", "a config .yaml file"),
        ("prefilter_weights", "a detectron2 checkpoint file"),
        ("baseline_config", "a config .yaml file"),
        ("baseline_weights", "a detectron2 checkpoint file"),
    ):  # fmt: skip
        require_file(parser, "--" + option.replace("_", "-"), getattr(args, option), expected)
    return launch_from_args(evaluate_and_print, args)


if __name__ == "__main__":
    run_cli(main)  # pragma: no cover
