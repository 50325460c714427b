# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
MOTChallenge person-search loader: a fixture, the shipped real sample, and one test per rule of
the strict readers on mutated copies of the sample (the message names the file and the field).
"""

import json
import os
import shutil
import time

import pytest

pytest.importorskip("detectron2")

from personsearch_kd.data.datasets.checks import AnnotationError  # noqa: E402
from personsearch_kd.data.datasets.mot import (  # noqa: E402
    load_mot_person_search,
    mot_split_statistics,
)

from helpers import REPO_ROOT, write_mot_fixture  # noqa: E402

SAMPLE = os.path.join(REPO_ROOT, "datasets", "mot15-ps-sample")


def test_fixture_train_and_test_splits(tmp_path):
    split = write_mot_fixture(tmp_path)
    train = load_mot_person_search(str(tmp_path), split, "train")
    assert len(train) == 8  # 4 frames x 2 sequences, no query
    first = train[0]
    assert first["image_id"] == "SEQ-A/000001" and first["cam_id"] == "SEQ-A"
    assert (first["height"], first["width"]) == (128, 176)
    # 1-based MOT (x=2, y=11, w=24, h=56) -> 0-based XYXY.
    assert first["annotations"][0]["bbox"] == [1.0, 10.0, 25.0, 66.0]
    # Train ids (SEQ-A 1, 2; SEQ-B 1) -> 0, 1, 2 in (sequence, id) order; query ids unlabeled.
    assert [a["person_id"] for a in first["annotations"]] == [0, 1, -1]
    seq_b = [r for r in train if r["cam_id"] == "SEQ-B"][0]
    assert [a["person_id"] for a in seq_b["annotations"]] == [2, -1]  # the car row is gone

    test = load_mot_person_search(str(tmp_path), split, "test")
    gallery = [r for r in test if "query_boxes" not in r]
    queries = [r for r in test if "query_boxes" in r]
    assert [r["image_id"] for r in gallery][:2] == ["SEQ-A/000005", "SEQ-A/000006"]
    # In test only query ids are labeled: SEQ-A 3 -> 0, SEQ-B 2 -> 1.
    assert [a["person_id"] for a in gallery[0]["annotations"]] == [-1, -1, 0]
    # Per query id: the first test box (frame 5) and the one at index 4 // 2 (frame 7).
    assert [(q["image_id"], q["query_pid"], q["query_id"]) for q in queries] == [
        ("SEQ-A/000005", 0, 0),
        ("SEQ-A/000007", 0, 1),
        ("SEQ-B/000005", 1, 2),
        ("SEQ-B/000007", 1, 3),
    ]
    assert queries[0]["query_boxes"] == [gallery[0]["annotations"][2]["bbox"]]


def _break(tmp_path, seq, name, text):
    with open(os.path.join(str(tmp_path), seq, *name.split("/")), "w") as f:
        f.write(text)


@pytest.mark.parametrize(
    "breakage, error, message",
    [
        (
            lambda p: os.remove(p / "SEQ-A" / "gt" / "gt.txt"),
            FileNotFoundError,
            r"SEQ-A/gt/gt.txt: missing ground-truth file",
        ),
        (
            lambda p: _break(p, "SEQ-A", "gt/gt.txt", "1,1,2,3,4,5\n"),
            AnnotationError,
            r"SEQ-A/gt/gt.txt:1: expected 10 columns .* got 6",
        ),
        (
            lambda p: _break(p, "SEQ-A", "gt/gt.txt", "1,1,500,10,24,56,1,-1,-1,-1\n"),
            AnnotationError,
            r"SEQ-A/gt/gt.txt:1: box of frame 1 id 1 .* outside the 176x128 image",
        ),
        (
            lambda p: _break(p, "SEQ-A", "seqinfo.ini", "[Sequence]\nname=SEQ-A\n"),
            KeyError,
            r"SEQ-A/seqinfo.ini: section \[Sequence\] needs key 'imWidth'",
        ),
        (
            lambda p: os.remove(p / "SEQ-B" / "img1" / "000002.jpg"),
            FileNotFoundError,
            r"SEQ-B/gt/gt.txt: frames \[2\] have boxes but no image",
        ),
    ],
)
def test_malformed_inputs_name_file_and_field(tmp_path, breakage, error, message):
    split = write_mot_fixture(tmp_path)
    breakage(tmp_path)
    with pytest.raises(error, match=message):
        load_mot_person_search(str(tmp_path), split, "train")


def test_bad_split_specs(tmp_path):
    split = write_mot_fixture(tmp_path)
    spec = json.load(open(split))
    spec["sequences"]["SEQ-A"]["query_ids"] = [7]  # no such track
    json.dump(spec, open(split, "w"))
    with pytest.raises(
        AnnotationError,
        match=r"split.json: sequences.SEQ-A.query_ids: id 7 has no flag-1 box in frames 5-8 of ",
    ):
        load_mot_person_search(str(tmp_path), split, "test")
    del spec["sequences"]["SEQ-A"]["train_ids"]
    json.dump(spec, open(split, "w"))
    # AnnotationError is also a KeyError, as the older readers raised for a missing key.
    with pytest.raises(KeyError, match=r"split.json: sequences.SEQ-A misses key 'train_ids'"):
        load_mot_person_search(str(tmp_path), split, "train")


def test_shipped_sample_loads_every_box_of_its_gt_files():
    """datasets/mot15-ps-sample, real MOT15 frames in the repository: its README's counts, and
    every gt.txt row becomes exactly one person annotation."""
    split = os.path.join(SAMPLE, "split.json")
    train_records = load_mot_person_search(SAMPLE, split, "train")
    test_records = load_mot_person_search(SAMPLE, split, "test")
    train, test = mot_split_statistics(train_records), mot_split_statistics(test_records)
    assert (train["images"], test["images"]) == (40 + 45, 40 + 45)
    assert (train["labeled_ids"], test["labeled_ids"]) == (13, 16)
    assert (train["queries"], test["queries"]) == (0, 32)
    gt_rows = sum(
        sum(1 for _ in open(os.path.join(SAMPLE, seq, "gt", "gt.txt")))
        for seq in ("PETS09-S2L1", "TUD-Stadtmitte")
    )
    assert train["boxes"] + test["boxes"] == gt_rows == 467 + 580
    assert "CC BY-NC-SA 3.0" in open(os.path.join(SAMPLE, "README.md")).read()


# --- Strict readers: one test per rule, on mutated copies of the shipped sample. ---

PETS = "PETS09-S2L1"
PETS_GT_LINE1 = "1,9,499,158,31.03,75.17,1,-1,-1,-1"


def copy_sample(destination) -> str:
    """
    The shipped sample under ``destination``: annotation files copied (the tests rewrite them),
    images linked (cheap; the tests only add or remove links). Returns the split.json path.
    """

    def copy_or_link(src, dst):
        if src.endswith(".jpg"):
            os.symlink(src, dst)
        else:
            shutil.copy2(src, dst)

    shutil.copytree(SAMPLE, str(destination), copy_function=copy_or_link, dirs_exist_ok=True)
    return os.path.join(str(destination), "split.json")


def _replace(path, old, new, count=1):
    text = open(path).read()
    assert text.count(old) >= count, (path, old)
    with open(path, "w") as f:
        f.write(text.replace(old, new, count))


def _append(path, data: bytes):
    with open(path, "ab") as f:
        f.write(data)


def _edit_spec(root, edit):
    path = os.path.join(str(root), "split.json")
    spec = json.load(open(path))
    edit(spec)
    with open(path, "w") as f:
        json.dump(spec, f)


def _pets(spec):
    return spec["sequences"][PETS]


def _seqinfo(root):
    return os.path.join(str(root), PETS, "seqinfo.ini")


def _gt(root):
    return os.path.join(str(root), PETS, "gt", "gt.txt")


def _gt_line1(root, new_line):
    _replace(_gt(root), PETS_GT_LINE1 + "\n", new_line + "\n")


SEQINFO_RULES = [
    ("non-UTF-8 bytes", lambda p: _append(_seqinfo(p), b"\xff\xfe\n"), r": not UTF-8"),
    (
        "a key twice",
        lambda p: _append(_seqinfo(p), b"imWidth=768\n"),
        r":9: not a valid INI file \(option 'imwidth' in section 'Sequence' already exists",
    ),
    (
        "a section twice",
        lambda p: _append(_seqinfo(p), b"[Sequence]\n"),
        r":9: not a valid INI file \(section 'Sequence' already exists",
    ),
    (
        "no [Sequence] section",
        lambda p: _replace(_seqinfo(p), "[Sequence]", "[Seq]"),
        r": missing section \[Sequence\]",
    ),
    (
        "a non-integer width",
        lambda p: _replace(_seqinfo(p), "imWidth=768", "imWidth=768.5"),
        r": \[Sequence\] imWidth must be a positive integer, got '768.5'",
    ),
    (
        "a zero height",
        lambda p: _replace(_seqinfo(p), "imHeight=576", "imHeight=0"),
        r": \[Sequence\] imHeight must be a positive integer, got '0'",
    ),
    (
        "an imDir outside the sequence",
        lambda p: _replace(_seqinfo(p), "imDir=img1", "imDir=../img1"),
        r": imDir must be a folder name, got '../img1'",
    ),
    (
        "an imExt without a dot",
        lambda p: _replace(_seqinfo(p), "imExt=.jpg", "imExt=jpg"),
        r": imExt must look like '.jpg', got 'jpg'",
    ),
]


@pytest.mark.parametrize("rule, mutate, message", SEQINFO_RULES, ids=[r[0] for r in SEQINFO_RULES])
def test_seqinfo_rule(tmp_path, rule, mutate, message):
    split = copy_sample(tmp_path)
    mutate(tmp_path)
    with pytest.raises(AnnotationError, match=f"{PETS}/seqinfo.ini" + message):
        load_mot_person_search(str(tmp_path), split, "train")


GT_RULES = [
    ("non-UTF-8 bytes", lambda p: _append(_gt(p), b"1,\xff\n"), r": not UTF-8"),
    (
        "a field that is not a number",
        lambda p: _gt_line1(p, "1,9,499,158,abc,75.17,1,-1,-1,-1"),
        r":1: not a comma-separated row of numbers",
    ),
    (
        "an empty field",
        lambda p: _gt_line1(p, "1,9,499,158,,75.17,1,-1,-1,-1"),
        r":1: not a comma-separated row of numbers",
    ),
    (
        "a row narrower than the first",
        lambda p: _replace(_gt(p), PETS_GT_LINE1 + "\n", PETS_GT_LINE1 + "\n1,8,1,1,5,5,1,1,1\n"),
        r":2: 9 columns where line 1 has 10",
    ),
    (
        "a NaN width",
        lambda p: _gt_line1(p, "1,9,499,158,nan,75.17,1,-1,-1,-1"),
        r":1: NaN or infinity in \[1.0, 9.0, 499.0, 158.0, nan",
    ),
    (
        "an infinite x",
        lambda p: _gt_line1(p, "1,9,inf,158,31.03,75.17,1,-1,-1,-1"),
        r":1: NaN or infinity",
    ),
    (
        "a NaN in a world coordinate",
        lambda p: _gt_line1(p, "1,9,499,158,31.03,75.17,1,-1,nan,-1"),
        r":1: NaN or infinity",
    ),
    (
        "a fractional frame",
        lambda p: _gt_line1(p, "1.5,9,499,158,31.03,75.17,1,-1,-1,-1"),
        r":1: frame must be an integer in \[1, \d+\], got 1.5",
    ),
    (
        "frame 0",
        lambda p: _gt_line1(p, "0,9,499,158,31.03,75.17,1,-1,-1,-1"),
        r":1: frame must be an integer in \[1, \d+\], got 0.0",
    ),
    (
        "a fractional track id",
        lambda p: _gt_line1(p, "1,2.5,499,158,31.03,75.17,1,-1,-1,-1"),
        r":1: track id must be an integer in \[0, \d+\], got 2.5",
    ),
    (
        "a huge track id",
        lambda p: _gt_line1(p, "1,1e300,499,158,31.03,75.17,1,-1,-1,-1"),
        r":1: track id must be an integer in \[0, \d+\], got 1e\+300",
    ),
    (
        "the same identity twice in one frame",
        lambda p: _append(_gt(p), b"1,9,10,10,20,40,1,-1,-1,-1\n"),
        r":\d+: frame 1 has track id 9 twice \(also line 1\)",
    ),
    (
        "a box outside the image",
        lambda p: _gt_line1(p, "1,9,2000,158,31.03,75.17,1,-1,-1,-1"),
        r":1: box of frame 1 id 9 .* outside the 768x576 image \(size from .*seqinfo.ini\)",
    ),
]


@pytest.mark.parametrize("rule, mutate, message", GT_RULES, ids=[r[0] for r in GT_RULES])
def test_gt_rule(tmp_path, rule, mutate, message):
    split = copy_sample(tmp_path)
    mutate(tmp_path)
    with pytest.raises(AnnotationError, match=f"{PETS}/gt/gt.txt" + message):
        load_mot_person_search(str(tmp_path), split, "train")


def _write_spec_text(root, text):
    with open(os.path.join(str(root), "split.json"), "w" if isinstance(text, str) else "wb") as f:
        f.write(text)


def _set(key, value):
    """A mutation setting one key of the PETS09-S2L1 entry of split.json."""
    return lambda root: _edit_spec(root, lambda spec: _pets(spec).__setitem__(key, value))


SPEC = f"sequences.{PETS}"
SPEC_RULES = [
    ("non-UTF-8 bytes", lambda p: _write_spec_text(p, b'{"a": "\xff"}'), r": not UTF-8"),
    ("invalid JSON", lambda p: _write_spec_text(p, '{"sequences": {\n'), r":2: invalid JSON"),
    ("a list at the top", lambda p: _write_spec_text(p, "[]"), r": top level must be a JSON obj"),
    (
        "deep nesting",
        lambda p: _write_spec_text(p, '{"a": ' + "[" * 100000 + "]" * 100000 + "}"),
        r": JSON nested too deeply",
    ),
    (
        "NaN",
        lambda p: _replace(os.path.join(p, "split.json"), '"per_id": 2', '"per_id": NaN'),
        r": NaN is not a JSON number",
    ),
    (
        "a key twice",
        lambda p: _replace(
            os.path.join(p, "split.json"), '"per_id": 2', '"per_id": 2, "per_id": 3'
        ),
        r": key 'per_id' appears twice in one object",
    ),
    ("no sequences", lambda p: _edit_spec(p, lambda s: s.pop("sequences")), r": missing key 'seq"),
    ("empty sequences", lambda p: _edit_spec(p, lambda s: s["sequences"].clear()), r": sequences "),
    (
        "a sequence name with a path",
        lambda p: _edit_spec(p, lambda s: s["sequences"].__setitem__("../x", _pets(s))),
        r": sequences.../x: a sequence must be a folder name",
    ),
    (
        "a missing key",
        lambda p: _edit_spec(p, lambda s: _pets(s).pop("test_frames")),
        f": {SPEC} misses key 'test_f",
    ),
    (
        "a string id",
        _set("query_ids", [1, 2, 3, 4, 5, 6, 7, 8, 10, 18, "9"]),
        rf": {SPEC}.query_ids\[10\] must be an integer, got \"9\"",
    ),
    ("a fractional id", _set("train_ids", [9.5]), rf": {SPEC}.train_ids\[0\] must be an integer"),
    ("a bool id", _set("train_ids", [True]), rf": {SPEC}.train_ids\[0\] must be an integer, got t"),
    ("a negative id", _set("train_ids", [-9]), rf": {SPEC}.train_ids\[0\] must be in \[0, "),
    ("ids not a list", _set("train_ids", 9), rf": {SPEC}.train_ids must be a list"),
    (
        "an id listed twice",
        _set("train_ids", [9, 11, 9]),
        rf": {SPEC}.train_ids\[2\]: id 9 listed twice \(also \[0\]\)",
    ),
    (
        "an id in train and query",
        _set("train_ids", [9, 1]),
        rf": {SPEC}: ids \[1\] both in train_ids and query_ids",
    ),
    ("a range of 1", _set("train_frames", [1]), rf": {SPEC}.train_frames must be \[first, last\]"),
    (
        "a string frame",
        _set("train_frames", ["1", 396]),
        rf": {SPEC}.train_frames\[0\] must be an integer",
    ),
    ("frame 0", _set("train_frames", [0, 396]), rf": {SPEC}.train_frames\[0\] must be in \[1, "),
    (
        "first after last",
        _set("test_frames", [791, 401]),
        rf": {SPEC}.test_frames: first frame 791 > last frame 401",
    ),
    (
        "overlapping ranges",
        _set("test_frames", [396, 791]),
        rf": {SPEC}: train_frames \[1, 396\] and test_frames \[396, 791\] overlap",
    ),
    (
        "a train id with no box",
        _set("train_ids", [9, 11, 12, 13, 14, 15, 16, 17, 19, 99]),
        rf": {SPEC}.train_ids: id 99 has no box in frames 1-396 of .*{PETS}/gt/gt.txt",
    ),
    (
        "a query id with no box",
        _set("query_ids", [1, 2, 3, 4, 5, 6, 7, 8, 10, 18, 98]),
        rf": {SPEC}.query_ids: id 98 has no flag-1 box in frames 401-791 of .*gt.txt",
    ),
    (
        "per_id 0",
        lambda p: _edit_spec(p, lambda s: s["queries"].update(per_id=0)),
        r": queries.per_id must be in \[1, ",
    ),
    (
        "per_id 1e8",
        lambda p: _edit_spec(p, lambda s: s["queries"].update(per_id=1e8)),
        r": queries.per_id must be an integer, got 100000000.0",
    ),
    (
        "per_id a string",
        lambda p: _edit_spec(p, lambda s: s["queries"].update(per_id="2")),
        r": queries.per_id must be an integer, got \"2\"",
    ),
    (
        "no per_id",
        lambda p: _edit_spec(p, lambda s: s["queries"].pop("per_id")),
        r": queries.per_id must be an integer >= 1, missing",
    ),
]


@pytest.mark.parametrize("rule, mutate, message", SPEC_RULES, ids=[r[0] for r in SPEC_RULES])
def test_split_json_rule(tmp_path, rule, mutate, message):
    split = copy_sample(tmp_path)
    mutate(tmp_path)
    with pytest.raises(AnnotationError, match="split.json" + message):
        load_mot_person_search(str(tmp_path), split, "train")


def test_the_same_frame_twice_in_img1_is_rejected(tmp_path):
    split = copy_sample(tmp_path)
    image_dir = os.path.join(str(tmp_path), PETS, "img1")
    os.symlink(os.path.join(SAMPLE, PETS, "img1", "000001.jpg"), os.path.join(image_dir, "1.jpg"))
    with pytest.raises(
        AnnotationError, match=f"{PETS}/img1: 000001.jpg and 1.jpg are both frame 1"
    ):
        load_mot_person_search(str(tmp_path), split, "train")


def _flag_1_test_boxes(root, split):
    """{(sequence, query id): its flag-1 boxes in the test frames}, counted from gt.txt."""
    spec = json.load(open(split))
    counts = {}
    for seq, s in spec["sequences"].items():
        first, last = s["test_frames"]
        for line in open(os.path.join(str(root), seq, "gt", "gt.txt")):
            frame, track, *_, flag = line.split(",")[:7]
            if first <= int(frame) <= last and int(track) in s["query_ids"] and flag == "1":
                counts[seq, int(track)] = counts.get((seq, int(track)), 0) + 1
    return counts


def test_a_per_id_of_the_most_boxes_gives_every_flag_1_box_at_once(tmp_path):
    split = copy_sample(tmp_path)
    counts = _flag_1_test_boxes(tmp_path, split)
    assert min(counts.values()) < max(counts.values())  # fewer boxes than per_id: each once
    _edit_spec(tmp_path, lambda s: s["queries"].update(per_id=max(counts.values())))
    start = time.monotonic()
    queries = [
        r for r in load_mot_person_search(str(tmp_path), split, "test") if "query_boxes" in r
    ]
    assert time.monotonic() - start < 10
    assert len(queries) == sum(counts.values()) > 32


@pytest.mark.parametrize("split_name", ["train", "test"])
@pytest.mark.parametrize("per_id", [10**8, "most + 1"])
def test_a_per_id_no_identity_reaches_is_an_error_naming_split_json(tmp_path, per_id, split_name):
    """queries.per_id 100000000 (a typo) loaded silently; it is refused, whatever the split."""
    split = copy_sample(tmp_path)
    most = max(_flag_1_test_boxes(tmp_path, split).values())
    per_id = most + 1 if per_id == "most + 1" else per_id
    _edit_spec(tmp_path, lambda s: s["queries"].update(per_id=per_id))
    message = (
        rf"split.json: queries.per_id {per_id}: no query identity has that many flag-1 boxes .* "
        rf"\(the most: {most}\); expected an integer in \[1, {most}\]"
    )
    with pytest.raises(AnnotationError, match=message):
        load_mot_person_search(str(tmp_path), split, split_name)


def test_no_query_identity_at_all_needs_no_per_id_check(tmp_path):
    split = write_mot_fixture(tmp_path)

    def no_queries(spec):
        for s in spec["sequences"].values():
            s["query_ids"] = []

    _edit_spec(tmp_path, no_queries)
    test = load_mot_person_search(str(tmp_path), split, "test")
    assert test and not [r for r in test if "query_boxes" in r]


@pytest.mark.parametrize(
    "content, message",
    [
        ("", r"gt.txt: empty: no ground-truth row \(expected comma-separated rows of 10 numbers"),
        ("\n\n# a comment\n", r"gt.txt: only blank or '#' comment lines: no ground-truth row"),
        (
            "frame,id,x,y,w,h,flag,wx,wy,wz\n" + PETS_GT_LINE1 + "\n",
            r"gt.txt:1: not a comma-separated row of numbers: 'frame,id,x,y,w,h,flag,wx,wy,wz' "
            r"\(expected .* no header line\)",
        ),
        ("1 9 499 158 31 75 1 -1 -1 -1\n", r"gt.txt:1: not a comma-separated row of numbers"),
        ("1;9;499;158;31;75;1;-1;-1;-1\n", r"gt.txt:1: not a comma-separated row of numbers"),
        ("1,9,499,158,31,75,1\n", r"gt.txt:1: expected 10 columns .* or 9 .* got 7"),
        ("1,9,499,158,31,75,1,-1,-1,-1,0\n", r"gt.txt:1: expected 10 columns .* got 11"),
    ],
    ids=["empty", "comments only", "a header line", "spaces", "semicolons", "7 columns", "11"],
)
def test_an_unparsable_gt_txt_names_file_line_and_expected_rows(tmp_path, content, message):
    """An empty gt.txt failed inside numpy ("cannot reshape array of size 0") naming no file."""
    split = copy_sample(tmp_path)
    with open(_gt(tmp_path), "w") as f:
        f.write(content)
    for split_name in ("train", "test"):
        with pytest.raises(AnnotationError, match=f"{PETS}/gt/" + message):
            load_mot_person_search(str(tmp_path), split, split_name)
