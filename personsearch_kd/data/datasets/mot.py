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

Rejected with an :class:`~.checks.AnnotationError` naming the file and the line or key
(a missing file stays a FileNotFoundError naming it):

- seqinfo.ini: bytes that are not UTF-8, INI syntax errors (a section or key twice, a line outside
  a section), no [Sequence] section, no name/imWidth/imHeight, a width or height that is not a
  positive integer, an imDir that is not a plain folder name, an imExt that is not ``.<letters>``.
- gt.txt: bytes that are not UTF-8, a field that is not a number, a row of other than 9 or 10
  columns or of another width than the first row, NaN or infinity anywhere, a frame that is not an
  integer >= 1 or a track id that is not an integer >= 0 (2.5 would merge into 2), a person
  (frame, track id) twice, a box left empty by clipping to the seqinfo.ini image size.
- split.json: invalid JSON, non-UTF-8 bytes, nesting too deep, NaN/Infinity, a key twice in one
  object, a top level that is not an object; ``sequences`` not a non-empty object, a sequence name
  that is not a plain folder name, a missing key; frame ranges that are not two JSON integers
  [first, last] with 1 <= first <= last, train and test ranges of a sequence that overlap; ids
  that are not JSON integers >= 0 (strings such as "9", floats, bools), an id listed twice, an id
  both in train_ids and query_ids; a train id with no gt.txt box in the train frames, a query id
  with no flag-1 box in the test frames; ``queries.per_id`` not an integer >= 1.
- img1/: two images that are the same frame number (``1.jpg`` beside ``000001.jpg``); a gt.txt
  box in a split's frames whose frame has no image (FileNotFoundError).

