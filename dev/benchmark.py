#!/usr/bin/env python3
# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Benchmark person-search configs on their DATASETS.TEST and print one Markdown table: search mAP
and top-1, the same with random ID features (the chance baseline of the same detections),
detection AP and recall, training time per iteration, training wall time, inference time per
gallery image and peak memory.

Each config is trained first with tools/train_net.py unless its OUTPUT_DIR already holds
model_final.pth (--retrain forces it; an interrupted training resumes from its last checkpoint);
training numbers come from that run's metrics.json and log.txt (the wall time of a resumed run is
that of its last segment). Evaluation runs in a fresh process per config, so its peak memory is
its own, and is saved to OUTPUT_DIR/benchmark.json; a later run reuses it while the checkpoint is
older and the merged config (file, --override files and --opts) is the same (--reevaluate forces
it). DET configs (TEST.PERSON_SEARCH.DETECTION_ONLY) fill the detection columns only.

    python dev/benchmark.py --config-files configs/mot15/oim_R_18.yaml \
        configs/mot15/oim_R_50.yaml
"""

import argparse
import hashlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(REPO_ROOT, "tools", "train_net.py")


def load_cfg(config_file, opts, overrides=()):
    from personsearch_kd import load_config

    return load_config(config_file, opts, freeze=False, overrides=overrides)


def config_digest(cfg) -> str:
    """SHA-1 of the merged config: equal digests mean the same model, data and thresholds."""
    return hashlib.sha1(cfg.dump().encode()).hexdigest()


def reusable_evaluation(json_file, cfg):
    """
    The evaluation saved in ``json_file`` if it was made with this merged config after the
    checkpoint OUTPUT_DIR/model_final.pth was written, else None.
    """
    checkpoint = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    if not os.path.isfile(json_file) or os.path.getmtime(json_file) < os.path.getmtime(checkpoint):
        return None
    with open(json_file) as f:
        evaluation = json.load(f)
    return evaluation if evaluation.get("config_sha1") == config_digest(cfg) else None


class GalleryTimer(nn.Module):
    """Runs the model and times each call on a gallery image (query batches are not timed)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.seconds = []

    def forward(self, inputs):
        is_gallery = "query_boxes" not in inputs[0]
        cuda = self.model.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        outputs = self.model(inputs)
        if cuda:
            torch.cuda.synchronize()
        if is_gallery:
            self.seconds.append((time.perf_counter() - start) / len(inputs))
        return outputs


