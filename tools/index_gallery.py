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
hold; a later run with more inputs adds only the new ones.

    python tools/index_gallery.py --config-file configs/mot15/oim_R_18_C4_cpu.yaml \
        --input footage/cam1.mp4 photos/ --every 5 --camera cam1 --output gallery_index \
        MODEL.WEIGHTS output/mot15_oim_R_18_C4_cpu/model_final.pth
"""

import argparse
import logging
import os
import shutil
from typing import Iterator, List

from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from tqdm import tqdm

from personsearch_kd import load_config
from personsearch_kd.engine import PersonSearchPredictor, add_launcher_arguments, launch_from_args
from personsearch_kd.search import (
    GalleryIndex,
    count_sources,
    expand_inputs,
    model_fingerprint,
    prefetch,
    read_sources,
)

logger = logging.getLogger("personsearch_kd.index_gallery")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, help="the person-search model's config")
    parser.add_argument(
        "--input", required=True, nargs="+", help="folders, glob patterns, .txt lists, videos"
    )
    parser.add_argument("--output", required=True, help="the index directory")
    parser.add_argument("--every", type=int, default=1, help="index every N-th video frame")
    parser.add_argument("--camera", default="", help="camera id recorded with every detection")
    parser.add_argument("--save-every", type=int, default=200, help="images between saves")
    parser.add_argument(
        "--batch-size", type=int, default=1, help="images per forward pass (batched inference)"
    )
    add_launcher_arguments(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser


def _batches(items: Iterator, size: int) -> Iterator[List]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _open(directory, model, dim, cfg, factory=None):
    """The index in ``directory`` if there is one (it must be of ``model``), else a new one."""
    if os.path.isfile(os.path.join(directory, "index.json")):
        return GalleryIndex.load(directory, model)
    index_cfg = cfg.GALLERY_INDEX
    return GalleryIndex(
        dim,
        model,
        factory or index_cfg.FACTORY,
        index_cfg.SEARCH_PARAMS,
        index_cfg.TRAIN_SIZE,
    )


def index_shard(args) -> None:
    """One process's share of the sources into its exact shard, then the merge on the main one."""
    setup_logger(name="personsearch_kd", distributed_rank=comm.get_rank())
    cfg = load_config(args.config_file, args.opts)
    files = expand_inputs(args.input)
    rank, world = comm.get_rank(), comm.get_world_size()
    model = model_fingerprint(cfg)
    predictor = PersonSearchPredictor(cfg)
    dim = cfg.MODEL.OIM.EMBED_DIM
    final = _open(args.output, model, dim, cfg) if os.path.isdir(args.output) else None
    shard_dir = os.path.join(args.output, "shards", f"{rank}-of-{world}")
    shard = _open(shard_dir, model, dim, cfg, factory="Flat")
    position = {"n": 0}  # sources in reading order: process rank takes every world-th one

    def wanted(path, frame):
        mine = position["n"] % world == rank
        position["n"] += 1
        done = shard.has_source(path, frame) or (
            final is not None and final.has_source(path, frame)
        )
        return mine and not done

    total = count_sources(files, args.every)
    logger.info(f"{total} images and frames, shared by {world} processes")
    thresh = cfg.TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH
    finished = shard.num_sources + (final.num_sources if final is not None else 0) // world
    progress = tqdm(
        total=total // world,
        initial=finished,
        disable=not comm.is_main_process(),
        desc="indexing",
    )
    since_save = 0
    for batch in _batches(prefetch(read_sources(files, args.every, wanted)), args.batch_size):
        for source, instances in zip(batch, predictor.detect_batch([s.image for s in batch])):
            instances = instances[instances.scores >= thresh]
            shard.add(
                instances.reid_feats.numpy(),
                instances.pred_boxes.tensor.numpy(),
                instances.scores.numpy(),
                source.path,
                source.frame,
                source.time,
                args.camera,
            )
        progress.update(len(batch))
        since_save += len(batch)
        if since_save >= args.save_every:
            shard.save(shard_dir)
            since_save = 0
    progress.close()
    shard.save(shard_dir)
    comm.synchronize()
    if not comm.is_main_process():
        return
    final = _open(args.output, model, dim, cfg)
    if cfg.GALLERY_INDEX.GPU:
        final.to_gpus()  # training and adding an IVF index is where a GPU pays
    for name in sorted(os.listdir(os.path.join(args.output, "shards"))):
        final.merge(GalleryIndex.load(os.path.join(args.output, "shards", name), model))
    final.save(args.output)
    shutil.rmtree(os.path.join(args.output, "shards"))
    logger.info(
        f"{args.output}: {len(final)} detections of {final.num_sources} images and frames "
        f"({final.factory})"
    )


def main(argv=None):
    launch_from_args(index_shard, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()  # pragma: no cover
