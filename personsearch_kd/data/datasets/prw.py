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

Rejected with an :class:`~.checks.AnnotationError` naming the file and the row, line or key (a
missing file stays a FileNotFoundError naming it):

- any .mat file scipy cannot read (bad header, truncation, ...);
- frame lists: content that is not strings, an empty name or one with a path separator, a frame
  twice (``c1s1_000001`` beside ``c1s1_000001.jpg`` included);
- ``<name>.jpg.mat``: rows that are not a numeric (R, 5) matrix, NaN or infinity, an id that is
  not an integer, an id outside the documented ones (>= 0, or -2 for an unlabeled person: -1, -3
  and below are rejected), the same labeled id twice in one frame (-2 may repeat), a box left empty
  by clipping;
- query lists: bytes that are not UTF-8, a line of other than 6 fields, a pid that is not an
  integer >= 0 (-2, the unlabeled id, cannot be a query), NaN or infinite coordinates, w or h <= 0,
  the same (pid, frame) twice, a box with no pixel on its image, a pid in no test frame, a frame
  not in the test split; a list without a query line (empty, blank or a header only).
"""

import os
import re
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

from detectron2.data import DatasetCatalog

from .checks import (
    MAX_ID,
    AnnotationError,
    first_duplicate,
    first_nonfinite_row,
    first_noninteger,
    first_true,
    load_mat,
    read_text,
)
from .records import person_annotation, query_record, set_metadata

__all__ = ["read_prw_frames", "read_prw_annotation", "read_prw_queries", "load_prw", "register_prw"]

ANNOTATION_KEYS = ("box_new", "anno_file", "anno_previous")
UNLABELED_PRW_ID = -2
SPLIT_FILES = {
    "train": ("frame_train.mat", "img_index_train"),
    "test": ("frame_test.mat", "img_index_test"),
}


def _strings(value, path: str, key: str) -> List[str]:
    """
    Flatten a loadmat value (cell = object array of arrays, char matrix, str) into strings, in
    order. Anything else (numbers, structs) is an error: iterating a number array element by
    element would recurse forever.
    """
    out, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item.strip())
            continue
        item = np.asarray(item)
        if item.dtype.kind == "U":
            out.extend(s.strip() for s in item.ravel().tolist())
        elif item.dtype.kind == "O" and item.dtype.names is None:
            stack.extend(reversed(item.ravel().tolist()))
        else:
            raise AnnotationError(path, f"{key} must hold frame names, found {item.dtype} values")
    return out


def read_prw_frames(root: str, split: str) -> List[str]:
    """Frame names of a split (``frame_<split>.mat``), in file order, without ``.jpg``."""
    file_name, key = SPLIT_FILES[split]
    path = os.path.join(root, file_name)
    mat = load_mat(path)
    if key not in mat:
        raise AnnotationError(path, f"missing key {key!r}")
    names = [n[:-4] if n.endswith(".jpg") else n for n in _strings(mat[key], path, key)]
    bad = next((n for n in names if not n or "/" in n or "\\" in n), None)
    if bad is not None:
        raise AnnotationError(path, f"{key}: {bad!r} is not a frame name")
    pair = first_duplicate(names)
    if pair is not None:
        raise AnnotationError(
            path, f"{key}[{pair[1]}]: frame {names[pair[1]]!r} listed twice (also [{pair[0]}])"
        )
    return names


def read_prw_annotation(path: str, width: int, height: int) -> np.ndarray:
    """
    Parse one ``<name>.jpg.mat`` into rows (id, x0, y0, x1, y1): XYXY boxes clipped to the
    ``width`` x ``height`` image, ids as in the file (-2 = unlabeled).

    Returns:
        (R, 5) float64 array.
    """
    mat = load_mat(path)
    key = next((k for k in ANNOTATION_KEYS if k in mat), None)
    if key is None:
        raise AnnotationError(path, f"none of the keys {', '.join(map(repr, ANNOTATION_KEYS))}")
    raw = np.asarray(mat[key])
    if raw.size == 0:
        return np.zeros((0, 5))
    if raw.dtype.kind not in "iuf" or raw.ndim != 2 or raw.shape[1] != 5:
        raise AnnotationError(
            path, f"{key} rows must be [id, x, y, w, h], got {raw.dtype} of shape {raw.shape}"
        )
    raw = raw.astype(np.float64)
    _check_annotation_ids(path, key, raw)
    boxes = np.concatenate([raw[:, 1:3], raw[:, 1:3] + raw[:, 3:5]], axis=1)
    boxes = np.clip(boxes, 0, [width, height, width, height])
    row = first_true((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))
    if row is not None:
        raise AnnotationError(
            path,
            f"{key} row {row} (id, x, y, w, h = {raw[row].tolist()}) lies outside the "
            f"{width}x{height} image",
        )
    return np.concatenate([raw[:, :1], boxes], axis=1)


def _check_annotation_ids(path: str, key: str, raw: np.ndarray) -> None:
    """Finite numbers; ids whole numbers, >= 0 or -2 (unlabeled), a labeled id once a frame."""
    row = first_nonfinite_row(raw)
    if row is not None:
        raise AnnotationError(path, f"{key} row {row}: NaN or infinity in {raw[row].tolist()}")
    ids = raw[:, 0]
    row = first_noninteger(ids, UNLABELED_PRW_ID, MAX_ID)
    if row is None:
        row = first_true(ids == -1)
    if row is not None:
        raise AnnotationError(
            path,
            f"{key} row {row}: id {ids[row]} is not a PRW id (an integer >= 0, or "
            f"{UNLABELED_PRW_ID} for an unlabeled person)",
        )
    labeled = [(i, row) for row, i in enumerate(ids.tolist()) if i != UNLABELED_PRW_ID]
    pair = first_duplicate(i for i, _ in labeled)
    if pair is not None:
        first, second = labeled[pair[0]][1], labeled[pair[1]][1]
        raise AnnotationError(
            path, f"{key} row {second}: id {int(ids[second])} twice in one frame (also row {first})"
        )


def read_prw_queries(path: str) -> List[Tuple[int, int, List[float], str]]:
    """
    Parse a query list (``query_info.txt`` or ``prwmini_query_info.txt``): lines
    ``pid x y w h frame_name``, CRLF or LF, blank lines skipped, and a first line whose pid is not
    a number (a header such as ``ID x y w h frame``) skipped. UTF-8; a byte-order mark is dropped.

    Returns:
        list of (line number, pid, [x0, y0, x1, y1] floats, frame name).
    """
    text = read_text(path, "query list")
    out, seen = [], {}
    for lineno, line in enumerate(text.split("\n"), start=1):
        fields = line.strip().split()
        if not fields or (lineno == 1 and not _is_number(fields[0])):
            continue
        pid, box = _query_fields(path, lineno, fields)
        key = (pid, fields[5])
        if key in seen:
            raise AnnotationError(
                path, f"query pid {pid} in {fields[5]} twice (also line {seen[key]})", line=lineno
            )
        seen[key] = lineno
        out.append((lineno, pid, box, fields[5]))
    if not out:
        what = "empty" if not text.strip() else "no query line"
        raise AnnotationError(path, f"{what} (expected lines 'pid x y w h frame_name')")
    return out


def _is_number(text: str) -> bool:
    """A header's first field (``ID``) is not a number; a malformed pid (``2.5``) is one."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def _query_fields(path: str, lineno: int, fields: List[str]) -> Tuple[int, List[float]]:
    """pid and [x0, y0, x1, y1] of one query line, checked."""
    if len(fields) != 6:
        raise AnnotationError(
            path, f"expected 6 fields 'pid x y w h frame_name', got {len(fields)}", line=lineno
        )
    try:
        pid, (x, y, w, h) = int(fields[0]), map(float, fields[1:5])
    except ValueError:
        raise AnnotationError(path, "pid x y w h must be numbers", line=lineno) from None
    if not 0 <= pid <= MAX_ID:
        # -2 is PRW's unlabeled person: nothing to search for; other negatives are not PRW ids.
        raise AnnotationError(path, f"query pid must be an identity >= 0, got {pid}", line=lineno)
    if not np.isfinite([x, y, w, h]).all():
        raise AnnotationError(path, f"NaN or infinity in x y w h {[x, y, w, h]}", line=lineno)
    if w <= 0 or h <= 0:
        raise AnnotationError(path, f"query box w, h must be > 0, got {w}, {h}", line=lineno)
    # Floats, where the reference casts to int: the query box only seeds the query
    # feature; the evaluation matches against the gallery's ground-truth boxes.
    return pid, [x, y, x + w, y + h]


