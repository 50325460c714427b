# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""MOTChallenge person-search loader: a fixture, malformed inputs, the real mot15-ps-mini."""

import json
import os

import pytest

pytest.importorskip("detectron2")

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
            ValueError,
            r"gt.txt: expected 10 columns .* got 6",
        ),
        (
            lambda p: _break(p, "SEQ-A", "gt/gt.txt", "1,1,500,10,24,56,1,-1,-1,-1\n"),
            ValueError,
            r"gt.txt: box of frame 1 id 1 .* outside the 176x128 image",
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
    with pytest.raises(ValueError, match="SEQ-A: query id 7 has no flag-1 box"):
        load_mot_person_search(str(tmp_path), split, "test")
    del spec["sequences"]["SEQ-A"]["train_ids"]
    json.dump(spec, open(split, "w"))
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
