#!/usr/bin/env python3
# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Export a teacher's identity lookup table for KD_reid (the WEIGHTS of a student's LUTFileTeacher).

    # the seed paper's way: copy the LUT buffer of a trained OIM-family checkpoint
    python tools/export_lut.py --config-file configs/mot15/oim_R_50.yaml --from-checkpoint \
        --weights output/mot15_oim_R_50/model_final.pth --output teacher_lut.pth

    # any teacher with a query mode: mean L2-normalised feature of each identity's labeled
    # training boxes, re-normalised (section 6); distributed with --num-gpus
    python tools/export_lut.py --config-file TEACHER.yaml --compute --weights TEACHER.pth \
        --output teacher_lut.pth [--dataset NAME ...] [--num-gpus 8]

    # the control for a table's knowledge: seeded random unit rows of the student's size
    # (MODEL.OIM.NUM_IDS x EMBED_DIM, DATASETS.TRAIN of the given config), no teacher
    python tools/export_lut.py --config-file STUDENT.yaml --random --seed 0 --output random_lut.pth

The file format is documented in personsearch_kd/layers/lut_file.py.
"""

import argparse

from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from personsearch_kd import load_config
from personsearch_kd.engine import add_launcher_arguments, launch_from_args
from personsearch_kd.engine.command_line import one_line_errors, require_file, run_cli
from personsearch_kd.engine.teacher_lut import LUT_METHODS, OIM_LUT_KEY, export_lut


def build_parser() -> argparse.ArgumentParser:
    parser = one_line_errors(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--config-file", required=True, help="the teacher's config")
    method = parser.add_mutually_exclusive_group(required=True)
    method.add_argument(
        "--from-checkpoint", action="store_true", help="copy the checkpoint's LUT buffer"
    )
    method.add_argument(
        "--compute", action="store_true", help="average the teacher's features per identity"
    )
    method.add_argument(
        "--random", action="store_true",
        help="seeded random unit rows: a fixed table without a teacher (the config names the "
        "student's sizes)",
    )  # fmt: skip
    parser.add_argument("--weights", help="the teacher's checkpoint (not with --random)")
    parser.add_argument("--seed", type=int, help="--random: the table's seed (default 0)")
    parser.add_argument("--output", required=True, help="where to write the LUT file")
    parser.add_argument(
        "--dataset", nargs="+",
        help="--compute: registered training sets whose labeled boxes are embedded "
        "(default: the teacher's DATASETS.TRAIN); a KD_reid student needs its DATASETS.TRAIN, "
        "dev/compare_luts.py takes any labeled set (e.g. the test split's unseen identities)",
    )  # fmt: skip
    parser.add_argument("--lut-key", default=OIM_LUT_KEY, help="--from-checkpoint: buffer name")
    add_launcher_arguments(parser, what="--compute: ")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE teacher config overrides")
    return parser


def _method(args) -> str:
    (method,) = [m for m in LUT_METHODS if getattr(args, m)]
    return method


def export(args) -> None:
    """One process's part of the export (the main one writes the file)."""
    setup_logger(name="personsearch_kd", distributed_rank=comm.get_rank())
    cfg = load_config(args.config_file, args.opts, freeze=False)
    cfg.MODEL.WEIGHTS = args.weights or ""
    cfg.freeze()
    export_lut(cfg, args.output, _method(args), args.seed or 0, args.dataset, args.lut_key)


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.weights) == bool(args.random):
        parser.error(
            "--weights: expected the teacher's checkpoint with --from-checkpoint and --compute, "
            "and none with --random"
        )
    require_file(parser, "--config-file", args.config_file, "a config .yaml file")
    require_file(parser, "--weights", args.weights, "a detectron2 checkpoint file")
    if args.seed is not None and not args.random:
        # Refused rather than ignored: a table from a checkpoint or a teacher draws nothing.
        parser.error("--seed is for --random: --from-checkpoint and --compute draw nothing")
    if args.dataset and not args.compute:
        parser.error(
            "--dataset is for --compute: a copied or random table has one row per identity of "
            "the config's DATASETS.TRAIN"
        )
    launch_from_args(export, args)


if __name__ == "__main__":
    run_cli(main)  # pragma: no cover
