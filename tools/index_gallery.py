#!/usr/bin/env python3
# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Index a gallery once, to search it many times (tools/search.py): every person detected in the
images of folders, glob patterns, list files (.txt) or videos (every N-th frame), with its re-ID
feature, box, score and source, in a GalleryIndex directory (GALLERY_INDEX.* picks the faiss
index type).

Each process (--num-gpus, --num-machines: detectron2's launcher) indexes its share of the images
into an exact shard under OUTPUT/shards/, saved every --save-every images; the main process then
merges the shards into OUTPUT. Images are decoded ahead by a background thread and run
--batch-size at a time. An interrupted run started again skips what its shards and OUTPUT
hold; a later run with more inputs adds only the new ones; a run stopped by an error saves
what it processed first.

An image or video that cannot be read (unreadable, truncated, a frame that cannot be decoded)
is skipped with a warning and listed in OUTPUT/skipped.json; boxes with no area inside their
image are not indexed. The last line counts both. A missing input stops the run at once.

Re-ID embeds only the detections the index keeps (TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH).
The fast path for footage on a CPU is the override file configs/index_fast.yaml (measured in
docs/search.md); OUTPUT/inference_path.json records the path of each run.

    python tools/index_gallery.py --config-file configs/mot15/oim_R_18.yaml \
        --override configs/index_fast.yaml \
        --input footage/cam1.mp4 photos/ --every 5 --camera cam1 --output gallery_index \
        MODEL.WEIGHTS output/mot15_oim_R_18/model_final.pth
"""

import argparse

from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from personsearch_kd import load_config
from personsearch_kd.engine import PersonSearchPredictor, add_launcher_arguments, launch_from_args
from personsearch_kd.engine.launcher import share_cpu_cores
from personsearch_kd.engine.command_line import (
    one_line_errors,
    require_file,
    require_weights,
    run_cli,
)
from personsearch_kd.search import expand_inputs, index_gallery, indexing_config


def build_parser():
    parser = one_line_errors(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--config-file", required=True, help="the person-search model's config")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="FILE",
        help="a file of keys merged after --config-file (e.g. configs/index_fast.yaml); "
        "repeatable",
    )
    parser.add_argument(
        "--input", required=True, nargs="+", help="folders, glob patterns, .txt lists, videos"
    )
    parser.add_argument("--output", required=True, help="the index directory")
    parser.add_argument("--every", type=int, default=1, help="index every N-th video frame")
    parser.add_argument("--camera", default="", help="camera id recorded with every detection")
    parser.add_argument(
        "--save-every", type=int, default=200, help="images between saves (and on an error)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        help="images per forward pass (default: the config's TEST.PERSON_SEARCH.IMS_PER_BATCH)",
    )
    add_launcher_arguments(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser


def index(args) -> None:
    """One process's part: its share of the images, then (main process) the merge."""
    setup_logger(name="personsearch_kd", distributed_rank=comm.get_rank())
    cfg = indexing_config(load_config(args.config_file, args.opts, overrides=args.override))
    require_weights(cfg, args.config_file)
    if cfg.MODEL.DEVICE == "cpu":
        share_cpu_cores()
    index_gallery(
        cfg, PersonSearchPredictor(cfg), args.input, args.output, args.every, args.camera,
        args.save_every, args.batch_size,
    )  # fmt: skip


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    require_file(parser, "--config-file", args.config_file, "a config .yaml file")
    for override in args.override:
        require_file(parser, "--override", override, "a config .yaml file of keys")
    for name in ("every", "save_every", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    expand_inputs(args.input)  # a missing input fails here, before a model is built
    launch_from_args(index, args)


if __name__ == "__main__":
    run_cli(main)  # pragma: no cover
