#!/usr/bin/env python3
# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Export a teacher's identity lookup table for KD_reid (the WEIGHTS of a student's LUTFileTeacher).

    # the seed paper's way: copy the LUT buffer of a trained OIM-family checkpoint
    python tools/export_lut.py --config-file configs/mot15/oim_R_50_C4_cpu.yaml --from-checkpoint \
        --weights output/mot15_oim_R_50_C4_cpu/model_final.pth --output teacher_lut.pth

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
import logging

from detectron2.data import DatasetCatalog
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from personsearch_kd import load_config
from personsearch_kd.engine import add_launcher_arguments, build_trained_student, launch_from_args
from personsearch_kd.engine.teacher_lut import (
    OIM_LUT_KEY,
    labeled_box_queries,
    lut_from_checkpoint,
    teacher_box_features,
)
from personsearch_kd.layers.lut_file import identity_means, random_lut, save_lut_file

logger = logging.getLogger("personsearch_kd.export_lut")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, help="the teacher's config")
    method = parser.add_mutually_exclusive_group(required=True)
    method.add_argument(
        "--from-checkpoint", action="store_true", help="copy the checkpoint's LUT buffer"
    )
    method.add_argument(
        "--compute", action="store_true", help="average the teacher's features per identity"
    )
    method.add_argument(
        "--random",
        action="store_true",
        help="seeded random unit rows: a fixed table without a teacher (the config names the "
        "student's sizes)",
    )
    parser.add_argument("--weights", help="the teacher's checkpoint (not with --random)")
    parser.add_argument("--seed", type=int, help="--random: the table's seed (default 0)")
    parser.add_argument("--output", required=True, help="where to write the LUT file")
    parser.add_argument(
        "--dataset",
        nargs="+",
        help="--compute: registered training sets whose labeled boxes are embedded "
        "(default: the teacher's DATASETS.TRAIN); a KD_reid student needs its DATASETS.TRAIN, "
        "tools/compare_luts.py takes any labeled set (e.g. the test split's unseen identities)",
    )
    parser.add_argument("--lut-key", default=OIM_LUT_KEY, help="--from-checkpoint: buffer name")
    add_launcher_arguments(parser, what="--compute: ")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE teacher config overrides")
    return parser


def teacher_config(args):
    if bool(args.weights) == bool(args.random):
        raise ValueError(
            "--weights: expected the teacher's checkpoint with --from-checkpoint and --compute, "
            "and none with --random"
        )
    if args.seed is not None and not args.random:
        # Refused rather than ignored: a table from a checkpoint or a teacher draws nothing.
        raise ValueError("--seed is for --random: --from-checkpoint and --compute draw nothing")
    cfg = load_config(args.config_file, args.opts, freeze=False)
    cfg.MODEL.WEIGHTS = args.weights or ""
    cfg.freeze()
    return cfg


def export(args) -> None:
    """Write the LUT file (on the main process; --compute runs on every process)."""
    setup_logger(name="personsearch_kd", distributed_rank=comm.get_rank())
    cfg = teacher_config(args)
    if args.dataset and not args.compute:
        raise ValueError(
            "--dataset is for --compute: a copied or random table has one row per identity of "
            f"the config's DATASETS.TRAIN {list(cfg.DATASETS.TRAIN)}"
        )
    seed = args.seed or 0
    if args.from_checkpoint or args.random:
        if args.from_checkpoint:
            lut, method = lut_from_checkpoint(args.weights, args.lut_key), "from_checkpoint"
        else:
            lut, method = random_lut(cfg.MODEL.OIM.NUM_IDS, cfg.MODEL.OIM.EMBED_DIM, seed), "random"
        # One row per id the student's OIM can see, in id order, as a checkpoint's LUT.
        dataset, person_ids = list(cfg.DATASETS.TRAIN), range(len(lut))
    else:
        dataset = args.dataset or list(cfg.DATASETS.TRAIN)
        dicts = [d for name in dataset for d in DatasetCatalog.get(name)]
        queries = labeled_box_queries(dicts)
        # A distilled teacher needs no teacher of its own.
        model = build_trained_student(cfg, args.weights)
        result = teacher_box_features(model, queries, cfg, cfg.DATALOADER.NUM_WORKERS)
        if result is None:  # not the main process
            return
        feats, pids = result
        # One row per labeled identity of the training sets, in id order: the student's OIM
        # uses the person id as its LUT row.
        person_ids = sorted({pid for q in queries for pid in q["query_pids"]})
        lut = identity_means(feats, pids, person_ids)
        method = "compute"
        logger.info(f"Embedded {len(pids)} labeled boxes of {len(person_ids)} identities")
    if comm.is_main_process():
        source = args.weights or f"seed {seed}"
        save_lut_file(args.output, lut, dataset, person_ids, method, cfg.dump(), source)
        logger.info(
            f"Wrote {args.output}: {tuple(lut.shape)} LUT of {dataset} ({method}, {source})"
        )


def main(argv=None) -> None:
    launch_from_args(export, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()  # pragma: no cover
