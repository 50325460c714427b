#!/usr/bin/env python3
# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Summarise seeded trainings as one Markdown table: each run's final search and detection metrics
(the last evaluation in its OUTPUT_DIR/metrics.json, or with --iteration N the one at iteration
N) and, per group of runs, mean ± std (sample standard deviation) over the seeds, with the
mAP difference against a baseline group paired by seed.

A group is one configuration trained with different SEEDs. The runs of a group must have the same
merged config (OUTPUT_DIR/config.yaml, written by tools/train_net.py) but for SEED and OUTPUT_DIR,
distinct seeds and (without --iteration) a finished training, so that runs of different settings
are never averaged together by mistake; keys that vary on purpose (e.g. a teacher's weights
trained per seed) are named with --vary.

    python dev/summarize_seeds.py \
        --group "OIM_18, lambda_oim 1.0" out/lam1_s0 out/lam1_s1 out/lam1_s2 \
        --group "KD_det R18 <- DET_50" out/kddet_s0 out/kddet_s1 out/kddet_s2 \
        --baseline "OIM_18, lambda_oim 1.0"
"""

import argparse
import json
import os
import statistics
import sys

import yaml

# metrics.json key -> column header; the keys the evaluator writes (DETECTION_ONLY runs: det only).
METRICS = {
    "person_search/mAP": "mAP",
    "person_search/top1": "top-1",
    "person_search/det_AP": "det AP",
    "person_search/det_recall": "det recall",
}
ALWAYS_VARY = ("SEED", "OUTPUT_DIR")


def flatten(tree, prefix=""):
    """{"A": {"B": 1}} -> {"A.B": 1}: config keys as written on the command line."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def read_run(run_dir, iteration=None):
    """
    Returns {"dir", "seed", "iteration", "config" (flat dict), "metrics" ({column: value})} from
    one train_net.py OUTPUT_DIR: its last evaluation, or with ``iteration`` the evaluation at that
    iteration (EVAL_PERIOD), so unfinished runs can be compared mid-way. Raises ValueError naming
    the file when the run cannot be read, lacks that evaluation, or (without ``iteration``) its
    training did not reach SOLVER.MAX_ITER.
    """
    config_path = os.path.join(run_dir, "config.yaml")
    metrics_path = os.path.join(run_dir, "metrics.json")
    for path in (config_path, metrics_path):
        if not os.path.isfile(path):
            raise ValueError(f"{path}: missing; expected a tools/train_net.py OUTPUT_DIR")
    with open(config_path) as f:
        config = flatten(yaml.safe_load(f))
    evaluations = []
    with open(metrics_path) as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{metrics_path}:{line_number}: not a JSON record ({e})") from e
            if any(key in record for key in METRICS):
                evaluations.append(record)
    if not evaluations:
        raise ValueError(f"{metrics_path}: no evaluation recorded (keys {sorted(METRICS)})")
    final = evaluations[-1]
    max_iter = config.get("SOLVER.MAX_ITER")
    if iteration is not None:
        # EVAL_PERIOD's evaluations are stored at the 0-based iteration N - 1, the final one at N.
        at = [r for r in evaluations if r["iteration"] in (iteration - 1, iteration)]
        if not at:
            raise ValueError(
                f"{metrics_path}: no evaluation at iteration {iteration} "
                f"(evaluated at {[r['iteration'] for r in evaluations]})"
            )
        final = at[-1]
    elif max_iter is not None and final["iteration"] < max_iter - 1:
        raise ValueError(
            f"{metrics_path}: last evaluation at iteration {final['iteration']}, "
            f"SOLVER.MAX_ITER is {max_iter}: the training is unfinished"
        )
    return {
        "dir": run_dir,
        "seed": config.get("SEED", -1),
        "iteration": final["iteration"],
        "config": config,
        "metrics": {column: final[key] for key, column in METRICS.items() if key in final},
    }


def check_group(label, runs, vary):
    """Raises ValueError unless the runs differ only in the keys of ``vary`` and in their seeds."""
    first = runs[0]
    for run in runs[1:]:
        keys = set(first["config"]) | set(run["config"])
        for key in sorted(keys - set(vary)):
            a, b = first["config"].get(key), run["config"].get(key)
            if a != b:
                raise ValueError(
                    f"group {label!r}: {first['dir']} and {run['dir']} differ in {key} "
                    f"({a!r} vs {b!r}); pass --vary {key} if that is intended"
                )
    seeds = [run["seed"] for run in runs if run["seed"] >= 0]
    if len(seeds) != len(set(seeds)):
        raise ValueError(f"group {label!r}: a SEED appears twice ({sorted(seeds)})")