A query identity with fewer flag-1 test boxes than ``per_id`` gives each of them once (the index
rule above: 2 queries per identity, one where it has one box); but a ``per_id`` larger than every
query identity's number of flag-1 test boxes (a typo such as 100000000) is an AnnotationError
naming split.json and ``queries.per_id``, for either split. gt.txt: an empty file, one of blank
and '#' comment lines only, and a header line are errors too (a row that is not numbers).
"""

import configparser
import logging
import os
import re
from typing import Dict, List, Tuple

import numpy as np

from .checks import (
    MAX_ID,
    AnnotationError,
    first_duplicate,
    first_nonfinite_row,
    first_noninteger,
    first_true,
    json_int,
    load_json_object,
    read_text,
)
from .records import person_annotation, query_record

__all__ = ["read_seqinfo", "read_mot_gt", "load_mot_person_search", "mot_split_statistics"]

logger = logging.getLogger(__name__)

PEDESTRIAN_CLASS = 1
SPEC_SEQUENCE_KEYS = ("train_frames", "test_frames", "train_ids", "query_ids")
# imDir and sequence names are joined to paths: one plain folder name each.
_PLAIN_NAME = re.compile(r"^(?!\.\.?$)[^/\\]+$")
_IMAGE_EXT = re.compile(r"^\.[A-Za-z0-9]+$")
_GT_ROWS = (
    "comma-separated rows of 10 numbers (MOT15: frame,id,x,y,w,h,flag,wx,wy,wz) or 9 (MOT16+: "
    "frame,id,x,y,w,h,flag,class,visibility), no header line"
)


def read_seqinfo(seq_dir: str) -> Dict:
    """Return {"name", "im_dir", "width", "height", "ext"} from ``<seq_dir>/seqinfo.ini``."""
    path = os.path.join(seq_dir, "seqinfo.ini")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing (MOTChallenge sequences have a seqinfo.ini)")
    # No interpolation: a '%' in a value is text, not a syntax error at lookup time.
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(read_text(path), source=path)
    except configparser.Error as e:
        # configparser's own text repeats the path: keep the line number and the reason only.
        reason = re.sub(r"^While reading from .*?\[line\s+\d+\]: ", "", str(e).splitlines()[0])
        line = getattr(e, "lineno", None)
        raise AnnotationError(path, f"not a valid INI file ({reason})", line=line) from None
    if not parser.has_section("Sequence"):
        raise AnnotationError(path, "missing section [Sequence]")
    section = parser["Sequence"]
    for key in ("name", "imWidth", "imHeight"):
        if key not in section:
            raise AnnotationError(path, f"section [Sequence] needs key {key!r}")
    info = {
        "name": section["name"],
        "im_dir": section.get("imDir", "img1"),
        "width": _positive_int(section["imWidth"], path, "imWidth"),
        "height": _positive_int(section["imHeight"], path, "imHeight"),
        "ext": section.get("imExt", ".jpg"),
    }
    if not _PLAIN_NAME.match(info["im_dir"]):
        raise AnnotationError(path, f"imDir must be a folder name, got {info['im_dir']!r}")
    if not _IMAGE_EXT.match(info["ext"]):
        raise AnnotationError(path, f"imExt must look like '.jpg', got {info['ext']!r}")
    return info


def _positive_int(text: str, path: str, key: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:  # "640.0", "", digits beyond int()'s limit
        value = 0
    if not 1 <= value <= MAX_ID:
        raise AnnotationError(path, f"[Sequence] {key} must be a positive integer, got {text!r}")
    return value


def _parse_gt_table(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """The numbers of a gt.txt, (R, 9 or 10), and the 1-based line number of each row."""
    values, lines = [], []
    # Split on "\n" only (str.splitlines also splits on \x0c, \x1c, ...): line numbers as editors
    # show them. Blank lines and '#' comments are skipped, as np.loadtxt did.
    text = read_text(path, "ground-truth file")
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            row = [float(field) for field in line.split(",")]
        except ValueError:
            raise AnnotationError(
                path,
                f"not a comma-separated row of numbers: {line[:80]!r} (expected {_GT_ROWS})",
                line=lineno,
            ) from None
        if len(row) not in (9, 10):
            raise AnnotationError(
                path,
                "expected 10 columns (MOT15: frame,id,x,y,w,h,flag,wx,wy,wz) or 9 "
                f"(MOT16+: frame,id,x,y,w,h,flag,class,visibility), got {len(row)}",
                line=lineno,
            )
        if values and len(row) != len(values[0]):
            raise AnnotationError(
                path, f"{len(row)} columns where line {lines[0]} has {len(values[0])}", line=lineno
            )
        values.append(row)
        lines.append(lineno)
    if not values:
        what = "empty" if not text.strip() else "only blank or '#' comment lines"
        raise AnnotationError(path, f"{what}: no ground-truth row (expected {_GT_ROWS})")
    table = np.array(values, dtype=np.float64)
    return table, np.array(lines, dtype=np.int64)


def _check_gt_numbers(path: str, raw: np.ndarray, lines: np.ndarray) -> None:
    row = first_nonfinite_row(raw)
    if row is not None:
        raise AnnotationError(path, f"NaN or infinity in {raw[row].tolist()}", line=lines[row])
    for column, name, low in ((0, "frame", 1), (1, "track id", 0)):
        row = first_noninteger(raw[:, column], low, MAX_ID)
        if row is not None:
            raise AnnotationError(
                path,
                f"{name} must be an integer in [{low}, {MAX_ID}], got {raw[row, column]}",
                line=lines[row],
            )


def read_mot_gt(path: str, width: int, height: int, seqinfo: str = "seqinfo.ini") -> np.ndarray:
    """
    Parse a MOTChallenge gt.txt into rows (frame, track_id, x0, y0, x1, y1, flag): 0-based XYXY
    boxes clipped to the image (MOT boxes are 1-based and may stick out). Non-pedestrian rows of
    the MOT16+ format are left out, with a log line saying how many. ``seqinfo`` (the file the
    image size comes from) is named in the message of a box outside the image.

    Returns:
        (R, 7) float64 array.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing ground-truth file")
    raw, lines = _parse_gt_table(path)
    _check_gt_numbers(path, raw, lines)
    if raw.shape[1] == 9:
        person = raw[:, 7] == PEDESTRIAN_CLASS
        if not person.all():
            logger.info(f"{path}: {int((~person).sum())} non-pedestrian rows are not persons")
        raw, lines = raw[person], lines[person]
    pair = first_duplicate(zip(raw[:, 0].tolist(), raw[:, 1].tolist()))
    if pair is not None:
        first, second = pair
        raise AnnotationError(
            path,
            f"frame {int(raw[second, 0])} has track id {int(raw[second, 1])} twice "
            f"(also line {lines[first]})",
            line=lines[second],
        )
    x0, y0 = raw[:, 2] - 1, raw[:, 3] - 1
    boxes = np.stack([x0, y0, x0 + raw[:, 4], y0 + raw[:, 5]], axis=1)
    boxes = np.clip(boxes, 0, [width, height, width, height])
    row = first_true((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))
    if row is not None:
        raise AnnotationError(
            path,
            f"box of frame {int(raw[row, 0])} id {int(raw[row, 1])} "
            f"(x, y, w, h = {raw[row, 2:6].tolist()}) lies outside the {width}x{height} image "
            f"(size from {seqinfo})",
            line=lines[row],
        )
    return np.concatenate([raw[:, :2], boxes, raw[:, 6:7]], axis=1)


