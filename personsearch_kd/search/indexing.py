# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Indexing a gallery in one process or several (detectron2's launcher): each process adds its share
of the sources to an exact shard under ``<output>/shards/``, saved as it goes, so that a run
started again skips what is done; the main process then merges the shards into ``<output>``.

Sources that cannot be read are skipped, not fatal: each shard, then ``<output>``, keeps a report
of them, ``skipped.json`` (see :func:`read_skip_report`). Boxes with no area inside their image
are not indexed. ``<output>/inference_path.json`` records how each run computed its features
(:func:`inference_path`).
"""

import json
import logging
import os
import shutil
from contextlib import closing
from typing import Dict, Iterable, Iterator, List, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from detectron2.utils import comm

from ..modeling.precision import resolve_precision
from .fingerprint import model_fingerprint
from .frame_gate import UnchangedFrameGate
from .gallery_index import GalleryIndex
from .recall_check import check_recall, describe_recall
from .sources import SkippedSource, count_sources, expand_inputs, prefetch, read_sources

__all__ = [
    "INFERENCE_PATH",
    "SKIP_REPORT",
    "index_gallery",
    "indexing_config",
    "inference_path",
    "merge_shards",
    "open_index",
    "read_skip_report",
]

logger = logging.getLogger(__name__)

SHARDS = "shards"
SKIP_REPORT = "skipped.json"
INFERENCE_PATH = "inference_path.json"


def indexing_config(cfg):
    """
    ``cfg`` for indexing: the detector keeps only the detections the index keeps (scoring at
    least TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH), so that re-ID embeds those alone. The index is
    the same: a detection scoring less can suppress none scoring more in NMS.
    """
    cfg = cfg.clone()
    frozen = cfg.is_frozen()
    cfg.defrost()
    # The detector keeps scores > SCORE_THRESH_TEST (fp32), the index scores >= the search
    # threshold: the fp32 number just below the latter keeps the same detections.
    kept = np.nextafter(np.float32(cfg.TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH), np.float32(-1))
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = max(cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST, float(kept))
    if frozen:
        cfg.freeze()
    return cfg


def inference_path(cfg, batch_size: int) -> Dict:
    """
    How the features of an indexing run with ``cfg`` are computed (``inference_path.json``):
    the device, its CPU capability, the precision (TEST.PERSON_SEARCH.PRECISION resolved; int8's
    calibration images), re-ID placement, the test-time budget, images per forward and the
    unchanged-frame gate.
    """
    precision = resolve_precision(cfg.TEST.PERSON_SEARCH.PRECISION, cfg.MODEL.DEVICE)
    return {
        "device": cfg.MODEL.DEVICE,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "precision": precision,
        "int8_calibration_images": (
            cfg.TEST.PERSON_SEARCH.INT8_CALIBRATION_IMAGES if precision == "int8" else None
        ),
        "reid_on_proposals": bool(cfg.TEST.PERSON_SEARCH.REID_ON_PROPOSALS),
        "rpn_nms_thresh": cfg.MODEL.RPN.NMS_THRESH,
        "rpn_pre_nms_topk": cfg.MODEL.RPN.PRE_NMS_TOPK_TEST,
        "rpn_post_nms_topk": cfg.MODEL.RPN.POST_NMS_TOPK_TEST,
        "rpn_min_objectness": cfg.MODEL.RPN.MIN_OBJECTNESS_TEST,
        "detection_score_thresh": cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
        "min_size_test": cfg.INPUT.MIN_SIZE_TEST,
        "max_size_test": cfg.INPUT.MAX_SIZE_TEST,
        "images_per_forward": batch_size,
        "unchanged_frame_share": cfg.GALLERY_INDEX.UNCHANGED_FRAME_SHARE,
        "torch": torch.__version__,
    }


def _write_json(directory: str, name: str, value) -> None:
    """``directory/name`` (folder created) replaced atomically, as the index files are."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=1)
    os.replace(path + ".tmp", path)


def _record_inference_path(directory: str, path: Dict, sources: int) -> None:
    """Append this run's path and the sources it added to ``directory/inference_path.json``."""
    file = os.path.join(directory, INFERENCE_PATH)
    runs = []
    if os.path.isfile(file):
        with open(file) as f:
            runs = json.load(f)
    _write_json(directory, INFERENCE_PATH, runs + [{"path": path, "sources_added": sources}])