def format_mean_std(values):
    """"mean ± sample std"; the mean alone for one value, "–" for none."""
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def seed_label(run):
    """A run's SEED, or "random" for detectron2's SEED -1 (a new seed drawn per run)."""
    return str(run["seed"]) if run["seed"] >= 0 else "random"


def baseline_difference(runs, baseline_runs):
    """
    The mAP difference to the baseline, paired by seed: its mean over the seeds both groups ran,
    followed by each seed's difference, so that a group with fewer seeds is compared on its own
    seeds only. Without a shared seed (e.g. unseeded runs) the difference of the two means,
    marked "unpaired".
    """
    def maps(group):
        return [(r["seed"], r["metrics"]["mAP"]) for r in group if "mAP" in r["metrics"]]

    ours, theirs = maps(runs), maps(baseline_runs)
    seeded_ours, seeded_theirs = (dict(p for p in g if p[0] >= 0) for g in (ours, theirs))
    shared = sorted(seeded_ours.keys() & seeded_theirs.keys())
    if shared:
        differences = [seeded_ours[seed] - seeded_theirs[seed] for seed in shared]
        per_seed = ", ".join(f"{seed}: {d:+.2f}" for seed, d in zip(shared, differences))
        return f"{statistics.mean(differences):+.2f} ({per_seed})"
    if ours and theirs:
        difference = statistics.mean(v for _, v in ours) - statistics.mean(v for _, v in theirs)
        return f"{difference:+.2f} unpaired"
    return "–"


def table(groups, baseline=None):
    """
    groups: [(label, [run, ...])] as returned by read_run. Returns the Markdown table as a list of
    lines: one row per run, then per group its mean ± std row and, with ``baseline`` (a label),
    the group's mAP difference to the baseline's (``baseline_difference``).
    """
    columns = list(METRICS.values())
    values = {
        label: {c: [r["metrics"][c] for r in runs if c in r["metrics"]] for c in columns}
        for label, runs in groups
    }
    by_label = dict(groups)
    header = ["model", "seed", "iteration"] + columns
    if baseline is not None:
        header.append(f"Δ mAP vs {baseline}, paired by seed")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, runs in groups:
        for run in runs:
            cells = [label, seed_label(run), str(run["iteration"])]
            cells += [f"{run['metrics'][c]:.2f}" if c in run["metrics"] else "–" for c in columns]
            lines.append("| " + " | ".join(cells + ([""] if baseline is not None else [])) + " |")
        cells = [f"**{label}, mean ± std**", ", ".join(seed_label(r) for r in runs), ""]
        cells += [format_mean_std(values[label][c]) for c in columns]
        if baseline is not None:
            cells.append(
                "–" if label == baseline else baseline_difference(runs, by_label[baseline])
            )
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--group", nargs="+", action="append", required=True, metavar=("LABEL", "DIR"),
        help="a label and the OUTPUT_DIRs of its seeded runs; repeat for each configuration",
    )  # fmt: skip
    parser.add_argument(
        "--vary", nargs="+", default=[], metavar="KEY",
        help="config keys allowed to differ within a group besides SEED and OUTPUT_DIR",
    )  # fmt: skip
    parser.add_argument("--baseline", metavar="LABEL", help="the group the others are compared to")
    parser.add_argument(
        "--iteration", type=int, metavar="N",
        help="use each run's evaluation at iteration N (TEST.EVAL_PERIOD) instead of its final "
        "one; unfinished runs are then allowed",
    )  # fmt: skip
    args = parser.parse_args(argv)
    labels = [group[0] for group in args.group]
    if any(len(group) < 2 for group in args.group):
        parser.error("each --group needs a label and at least one run directory")
    if len(set(labels)) != len(labels):
        parser.error(f"--group labels must be distinct, got {labels}")
    if args.baseline is not None and args.baseline not in labels:
        parser.error(f"--baseline {args.baseline!r} is not a --group label ({labels})")
    try:
        groups = [
            (group[0], [read_run(run_dir, args.iteration) for run_dir in group[1:]])
            for group in args.group
        ]
        for label, runs in groups:
            check_group(label, runs, ALWAYS_VARY + tuple(args.vary))
    except ValueError as e:
        sys.exit(f"summarize_seeds: {e}")
    print("\n".join(table(groups, args.baseline)))


if __name__ == "__main__":
    main()
