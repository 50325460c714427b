# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
PRW (Zheng et al., "Person Re-identification in the Wild") and PRW-mini as person-search sets.
Layout of ``root``: ``frames/<name>.jpg``; ``annotations/<name>.jpg.mat`` holding one of the keys
``box_new``, ``anno_file``, ``anno_previous`` (tried in this order) with rows ``[id, x, y, w, h]``;
``frame_train.mat`` (key ``img_index_train``) and ``frame_test.mat`` (key ``img_index_test``),
the frame names without ``.jpg`` (e.g. ``c1s1_000151``); ``query_info.txt``, lines
``pid x y w h frame_name`` (2057 queries).

Rules: id -2 is an unlabeled person (-1 here). Boxes are clipped to the image (some coordinates
are negative); a box left empty is an error. Train identities are the distinct ids >= 0 of the
train frames, contiguous 0..K-1 in sorted order: K = 483 on the real data, because id 932, a test
(query) identity, also appears in train frames and is kept as a labeled training id there. In
test, the query identities (distinct pids of ``query_info.txt``) are labeled, contiguous 0..Q-1 in
sorted order, and every other box is -1. The camera is the digit after ``c`` in the frame name.
The test set lists every test frame; each query searches all of them but its own frame
(the evaluator's default), with or without the query's camera (all-camera / cross-camera).

PRW-mini (the 30-query list of the QEEPS authors, ``prwmini_query_info.txt``, same columns as
``query_info.txt``) only swaps the query list: its gallery, identity labels included, is the
full PRW test set, so its numbers are comparable with PRW's.
"""

import os
import re
from typing import Dict, List, Tuple

import numpy as np
import scipy.io
from PIL import Image

from detectron2.data import DatasetCatalog

from .records import person_annotation, query_record, set_metadata

__all__ = ["read_prw_frames", "read_prw_annotation", "read_prw_queries", "load_prw", "register_prw"]

ANNOTATION_KEYS = ("box_new", "anno_file", "anno_previous")
UNLABELED_PRW_ID = -2
SPLIT_FILES = {
    "train": ("frame_train.mat", "img_index_train"),
    "test": ("frame_test.mat", "img_index_test"),
}


def _load_mat(path: str) -> Dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing file")
    try:
        return scipy.io.loadmat(path)
    except Exception as e:  # scipy raises ValueError, MatReadError, ... on a bad file
        raise ValueError(f"{path}: not a readable .mat file ({e})") from None


def _strings(value) -> List[str]:
    """Flatten a loadmat value (cell = object array of arrays, char matrix, str) into strings."""
    if isinstance(value, str):
        return [value.strip()]
    value = np.asarray(value)
    if value.dtype.kind == "U":
        return [s.strip() for s in value.ravel().tolist()]
    return [s for v in value.ravel() for s in _strings(v)]


def read_prw_frames(root: str, split: str) -> List[str]:
    """Frame names of a split (``frame_<split>.mat``), in file order, without ``.jpg``."""
    file_name, key = SPLIT_FILES[split]
    path = os.path.join(root, file_name)
    mat = _load_mat(path)
    if key not in mat:
        raise KeyError(f"{path}: missing key {key!r}")
    names = [n[:-4] if n.endswith(".jpg") else n for n in _strings(mat[key])]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: {key} lists a frame twice")
    return names


def read_prw_annotation(path: str, width: int, height: int) -> np.ndarray:
    """
    Parse one ``<name>.jpg.mat`` into rows (id, x0, y0, x1, y1): XYXY boxes clipped to the
    ``width`` x ``height`` image, ids as in the file (-2 = unlabeled).

    Returns:
        (R, 5) float64 array.
    """
    mat = _load_mat(path)
    key = next((k for k in ANNOTATION_KEYS if k in mat), None)
    if key is None:
        raise KeyError(f"{path}: none of the keys {', '.join(map(repr, ANNOTATION_KEYS))}")
    raw = np.asarray(mat[key], dtype=np.float64)
    if raw.size == 0:
        return np.zeros((0, 5))
    if raw.ndim != 2 or raw.shape[1] != 5:
        raise ValueError(f"{path}: {key} rows must be [id, x, y, w, h], got shape {raw.shape}")
    boxes = np.concatenate([raw[:, 1:3], raw[:, 1:3] + raw[:, 3:5]], axis=1)
    boxes = np.clip(boxes, 0, [width, height, width, height])
    empty = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if empty.any():
        row = int(np.nonzero(empty)[0][0])
        raise ValueError(
            f"{path}: {key} row {row} (id, x, y, w, h = {raw[row].tolist()}) lies outside the "
            f"{width}x{height} image"
        )
    return np.concatenate([raw[:, :1], boxes], axis=1)


def read_prw_queries(path: str) -> List[Tuple[int, int, List[float], str]]:
    """
    Parse a query list (``query_info.txt`` or ``prwmini_query_info.txt``): lines
    ``pid x y w h frame_name``, CRLF or LF, blank lines skipped, and a first line whose pid is not
    a number (a header such as ``ID x y w h frame``) skipped.

    Returns:
        list of (line number, pid, [x0, y0, x1, y1] floats, frame name).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing query list")
    out = []
    with open(path) as f:
        for lineno, line in enumerate(f, start=1):
            fields = line.strip().split()
            if not fields or (lineno == 1 and not fields[0].lstrip("-").isdigit()):
                continue
            if len(fields) != 6:
                raise ValueError(
                    f"{path}:{lineno}: expected 6 fields 'pid x y w h frame_name', "
                    f"got {len(fields)}"
                )
            try:
                pid, (x, y, w, h) = int(fields[0]), map(float, fields[1:5])
            except ValueError:
                raise ValueError(f"{path}:{lineno}: pid x y w h must be numbers") from None
            if w <= 0 or h <= 0:
                raise ValueError(f"{path}:{lineno}: query box w, h must be > 0, got {w}, {h}")
            # Floats, where the reference casts to int: the query box only seeds the query
            # feature; the evaluation matches against the gallery's ground-truth boxes.
            out.append((lineno, pid, [x, y, x + w, y + h], fields[5]))
    return out


def _camera(name: str, source: str) -> int:
    match = re.match(r"c(\d)", name)
    if match is None:
        raise ValueError(f"{source}: frame name {name!r} has no camera 'c<digit>' prefix")
    return int(match.group(1))


def _image_size(path: str) -> Tuple[int, int]:
    """(width, height) from the image header: PIL does not decode the pixels here."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing frame image")
    try:
        with Image.open(path) as image:
            return image.size
    except Exception as e:  # PIL.UnidentifiedImageError, truncated files, ...
        raise ValueError(f"{path}: cannot read the image size ({e})") from None


def _read_split(root: str, split: str) -> List[Dict]:
    split_file = os.path.join(root, SPLIT_FILES[split][0])
    frames = []
    for name in read_prw_frames(root, split):
        file_name = os.path.join(root, "frames", f"{name}.jpg")
        width, height = _image_size(file_name)
        rows = read_prw_annotation(
            os.path.join(root, "annotations", f"{name}.jpg.mat"), width, height
        )
        frames.append(
            {
                "file_name": file_name,
                "height": height,
                "width": width,
                "image_id": name,
                "cam_id": _camera(name, split_file),
                "rows": rows,
            }
        )
    return frames


def load_prw(root: str, split: str, query_file: str = None) -> List[Dict]:
    """
    Args:
        root: the PRW folder.
        split: "train" or "test".
        query_file: the test queries (default ``<root>/query_info.txt``; PRW-mini passes
            ``prwmini_query_info.txt``). The labeled test identities always come from
            ``<root>/query_info.txt``.

    Returns:
        list[dict]: detectron2 dataset dicts. Each image has file_name, height, width, image_id
        (the frame name), cam_id (int) and annotations (bbox XYXY_ABS, category_id 0,
        person_id). For "test", the gallery images are followed by one dict per query, with the
        image fields of the query's frame plus ``query_boxes`` [[x0, y0, x1, y1]], ``query_pid``,
        ``query_id`` and empty ``annotations``.
    """
    if split not in SPLIT_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    frames = _read_split(root, split)
    present = {int(i) for f in frames for i in f["rows"][:, 0]}
    query_info = os.path.join(root, "query_info.txt")
    if split == "train":
        labeled = sorted(i for i in present if i >= 0)
    else:
        prw_queries = read_prw_queries(query_info)
        labeled = sorted({pid for _, pid, _, _ in prw_queries})
    ids = {pid: i for i, pid in enumerate(labeled)}
    records = [
        {key: f[key] for key in ("file_name", "height", "width", "image_id", "cam_id")}
        | {
            "annotations": [
                person_annotation(row[1:5].tolist(), ids.get(int(row[0]), -1)) for row in f["rows"]
            ]
        }
        for f in frames
    ]
    if split == "test":
        queries = prw_queries if query_file is None else read_prw_queries(query_file)
        records += _queries(query_file or query_info, queries, ids, present, records)
    return records


def _queries(path, queries, ids, present, records):
    by_image_id = {r["image_id"]: r for r in records}
    out = []
    for lineno, pid, box, frame in queries:
        if pid not in present:
            raise ValueError(
                f"{path}:{lineno}: query pid {pid} appears in no test frame annotation"
            )
        if pid not in ids:
            raise ValueError(f"{path}:{lineno}: query pid {pid} is not a query_info.txt identity")
        if frame not in by_image_id:
            raise ValueError(f"{path}:{lineno}: query frame {frame!r} is not in the test split")
        image = by_image_id[frame]
        out.append(query_record(image, box, ids[pid], len(out)))
    return out


def register_prw(name: str, root: str, query_file: str = None):
    """
    Register ``<name>_train`` and ``<name>_test`` for the PRW folder ``root`` (PRW-mini: pass its
    ``query_file``). Files are read only when a dataset is loaded. The test set holds the gallery
    images followed by the queries, which :class:`PersonSearchEvaluator` understands.
    """
    for split in ("train", "test"):
        DatasetCatalog.register(
            f"{name}_{split}", lambda split=split: load_prw(root, split, query_file)
        )
        # PRW has 6 cameras; the literature reports both all-camera and cross-camera search.
        set_metadata(
            f"{name}_{split}",
            ("all", "cross_camera"),
            image_root=os.path.join(root, "frames"),
            query_file=query_file or os.path.join(root, "query_info.txt"),
        )