def open_index(directory: str, model, cfg, factory: Optional[str] = None) -> GalleryIndex:
    """
    The index in ``directory`` if there is one (it must be of ``model``), else a new one of
    ``cfg.GALLERY_INDEX`` for ``cfg``'s feature size; ``factory`` replaces its FACTORY and,
    being another type, takes faiss's default search parameters (an exact shard has none).
    """
    if os.path.isfile(os.path.join(directory, "index.json")):
        return GalleryIndex.load(directory, model)
    index_cfg = cfg.GALLERY_INDEX
    return GalleryIndex(
        cfg.MODEL.OIM.EMBED_DIM,
        model,
        factory or index_cfg.FACTORY,
        "" if factory else index_cfg.SEARCH_PARAMS,
        index_cfg.TRAIN_SIZE,
    )


def read_skip_report(directory: str) -> List[Dict]:
    """
    The sources that indexing into ``directory`` skipped, from its ``skipped.json`` ([] if there
    is none): ``{"path", "frame", "reason"}`` each, ``frame`` None for a whole file.
    """
    path = os.path.join(directory, SKIP_REPORT)
    if not os.path.isfile(path):
        return []
    try:
        with open(path) as f:
            entries = json.load(f)
        return [{"path": e["path"], "frame": e["frame"], "reason": e["reason"]} for e in entries]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{path}: not a skip report ({e}; expected a list of {{path, frame, reason}}; "
            "remove it to start a new one)"
        ) from e


def _merge_skip_reports(
    earlier: Iterable[Dict], current: Iterable[Dict], read_files: Sequence[str]
) -> List[Dict]:
    """
    The entries of ``earlier`` whose file was not read again (``read_files``), then those of
    ``current``, one per (path, frame): a file read again is reported as it is now, so a
    repaired file leaves the report and one still broken stays in it once.
    """
    read_again = set(read_files)
    merged = {}
    for entry in [e for e in earlier if e["path"] not in read_again] + list(current):
        merged[(entry["path"], entry["frame"])] = entry
    return list(merged.values())


def _readable(items: Iterator, on_skip) -> Iterator:
    """The sources of ``items``; its :class:`SkippedSource` items go to ``on_skip`` instead."""
    for item in items:
        if isinstance(item, SkippedSource):
            on_skip(item)
        else:
            yield item


def _batches(items: Iterator, size: int) -> Iterator[List]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _boxes_with_area(features, boxes, scores, height: int, width: int):
    """
    The detections whose box, clipped to the ``height`` x ``width`` image, still has an area
    (with the clipped boxes), and how many had none: a zero-width box, or one outside the image,
    has a feature of nothing that can still come back as a match.
    """
    boxes = np.clip(boxes, 0, [width, height, width, height])
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # NaN boxes fail too
    return features[keep], boxes[keep], scores[keep], int((~keep).sum())


def _kept_detections(instances, thresh: float, height: int, width: int):
    """(features, boxes, scores, boxes without area) of the detections an index keeps."""
    instances = instances[instances.scores >= thresh]
    return _boxes_with_area(
        instances.reid_feats.numpy(),
        instances.pred_boxes.tensor.numpy(),
        instances.scores.numpy(),
        height,
        width,
    )


def _index_share(
    cfg, model, predictor, files, output, every, camera, save_every, batch_size
) -> int:
    """
    This process's share of the sources into its exact shard, saved every ``save_every`` and
    when the loop leaves, by an error too. Video frames that GALLERY_INDEX.UNCHANGED_FRAME_SHARE
    finds unchanged take the detections of their video's last frame run. Returns the number of
    boxes without area left out.
    """
    rank, world = comm.get_rank(), comm.get_world_size()
    final = open_index(output, model, cfg) if os.path.isdir(output) else None
    shard_dir = os.path.join(output, SHARDS, f"{rank}-of-{world}")
    shard = open_index(shard_dir, model, cfg, factory="Flat")
    earlier_skips = read_skip_report(shard_dir)  # of an interrupted run
    skipped: List[Dict] = []
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

    def skip(source: SkippedSource):
        frame = "" if source.frame is None else f" frame {source.frame}"
        logger.warning(f"skipped {source.path}{frame}: {source.reason}")
        skipped.append(source._asdict())
        progress.update(1)

    def save():
        shard.save(shard_dir)
        _write_json(shard_dir, SKIP_REPORT, _merge_skip_reports(earlier_skips, skipped, files))

    gate = UnchangedFrameGate(cfg.GALLERY_INDEX.UNCHANGED_FRAME_SHARE)
    last_run = {}  # video path -> the kept detections of its last frame the model ran on
    without_area = since_save = 0
    try:
        with closing(prefetch(read_sources(files, every, wanted))) as sources:
            for batch in _batches(_readable(sources, skip), batch_size):
                unchanged = [gate.unchanged(s) for s in batch]
                run = [s.image for s, same in zip(batch, unchanged) if not same]
                detections = iter(predictor.detect_batch(run) if run else [])
                for source, same in zip(batch, unchanged):
                    if same:  # its reference came before it: in this batch or an earlier one
                        features, boxes, scores = last_run[source.path]
                    else:
                        found = _kept_detections(next(detections), thresh, *source.image.shape[:2])
                        features, boxes, scores, dropped = found
                        without_area += dropped
                        last_run[source.path] = (features, boxes, scores)
                    shard.add(features, boxes, scores, source.path, source.frame, source.time,
                              camera)  # fmt: skip
                progress.update(len(batch))
                since_save += len(batch)
                if since_save >= save_every:
                    save()
                    since_save = 0
    finally:  # an error loses nothing already processed
        progress.close()
        save()
    return without_area


