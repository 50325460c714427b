#!/usr/bin/env python3
# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Two-step person search: a detector's boxes (e.g. DET_18 / DET_50), then a re-ID network on crops
(a CropReIDNet, e.g. DKD's teacher) on them, evaluated on the detector config's DATASETS.TEST (or
--dataset) with the person-search protocol; prints one Markdown row per test set.

    python tools/evaluate_two_step.py \
        --detector-config configs/mot15/det_R_50.yaml \
        --detector-weights output/mot15_det_R_50/model_final.pth \
        --reid-config configs/mot15/reid_crop_R_18.yaml \
        --reid-weights output/mot15_reid_crop_R_18/model_final.pth [KEY VALUE ...]
"""

import argparse

from detectron2.evaluation import inference_on_dataset

from personsearch_kd.engine import load_trained_student
from personsearch_kd.engine.command_line import one_line_errors, require_file, run_cli
from personsearch_kd.evaluation import (
    TwoStepSearch,
    build_person_search_evaluator,
    build_person_search_test_loader,
)


def evaluate(args):
    """{dataset: the evaluator's person_search results} of the two-step model."""
    # The detector's config evaluates the pair: searching, even where it is a DET config.
    opts = list(args.opts) + ["TEST.PERSON_SEARCH.DETECTION_ONLY", "False"]
    det_cfg, detector = load_trained_student(args.detector_config, args.detector_weights, opts)
    reid_cfg, reid = load_trained_student(args.reid_config, args.reid_weights)
    model = TwoStepSearch(detector, reid, reid_cfg.INPUT.FORMAT)
    results = {}
    for dataset in args.dataset or det_cfg.DATASETS.TEST:
        loader = build_person_search_test_loader(det_cfg, dataset)
        evaluator = build_person_search_evaluator(det_cfg, dataset)
        results[dataset] = inference_on_dataset(model, loader, evaluator)["person_search"]
    return results


def build_parser():
    parser = one_line_errors(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--detector-config", required=True)
    parser.add_argument("--detector-weights", required=True)
    parser.add_argument("--reid-config", required=True, help="a CropReIDNet config")
    parser.add_argument("--reid-weights", required=True)
    parser.add_argument(
        "--dataset", action="append", help="a test set, repeatable (default: the detector's)"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE detector overrides")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    for step in ("detector", "reid"):
        require_file(
            parser, f"--{step}-config", getattr(args, f"{step}_config"), "a config .yaml file"
        )
        require_file(
            parser,
            f"--{step}-weights",
            getattr(args, f"{step}_weights"),
            "a detectron2 checkpoint file",
        )
    results = evaluate(args)
    print("| dataset | mAP | top-1 | det AP | recall |")
    print("|---|---|---|---|---|")
    for dataset, r in results.items():
        print(
            f"| {dataset} | {r['mAP']:.2f} | {r['top1']:.2f} | {r['det_AP']:.2f} "
            f"| {r['det_recall']:.2f} |"
        )
    return results


if __name__ == "__main__":
    run_cli(main)  # pragma: no cover
