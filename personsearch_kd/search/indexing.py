# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Indexing a gallery in one process or several (detectron2's launcher): each process adds its share
of the sources to an exact shard under ``<output>/shards/``, saved as it goes, so that a run
started again skips what is done; the main process then merges the shards into ``<output>``.
"""

import logging
import os
import shutil
from typing import Iterator, List, Optional, Sequence

from detectron2.utils import comm
from tqdm import tqdm

from .fingerprint import model_fingerprint
from .gallery_index import GalleryIndex
from .sources import count_sources, expand_inputs, prefetch, read_sources

__all__ = ["index_gallery", "merge_shards", "open_index"]

logger = logging.getLogger(__name__)

SHARDS = "shards"


def open_index(directory: str, model, cfg, factory: Optional[str] = None) -> GalleryIndex:
    """
    The index in ``directory`` if there is one (it must be of ``model``), else a new one of
    ``cfg.GALLERY_INDEX`` (``factory`` replaces its FACTORY) for ``cfg``'s feature size.
    """
    if os.path.isfile(os.path.join(directory, "index.json")):
        return GalleryIndex.load(directory, model)
    index_cfg = cfg.GALLERY_INDEX
    return GalleryIndex(
        cfg.MODEL.OIM.EMBED_DIM,
        model,
        factory or index_cfg.FACTORY,
        index_cfg.SEARCH_PARAMS,
        index_cfg.TRAIN_SIZE,
    )


def _batches(items: Iterator, size: int) -> Iterator[List]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _index_share(
    cfg, model, predictor, files, output, every, camera, save_every, batch_size
) -> None:
    """This process's share of the sources into its exact shard, saved every ``save_every``."""
    rank, world = comm.get_rank(), comm.get_world_size()
    final = open_index(output, model, cfg) if os.path.isdir(output) else None
    shard_dir = os.path.join(output, SHARDS, f"{rank}-of-{world}")
    shard = open_index(shard_dir, model, cfg, factory="Flat")
    position = {"n": 0}  # sources in reading order: process rank takes every world-th one

    def wanted(path, frame):
        mine = position["n"] % world == rank
        position["n"] += 1
        done = shard.has_source(path, frame) or (
            final is not None and final.has_source(path, frame)
        )
        return mine and not done

    total = count_sources(files, every)
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
    for batch in _batches(prefetch(read_sources(files, every, wanted)), batch_size):
        for source, instances in zip(batch, predictor.detect_batch([s.image for s in batch])):
            instances = instances[instances.scores >= thresh]
            shard.add(
                instances.reid_feats.numpy(),
                instances.pred_boxes.tensor.numpy(),
                instances.scores.numpy(),
                source.path,
                source.frame,
                source.time,
                camera,
            )
        progress.update(len(batch))
        since_save += len(batch)
        if since_save >= save_every:
            shard.save(shard_dir)
            since_save = 0
    progress.close()
    shard.save(shard_dir)


def merge_shards(cfg, model, output: str) -> GalleryIndex:
    """
    Merge every shard of ``output`` into the index there (a new one of ``cfg`` if missing), save
    it and remove the shards. ``model``: the fingerprint they were built with. Returns the index.
    """
    final = open_index(output, model, cfg)
    if cfg.GALLERY_INDEX.GPU:
        final.to_gpus()  # training and adding an IVF index is where a GPU pays
    shards = os.path.join(output, SHARDS)
    for name in sorted(os.listdir(shards)):
        final.merge(GalleryIndex.load(os.path.join(shards, name), model))
    final.save(output)
    shutil.rmtree(shards)
    return final


def index_gallery(
    cfg,
    predictor,
    inputs: Sequence[str],
    output: str,
    every: int = 1,
    camera: str = "",
    save_every: int = 200,
    batch_size: int = 1,
) -> Optional[GalleryIndex]:
    """
    Index every person that ``predictor`` detects (scoring at least
    TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH) in the sources of ``inputs`` into the directory
    ``output``; run it in every process of a launch. Sources already in ``output`` or in a shard
    of an interrupted run are skipped.

    Args:
        cfg: the config of the model ``predictor`` runs (its fingerprint is the index's model).
        predictor: a :class:`PersonSearchPredictor` (``detect_batch``).
        inputs: folders, glob patterns, .txt lists, videos (:func:`expand_inputs`).
        every: index every N-th video frame.
        camera: the camera id recorded with every detection.
        save_every: sources between two saves of a shard.
        batch_size: images per forward pass.

    Returns:
        the merged index on the main process, None on the others.
    """
    files = expand_inputs(inputs)
    model = model_fingerprint(cfg)
    _index_share(cfg, model, predictor, files, output, every, camera, save_every, batch_size)
    comm.synchronize()
    if not comm.is_main_process():
        return None
    final = merge_shards(cfg, model, output)
    logger.info(
        f"{output}: {len(final)} detections of {final.num_sources} images and frames "
        f"({final.factory})"
    )
    return final