def merge_shards(
    cfg, model, output: str, read_files: Sequence[str] = (), path: Optional[Dict] = None
) -> GalleryIndex:
    """
    Merge every shard of ``output`` into the index there (a new one of ``cfg`` if missing), and
    their skip reports into its ``skipped.json`` (earlier entries of ``read_files``, the files
    of the run that made the shards, are replaced by the shards'); save them and remove the
    shards. An approximate index that grew then runs its recall self-check
    (:func:`.recall_check.check_recall` with GALLERY_INDEX.TARGET_RECALL and LATENCY_BUDGET_MS),
    which chooses and records its search setting. ``path``, the run's :func:`inference_path`,
    is appended to ``inference_path.json`` with the sources the shards added. ``model``: the
    fingerprint they were built with. Returns the index.
    """
    final = open_index(output, model, cfg)
    sources_before = final.num_sources
    if cfg.GALLERY_INDEX.GPU:
        final.to_gpus()  # training and adding an IVF index is where a GPU pays
    shards = os.path.join(output, SHARDS)
    skipped, before = [], len(final)
    for name in sorted(os.listdir(shards)):
        final.merge(GalleryIndex.load(os.path.join(shards, name), model))
        skipped += read_skip_report(os.path.join(shards, name))
    if len(final) > before or final.recall_check is None:
        index_cfg = cfg.GALLERY_INDEX
        check_recall(final, index_cfg.TARGET_RECALL, index_cfg.LATENCY_BUDGET_MS)
    final.save(output)
    merged = _merge_skip_reports(read_skip_report(output), skipped, read_files)
    _write_json(output, SKIP_REPORT, merged)
    if path is not None:
        _record_inference_path(output, path, final.num_sources - sources_before)
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
    batch_size: Optional[int] = None,
) -> Optional[GalleryIndex]:
    """
    Index every person that ``predictor`` detects (scoring at least
    TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH) in the sources of ``inputs`` into the directory
    ``output``; run it in every process of a launch. Sources already in ``output`` or in a shard
    of an interrupted run are skipped. Sources that cannot be read are skipped and listed in
    ``output/skipped.json`` (:func:`read_skip_report`); boxes with no area inside their image
    are not indexed. The last log line counts both. Video frames that the gate of
    GALLERY_INDEX.UNCHANGED_FRAME_SHARE finds unchanged take the detections of the last frame
    the model ran on; ``output/inference_path.json`` records how the features were computed
    (:func:`inference_path`).

    Args:
        cfg: the config of the model ``predictor`` runs (its fingerprint is the index's model;
            :func:`indexing_config` of it embeds only the detections the index keeps).
        predictor: a :class:`PersonSearchPredictor` (``detect_batch``).
        inputs: folders, glob patterns, .txt lists, videos (:func:`expand_inputs`).
        every: index every N-th video frame.
        camera: the camera id recorded with every detection.
        save_every: sources between two saves of a shard (also saved when an error stops it).
        batch_size: images per forward pass (None: TEST.PERSON_SEARCH.IMS_PER_BATCH).

    Returns:
        the merged index on the main process, None on the others.
    """
    files = expand_inputs(inputs)
    model = model_fingerprint(cfg)
    batch_size = batch_size or cfg.TEST.PERSON_SEARCH.IMS_PER_BATCH
    without_area = _index_share(
        cfg, model, predictor, files, output, every, camera, save_every, batch_size
    )
    without_area = sum(comm.all_gather(without_area))  # every process's; also the barrier
    if not comm.is_main_process():
        return None
    path = inference_path(cfg, batch_size)
    final = merge_shards(cfg, model, output, files, path)
    logger.info(
        f"features computed in {path['precision']} on {path['device']}; how: "
        + os.path.join(output, INFERENCE_PATH)
    )
    skipped = read_skip_report(output)
    logger.info(
        f"{output}: {len(final)} detections of {final.num_sources} images and frames "
        f"({final.factory}); {without_area} boxes with no area inside their image not indexed; "
        f"{len(skipped)} sources skipped, listed in {os.path.join(output, SKIP_REPORT)}; "
        + describe_recall(final)
    )
    return final