def _load_spec(split_file: str) -> Dict:
    """The split spec, every field checked (see the module docstring)."""
    spec = load_json_object(split_file)
    for key in ("sequences", "queries"):
        if key not in spec:
            raise AnnotationError(split_file, f"missing key {key!r}")
        if not isinstance(spec[key], dict):
            raise AnnotationError(split_file, f"{key} must be an object")
    if not spec["sequences"]:
        raise AnnotationError(split_file, "sequences lists no sequence")
    for seq, entry in spec["sequences"].items():
        _check_spec_sequence(split_file, seq, entry)
    if "per_id" not in spec["queries"]:
        raise AnnotationError(split_file, "queries.per_id must be an integer >= 1, missing")
    json_int(spec["queries"]["per_id"], split_file, "queries.per_id", low=1)
    return spec


def _check_spec_sequence(split_file: str, seq: str, entry) -> None:
    key = f"sequences.{seq}"
    if not _PLAIN_NAME.match(seq):
        raise AnnotationError(split_file, f"{key}: a sequence must be a folder name")
    if not isinstance(entry, dict):
        raise AnnotationError(split_file, f"{key} must be an object")
    for name in SPEC_SEQUENCE_KEYS:
        if name not in entry:
            raise AnnotationError(split_file, f"{key} misses key {name!r}")
    train = _frame_range(entry["train_frames"], split_file, f"{key}.train_frames")
    test = _frame_range(entry["test_frames"], split_file, f"{key}.test_frames")
    if train[0] <= test[1] and test[0] <= train[1]:
        raise AnnotationError(
            split_file, f"{key}: train_frames {list(train)} and test_frames {list(test)} overlap"
        )
    train_ids = _id_list(entry["train_ids"], split_file, f"{key}.train_ids")
    query_ids = _id_list(entry["query_ids"], split_file, f"{key}.query_ids")
    both = sorted(set(train_ids) & set(query_ids))
    if both:
        raise AnnotationError(split_file, f"{key}: ids {both} both in train_ids and query_ids")


def _frame_range(value, split_file: str, key: str) -> Tuple[int, int]:
    if not isinstance(value, list) or len(value) != 2:
        raise AnnotationError(split_file, f"{key} must be [first, last], got {value!r:.60}")
    first = json_int(value[0], split_file, f"{key}[0]", low=1)
    last = json_int(value[1], split_file, f"{key}[1]", low=1)
    if first > last:
        raise AnnotationError(split_file, f"{key}: first frame {first} > last frame {last}")
    return first, last


def _id_list(value, split_file: str, key: str) -> List[int]:
    if not isinstance(value, list):
        raise AnnotationError(split_file, f"{key} must be a list of track ids")
    ids = [json_int(v, split_file, f"{key}[{i}]") for i, v in enumerate(value)]
    pair = first_duplicate(ids)
    if pair is not None:
        raise AnnotationError(
            split_file, f"{key}[{pair[1]}]: id {ids[pair[1]]} listed twice (also [{pair[0]}])"
        )
    return ids


def _check_listed_ids_have_boxes(split_file, seq, entry, rows, gt_path) -> None:
    """Every train id needs a box in the train frames, every query id a flag-1 box in the test
    frames (its queries are taken from those)."""
    for ids_key, frames_key, flag_one in (
        ("train_ids", "train_frames", False),
        ("query_ids", "test_frames", True),
    ):
        first, last = entry[frames_key]
        mine = rows[(rows[:, 0] >= first) & (rows[:, 0] <= last)]
        if flag_one:
            mine = mine[mine[:, 6] == 1]
        present = set(mine[:, 1].astype(np.int64).tolist())
        missing = [t for t in entry[ids_key] if t not in present]
        if missing:
            raise AnnotationError(
                split_file,
                f"sequences.{seq}.{ids_key}: id {missing[0]} has no {'flag-1 ' * flag_one}box "
                f"in frames {first}-{last} of {gt_path}",
            )


