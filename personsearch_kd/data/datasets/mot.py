# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Any MOTChallenge-format tracking dataset as a person-search set (``<seq>/img1/<frame>.jpg``,
``<seq>/gt/gt.txt``, ``<seq>/seqinfo.ini``), split by a JSON spec in the format of mot15-ps-mini's
``split.json``: per sequence ``train_frames``/``test_frames`` ([first, last], inclusive),
``train_ids`` (labeled in train) and ``query_ids`` (labeled in test); ``queries.per_id``.

Rules (those of split.json): a track id is an identity within its sequence; train identities get
contiguous ids 0..K-1 in (sequence, track id) order, every other train box is an unlabeled person
(-1). In test, query identities are labeled (their own contiguous range) and every other box is
-1. Queries: for each query identity, its boxes with flag 1 in the test frames, sorted by frame;
``per_id`` of them at indices ``i * len // per_id`` (the first and the middle one for 2; one
query when they coincide). Gallery: every test frame of every sequence except the query's frame.
MOT15 gt rows are ``frame, id, x, y, w, h, flag, wx, wy, wz``; MOT16/17/20 rows are
``frame, id, x, y, w, h, flag, class, visibility``, of which only class 1 (pedestrian) is a person.
"""

import configparser
import json
import logging
import os
from typing import Dict, List

import numpy as np

from .records import person_annotation, query_record

__all__ = ["read_seqinfo", "read_mot_gt", "load_mot_person_search", "mot_split_statistics"]

logger = logging.getLogger(__name__)

PEDESTRIAN_CLASS = 1


def read_seqinfo(seq_dir: str) -> Dict:
    """Return {"name", "im_dir", "width", "height", "ext"} from ``<seq_dir>/seqinfo.ini``."""
    path = os.path.join(seq_dir, "seqinfo.ini")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing (MOTChallenge sequences have a seqinfo.ini)")
    parser = configparser.ConfigParser()
    parser.read(path)
    try:
        sec = parser["Sequence"]
        return {
            "name": sec["name"],
            "im_dir": sec.get("imDir", "img1"),
            "width": int(sec["imWidth"]),
            "height": int(sec["imHeight"]),
            "ext": sec.get("imExt", ".jpg"),
        }
    except KeyError as e:
        raise KeyError(f"{path}: section [Sequence] needs key {e}") from None


def read_mot_gt(path: str, width: int, height: int) -> np.ndarray:
    """
    Parse a MOTChallenge gt.txt into rows (frame, track_id, x0, y0, x1, y1, flag): 0-based XYXY
    boxes clipped to the image (MOT boxes are 1-based and may stick out). Non-pedestrian rows of
    the MOT16+ format are left out, with a log line saying how many.

    Returns:
        (R, 7) float64 array.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing ground-truth file")
    try:
        raw = np.loadtxt(path, delimiter=",", ndmin=2)
    except ValueError as e:
        raise ValueError(f"{path}: not a comma-separated table of numbers ({e})") from None
    if raw.shape[1] not in (9, 10):
        raise ValueError(
            f"{path}: expected 10 columns (MOT15: frame,id,x,y,w,h,flag,wx,wy,wz) or 9 "
            f"(MOT16+: frame,id,x,y,w,h,flag,class,visibility), got {raw.shape[1]}"
        )
    if raw.shape[1] == 9:
        person = raw[:, 7] == PEDESTRIAN_CLASS
        if not person.all():
            logger.info(f"{path}: {int((~person).sum())} non-pedestrian rows are not persons")
        raw = raw[person]
    x0, y0 = raw[:, 2] - 1, raw[:, 3] - 1
    boxes = np.stack([x0, y0, x0 + raw[:, 4], y0 + raw[:, 5]], axis=1)
    boxes = np.clip(boxes, 0, [width, height, width, height])
    empty = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if empty.any():
        row = int(np.nonzero(empty)[0][0])
        raise ValueError(
            f"{path}: box of frame {int(raw[row, 0])} id {int(raw[row, 1])} "
            f"(x, y, w, h = {raw[row, 2:6].tolist()}) lies outside the {width}x{height} image"
        )
    return np.concatenate([raw[:, :2], boxes, raw[:, 6:7]], axis=1)


def _load_spec(split_file: str) -> Dict:
    with open(split_file) as f:
        spec = json.load(f)
    for key in ("sequences", "queries"):
        if key not in spec:
            raise KeyError(f"{split_file}: missing key {key!r}")
    for seq, s in spec["sequences"].items():
        for key in ("train_frames", "test_frames", "train_ids", "query_ids"):
            if key not in s:
                raise KeyError(f"{split_file}: sequences.{seq} misses key {key!r}")
        if set(s["train_ids"]) & set(s["query_ids"]):
            raise ValueError(f"{split_file}: sequences.{seq}: ids both in train_ids and query_ids")
    if int(spec["queries"].get("per_id", 0)) < 1:
        raise ValueError(f"{split_file}: queries.per_id must be an integer >= 1")
    return spec