def evaluate(config_file, opts, json_file, overrides=()):
    """Child process: evaluate OUTPUT_DIR/model_final.pth with real and random features."""
    from detectron2.evaluation import DatasetEvaluators, inference_on_dataset
    from detectron2.utils.logger import setup_logger

    from personsearch_kd.engine import build_trained_student, peak_memory_gb
    from personsearch_kd.evaluation import (
        RandomFeatureEvaluator,
        build_person_search_evaluator,
        build_person_search_test_loader,
    )

    setup_logger()
    cfg = load_cfg(config_file, opts, overrides)
    model = build_trained_student(cfg, os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
    (dataset,) = cfg.DATASETS.TEST
    evaluator = build_person_search_evaluator(cfg, dataset)
    if not cfg.TEST.PERSON_SEARCH.DETECTION_ONLY:  # a DET config: no search, no random features
        chance = RandomFeatureEvaluator(build_person_search_evaluator(cfg, dataset))
        evaluator = DatasetEvaluators([evaluator, chance])
    timer = GalleryTimer(model)
    # The training's test loader (gallery only for DET configs).
    loader = build_person_search_test_loader(cfg, dataset)
    results = inference_on_dataset(timer, loader, evaluator)
    with open(json_file, "w") as f:
        json.dump(
            {
                "results": results,
                "seconds_per_image": statistics.median(timer.seconds),
                "peak_mem_gb": peak_memory_gb(cfg.MODEL.DEVICE),
                "config_sha1": config_digest(cfg),
            },
            f,
        )


def training_summary(output_dir):
    """Iterations, median s/iter, peak memory and wall time of the run in ``output_dir``."""
    metrics_file = os.path.join(output_dir, "metrics.json")
    if not os.path.isfile(metrics_file):
        raise FileNotFoundError(f"{metrics_file}: missing; was this config trained?")
    with open(metrics_file) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    timed = [r for r in rows if "time" in r]
    wall = None
    log_file = os.path.join(output_dir, "log.txt")
    if os.path.isfile(log_file):
        # detectron2's IterationTimer logs "Total training time: H:MM:SS (... on hooks)".
        found = re.findall(r"Total training time: (\S+)", open(log_file).read())
        wall = found[-1] if found else None
    return {
        # Evaluation results are logged one iteration past the last training step.
        "iters": max(r["iteration"] for r in rows if "total_loss" in r) + 1,
        "train_s_per_iter": statistics.median(r["time"] for r in timed) if timed else None,
        "train_peak_mem_gb": max(
            (r["peak_mem_gb"] for r in rows if "peak_mem_gb" in r), default=None
        ),
        "train_wall": wall,
    }


def hardware(device):
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {os.cpu_count()} cores (torch {torch.__version__})"


def _fmt(value, spec):
    return "n/a" if value is None else format(value, spec)


def train_command(config_file, opts, retrain, overrides=()):
    """
    The tools/train_net.py command line of a config. It resumes an interrupted run from
    OUTPUT_DIR/last_checkpoint (a fresh OUTPUT_DIR starts from MODEL.WEIGHTS) unless ``retrain``.
    """
    resume = [] if retrain else ["--resume"]
    override = [arg for path in overrides for arg in ("--override", path)]
    command = [sys.executable, TRAIN_NET, "--config-file", config_file]
    return command + override + resume + list(opts)


def benchmark(args):
    rows = []
    for config_file in args.config_files:
        cfg = load_cfg(config_file, args.opts, args.override)
        if args.retrain or not os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "model_final.pth")):
            subprocess.run(
                train_command(config_file, args.opts, args.retrain, args.override), check=True
            )
        json_file = os.path.join(cfg.OUTPUT_DIR, "benchmark.json")
        evaluation = None if args.reevaluate else reusable_evaluation(json_file, cfg)
        if evaluation is None:
            subprocess.run(
                [sys.executable, __file__, "--evaluate", config_file, "--json", json_file]
                + [arg for path in args.override for arg in ("--override", path)]
                + ["--opts"]
                + args.opts,
                check=True,
            )
            with open(json_file) as f:
                evaluation = json.load(f)
        train = training_summary(cfg.OUTPUT_DIR)
        real = evaluation["results"]["person_search"]
        chance = evaluation["results"].get("person_search_random_features")
        rows.append(
            [
                os.path.relpath(config_file),
                str(train["iters"]),
                _fmt(real.get("mAP"), ".2f"),
                _fmt(real.get("top1"), ".2f"),
                f"{chance['mAP']:.2f} / {chance['top1']:.2f}" if chance else "n/a",
                f"{real['det_AP']:.2f}",
                f"{real['det_recall']:.2f}",
                _fmt(train["train_s_per_iter"], ".3f"),
                train["train_wall"] or "n/a",
                f"{evaluation['seconds_per_image']:.3f}",
                f"{_fmt(train['train_peak_mem_gb'], '.1f')} / {evaluation['peak_mem_gb']:.1f}",
            ]
        )
    headers = [
        "config",
        "iters",
        "mAP",
        "top-1",
        "random feats mAP / top-1",
        "det AP",
        "det recall",
        "train s/iter",
        "train wall",
        "infer s/img",
        "peak mem GB train / eval",
    ]
    device = load_cfg(args.config_files[0], args.opts, args.override).MODEL.DEVICE
    lines = [
        f"Hardware: {hardware(device)}. Metrics in % on each config's DATASETS.TEST.",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ] + ["| " + " | ".join(row) + " |" for row in rows]
    print("\n".join(lines))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-files", nargs="+", metavar="FILE")
    parser.add_argument("--retrain", action="store_true", help="train even if model_final exists")
    parser.add_argument(
        "--reevaluate", action="store_true", help="evaluate even if benchmark.json can be reused"
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="FILE",
        help="a file of config keys merged after each config file (e.g. configs/mot15/gpu.yaml), "
        "as tools/train_net.py --override; repeatable",
    )
    parser.add_argument("--evaluate", metavar="FILE", help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="config KEY VALUE pairs, all configs"
    )
    args = parser.parse_args()
    if args.evaluate:
        evaluate(args.evaluate, args.opts, args.json, args.override)
    elif not args.config_files:
        parser.error("--config-files is required")
    else:
        benchmark(args)


if __name__ == "__main__":
    main()