def _frames(seq_dir: str, info: Dict, first: int, last: int) -> Dict[int, str]:
    """frame number -> image file name, for the images of ``[first, last]``."""
    image_dir = os.path.join(seq_dir, info["im_dir"])
    if not os.path.isdir(image_dir):
        seqinfo = os.path.join(seq_dir, "seqinfo.ini")
        raise FileNotFoundError(f"{image_dir}: missing image folder (imDir of {seqinfo})")
    frames = {}
    for name in sorted(os.listdir(image_dir)):
        stem, ext = os.path.splitext(name)
        if ext != info["ext"] or not (stem.isascii() and stem.isdigit()):
            continue
        # Check the length before int(): int() refuses strings beyond ~4300 digits.
        if len(stem.lstrip("0")) > len(str(MAX_ID)) or int(stem) > MAX_ID:
            raise AnnotationError(image_dir, f"{name}: frame number above {MAX_ID}")
        frame = int(stem)
        if frame in frames:
            raise AnnotationError(image_dir, f"{frames[frame]} and {name} are both frame {frame}")
        frames[frame] = name
    return {frame: name for frame, name in frames.items() if first <= frame <= last}


def _identity_map(spec: Dict, key: str) -> Dict:
    """(sequence, track id) -> contiguous id, in (sequence, track id) order."""
    keys = sorted((seq, t) for seq, s in spec["sequences"].items() for t in s[key])
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

    Raises:
        AnnotationError: a malformed file (see the module docstring), named in the message.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    spec = _load_spec(split_file)
    label_key = "train_ids" if split == "train" else "query_ids"
    ids = _identity_map(spec, label_key)
    records, queries = [], []
    most_query_boxes = 0  # the most flag-1 test boxes of one query identity
    for seq, s in spec["sequences"].items():
        seq_dir = os.path.join(root, seq)
        info = read_seqinfo(seq_dir)
        gt_path = os.path.join(seq_dir, "gt", "gt.txt")
        seqinfo_path = os.path.join(seq_dir, "seqinfo.ini")
        rows = read_mot_gt(gt_path, info["width"], info["height"], seqinfo_path)
        # Both lists are checked whatever the split: the spec is wrong either way.
        _check_listed_ids_have_boxes(split_file, seq, s, rows, gt_path)
        most_query_boxes = max(most_query_boxes, _most_query_boxes(s, rows))
        first, last = s[f"{split}_frames"]
        frames = _frames(seq_dir, info, first, last)
        in_range = (rows[:, 0] >= first) & (rows[:, 0] <= last)
        orphans = sorted(set(rows[in_range, 0].astype(np.int64).tolist()) - set(frames))
        if orphans:
            raise FileNotFoundError(
                f"{gt_path}: frames {orphans[:5]} have boxes but no image in {info['im_dir']}/ "
                f"(imDir, imExt of {seqinfo_path})"
            )
        labeled = set(s[label_key])
        for frame in sorted(frames):
            frame_rows = rows[rows[:, 0] == frame]
            record = {
                "file_name": os.path.join(seq_dir, info["im_dir"], frames[frame]),
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
    _check_per_id(split_file, spec["queries"]["per_id"], most_query_boxes)
    return records + queries


def _most_query_boxes(s: Dict, rows: np.ndarray) -> int:
    """The most flag-1 boxes of one query identity of a sequence in its test frames."""
    first, last = s["test_frames"]
    mine = rows[(rows[:, 0] >= first) & (rows[:, 0] <= last) & (rows[:, 6] == 1)]
    mine = mine[np.isin(mine[:, 1], s["query_ids"])]
    return int(np.unique(mine[:, 1], return_counts=True)[1].max()) if len(mine) else 0


def _check_per_id(split_file: str, per_id: int, most: int) -> None:
    """An error for a per_id that no query identity reaches (a typo such as 100000000), whatever
    the split; an identity with fewer boxes than per_id has each of them once (the rule)."""
    if most and per_id > most:  # no query identity at all: no query, per_id unused
        raise AnnotationError(
            split_file,
            f"queries.per_id {per_id}: no query identity has that many flag-1 boxes in its test "
            f"frames (the most: {most}); expected an integer in [1, {most}]",
        )


def _query_indices(count: int, per_id: int) -> List[int]:
    """Indices ``i * count // per_id`` for i < per_id, without looping per_id times: when
    per_id >= count they are every index (consecutive ones differ by at most 1)."""
    if per_id >= count:
        return list(range(count))
    return sorted({i * count // per_id for i in range(per_id)})


def _queries(seq, s, rows, frames, ids, records, per_id, first_query_id):
    by_image_id = {r["image_id"]: r for r in records}
    out = []
    for track in sorted(s["query_ids"]):
        mine = rows[(rows[:, 1] == track) & (rows[:, 6] == 1)]
        mine = mine[[int(f) in frames for f in mine[:, 0]]]
        mine = mine[np.argsort(mine[:, 0], kind="stable")]
        # Not empty: _check_listed_ids_have_boxes found a flag-1 box in the test frames.
        for index in _query_indices(len(mine), per_id):
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