def _frames(seq_dir: str, info: Dict, first: int, last: int) -> List[int]:
    image_dir = os.path.join(seq_dir, info["im_dir"])
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"{image_dir}: missing image folder")
    frames = []
    for name in os.listdir(image_dir):
        stem, ext = os.path.splitext(name)
        if ext == info["ext"] and stem.isdigit() and first <= int(stem) <= last:
            frames.append(int(stem))
    return sorted(frames)


def _identity_map(spec: Dict, key: str) -> Dict:
    """(sequence, track id) -> contiguous id, in (sequence, track id) order."""
    keys = sorted((seq, int(t)) for seq, s in spec["sequences"].items() for t in s[key])
    return {k: i for i, k in enumerate(keys)}


def load_mot_person_search(root: str, split_file: str, split: str) -> List[Dict]:
    """
    Args:
        root: folder holding the sequences named in the spec.
        split_file: the JSON split spec.
        split: "train" or "test".

    Returns:
        list[dict]: detectron2 dataset dicts. Each image has file_name, height, width, image_id
        ("<seq>/<frame>"), cam_id (the sequence) and annotations (bbox XYXY_ABS, category_id 0,
        person_id). For "test", the gallery images are followed by one dict per query, with the
        image fields of the query's frame plus ``query_boxes`` [[x0, y0, x1, y1]], ``query_pid``,
        ``query_id`` and empty ``annotations``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    spec = _load_spec(split_file)
    ids = _identity_map(spec, "train_ids" if split == "train" else "query_ids")
    records, queries = [], []
    for seq, s in spec["sequences"].items():
        seq_dir = os.path.join(root, seq)
        info = read_seqinfo(seq_dir)
        gt_path = os.path.join(seq_dir, "gt", "gt.txt")
        rows = read_mot_gt(gt_path, info["width"], info["height"])
        first, last = s[f"{split}_frames"]
        frames = _frames(seq_dir, info, first, last)
        in_range = (rows[:, 0] >= first) & (rows[:, 0] <= last)
        orphans = sorted(set(rows[in_range, 0].astype(int).tolist()) - set(frames))
        if orphans:
            raise FileNotFoundError(
                f"{gt_path}: frames {orphans[:5]} have boxes but no image in {info['im_dir']}/"
            )
        labeled = set(int(t) for t in s["train_ids" if split == "train" else "query_ids"])
        for frame in frames:
            frame_rows = rows[rows[:, 0] == frame]
            record = {
                "file_name": os.path.join(seq_dir, info["im_dir"], f"{frame:06d}{info['ext']}"),
                "height": info["height"],
                "width": info["width"],
                "image_id": f"{seq}/{frame:06d}",
                "cam_id": seq,
                "annotations": [
                    person_annotation(
                        row[2:6].tolist(),
                        ids[(seq, int(row[1]))] if int(row[1]) in labeled else -1,
                    )
                    for row in frame_rows
                ],
            }
            records.append(record)
        if split == "test":
            per_id = spec["queries"]["per_id"]
            queries += _queries(seq, s, rows, frames, ids, records, per_id, len(queries))
    return records + queries


def _queries(seq, s, rows, frames, ids, records, per_id, first_query_id):
    by_image_id = {r["image_id"]: r for r in records}
    frame_set = set(frames)
    out = []
    for track in sorted(int(t) for t in s["query_ids"]):
        mine = rows[(rows[:, 1] == track) & (rows[:, 6] == 1)]
        mine = mine[[int(f) in frame_set for f in mine[:, 0]]]
        mine = mine[np.argsort(mine[:, 0], kind="stable")]
        if len(mine) == 0:
            raise ValueError(f"{seq}: query id {track} has no flag-1 box in the test frames")
        for index in sorted({i * len(mine) // per_id for i in range(per_id)}):
            row = mine[index]
            image = by_image_id[f"{seq}/{int(row[0]):06d}"]
            out.append(
                query_record(image, row[2:6].tolist(), ids[(seq, track)], first_query_id + len(out))
            )
    return out


def mot_split_statistics(records: List[Dict]) -> Dict:
    """Counts for a loaded split: images, boxes, labeled identities, queries."""
    images = [r for r in records if "query_boxes" not in r]
    pids = {a["person_id"] for r in images for a in r["annotations"] if a["person_id"] >= 0}
    return {
        "images": len(images),
        "boxes": sum(len(r["annotations"]) for r in images),
        "labeled_ids": len(pids),
        "queries": len(records) - len(images),
    }