def _camera(name: str, source: str) -> int:
    match = re.match(r"c(\d)", name)
    if match is None:
        raise AnnotationError(source, f"frame name {name!r} has no camera 'c<digit>' prefix")
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
        annotation = os.path.join(root, "annotations", f"{name}.jpg.mat")
        # A frame list naming a frame that is not there is as likely at fault as the frame.
        for path, what in ((file_name, "frame image"), (annotation, "file")):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path}: missing {what} (frame {name!r} of {split_file})")
        width, height = _image_size(file_name)
        rows = read_prw_annotation(annotation, width, height)
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
        records += _queries(query_file or query_info, queries, ids, present, records, root)
    return records


def _queries(path, queries, ids, present, records, root):
    by_image_id = {r["image_id"]: r for r in records}
    out = []
    for lineno, pid, box, frame in queries:
        if pid not in present:
            raise AnnotationError(
                path,
                f"query pid {pid} appears in no test frame annotation (its frame's: "
                f"{os.path.join(root, 'annotations', frame + '.jpg.mat')})",
                line=lineno,
            )
        if pid not in ids:
            raise AnnotationError(
                path, f"query pid {pid} is not a query_info.txt identity", line=lineno
            )
        if frame not in by_image_id:
            raise AnnotationError(
                path, f"query frame {frame!r} is not in the test split", line=lineno
            )
        image = by_image_id[frame]
        x0, y0, x1, y1 = box
        # Kept unclipped, as the reference does; but it must show some of its image.
        if x0 >= image["width"] or y0 >= image["height"] or x1 <= 0 or y1 <= 0:
            raise AnnotationError(
                path,
                f"query box {box} (x0, y0, x1, y1) is off its {image['width']}x{image['height']} "
                f"image {image['file_name']}",
                line=lineno,
            )
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
