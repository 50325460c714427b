#!/usr/bin/env python3
# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Indexing speed on real images and videos: tools/index_gallery.py's work (decode ahead, detect,
embed, the frame gate, the index) run end to end for each setting in turn, --rounds times;
seconds of each round, frames per second (median round), the speed-up over the first setting,
boxes indexed and the share of each stage, one Markdown row per setting. Accuracy is measured
apart (tools/train_net.py --eval-only with the same keys; docs/search.md).

A setting is one quoted argument: NAME, then override files (.yaml) and KEY VALUE keys over
--config-file and the trailing KEY VALUE keys of every setting:

    python tools/benchmark_indexing.py --config-file configs/mot15/fd_R_18.yaml \\
        --input datasets/mot15-ps-sample/TUD-Stadtmitte/img1 cam1.avi --rounds 2 \\
        --baseline-all-detections --setting default \\
        --setting "fast configs/index_fast.yaml" \\
        --setting "fast-fp32 configs/index_fast.yaml TEST.PERSON_SEARCH.PRECISION fp32" \\
        MODEL.WEIGHTS output/mot15_fd_R_18/model_final.pth
"""

import argparse
import shlex

from personsearch_kd import load_config
from personsearch_kd.engine.command_line import (
    one_line_errors,
    require_file,
    require_weights,
    run_cli,
)
from personsearch_kd.engine.indexing_benchmark import (
    INDEXING_STAGES,
    IndexingSetting,
    measure_indexing,
    parse_setting,
)
from personsearch_kd.search import expand_inputs


def main(argv=None):
    parser = one_line_errors(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--config-file", required=True)
    parser.add_argument(
        "--input", required=True, nargs="+", help="folders, glob patterns, .txt lists, videos"
    )
    parser.add_argument(
        "--setting",
        action="append",
        required=True,
        metavar='"NAME [FILE.yaml ...] [KEY VALUE ...]"',
        help="one row, one quoted argument; repeatable, run in turns",
    )
    parser.add_argument(
        "--baseline-all-detections",
        action="store_true",
        help="a first row with re-ID on every detection (the path before re-ID was limited to "
        "the detections an index keeps), the base of the speed-ups",
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--every", type=int, default=1, help="index every N-th video frame")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE for every setting")
    args = parser.parse_args(argv)
    require_file(parser, "--config-file", args.config_file, "a config .yaml file")
    settings = []
    for text in args.setting:
        try:
            setting = parse_setting(shlex.split(text))
        except ValueError as e:
            parser.error(str(e))
        for override in setting.overrides:
            require_file(parser, f"--setting {setting.name}", override, "an override .yaml")
        settings.append(setting)
    if len({s.name for s in settings}) < len(settings):
        parser.error("--setting: every setting needs its own NAME")
    if args.baseline_all_detections:
        settings.insert(0, IndexingSetting("all detections embedded", all_detections=True))
    for name in ("rounds", "every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} {getattr(args, name)}: expected an integer >= 1")
    expand_inputs(args.input)  # a missing input fails here, before a model is built
    require_weights(load_config(args.config_file, args.opts), args.config_file)
    rows = measure_indexing(
        args.config_file, args.input, settings, args.rounds, args.every, args.opts
    )
    print(
        "| setting | frames | boxes | s per round | frames/s | speed-up | "
        + " | ".join(f"{stage} %" for stage in INDEXING_STAGES)
        + " |"
    )
    print("|---" * (6 + len(INDEXING_STAGES)) + "|")
    for row in rows:
        shares = " | ".join(f"{100 * row['shares'][s]:.1f}" for s in INDEXING_STAGES)
        rounds = " / ".join(f"{s:.1f}" for s in row["seconds"])
        print(
            f"| {row['name']} | {row['frames']} | {row['boxes']} | {rounds} | "
            f"{row['frames_per_s']:.3f} | {row['speedup']:.2f}x | {shares} |"
        )
    return rows


if __name__ == "__main__":
    run_cli(main)  # pragma: no cover
