# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""CUHK-SYSU loader on a small fixture written in the real .mat formats."""

import os

import cv2
import numpy as np
import pytest
from scipy.io import savemat

pytest.importorskip("detectron2")

from detectron2.data import DatasetCatalog  # noqa: E402

from personsearch_kd.data.datasets.cuhk_sysu import load_cuhk_sysu, register_cuhk_sysu  # noqa: E402

# image -> person boxes (x, y, w, h); s1-s3 train, s4-s6 test (pool). One zero-width box.
IMAGES = {
    "s1.jpg": [[10, 10, 20, 50], [40, 10, 20, 50]],
    "s2.jpg": [[10, 12, 20, 50], [60, 5, 0, 40]],
    "s3.jpg": [[5, 5, 25, 60]],
    "s4.jpg": [[10, 10, 20, 50], [50, 10, 20, 50]],
    "s5.jpg": [[12, 10, 20, 50], [70, 10, 20, 50]],
    "s6.jpg": [[30, 30, 20, 50]],
}
POOL = ["s4.jpg", "s5.jpg", "s6.jpg"]
TRAIN = [[("s1.jpg", [10, 10, 20, 50]), ("s2.jpg", [10, 12, 20, 50])], [("s3.jpg", [5, 5, 25, 60])]]
# query (image, box) and its gallery (image, box or None), persons first.
TEST = [
    (("s4.jpg", [10, 10, 20, 50]), [("s5.jpg", [12, 10, 20, 50]), ("s6.jpg", None)]),
    (("s5.jpg", [70, 10, 20, 50]), [("s4.jpg", [50, 10, 20, 50]), ("s6.jpg", None)]),
]


def _struct(fields, rows):
    """A MATLAB struct array (1, len(rows)) as scipy.io.savemat writes it."""
    arr = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
    for i, row in enumerate(rows):
        for f, v in zip(fields, row):
            arr[0, i][f] = v
    return arr


def _box(b):
    return np.zeros((0, 0)) if b is None else np.array([b], dtype=np.float64)


def write_cuhk_fixture(root, test_key_sizes=(50, 100)):
    os.makedirs(os.path.join(root, "Image", "SSM"))
    train_test = os.path.join(root, "annotation", "test", "train_test")
    os.makedirs(train_test)
    for name in IMAGES:
        cv2.imwrite(os.path.join(root, "Image", "SSM", name), np.zeros((100, 120, 3), np.uint8))
    img = _struct(
        ["imname", "nAppear", "box"],
        [
            (name, len(b), _struct(["idlocate", "ishard"], [(_box(x), 0) for x in b]))
            for name, b in IMAGES.items()
        ],
    )
    savemat(os.path.join(root, "annotation", "Images.mat"), {"Img": img})
    pool = np.empty((len(POOL), 1), dtype=object)
    pool[:, 0] = POOL
    savemat(os.path.join(root, "annotation", "pool.mat"), {"pool": pool})
    train = np.empty((len(TRAIN), 1), dtype=object)
    for i, scenes in enumerate(TRAIN):
        scene = _struct(["imname", "idlocate", "ishard"], [(n, _box(b), 0) for n, b in scenes])
        train[i, 0] = _struct(["idname", "nAppear", "scene"], [(f"p{i}", len(scenes), scene)])
    savemat(os.path.join(train_test, "Train.mat"), {"Train": train})
    for size in test_key_sizes:
        rows = []
        for i, ((qname, qbox), gallery) in enumerate(TEST):
            query = _struct(
                ["imname", "idlocate", "ishard", "idname"], [(qname, _box(qbox), 0, f"q{i}")]
            )
            gal = _struct(["imname", "idlocate", "ishard"], [(n, _box(b), 0) for n, b in gallery])
            rows.append((query, gal))
        savemat(
            os.path.join(train_test, f"TestG{size}.mat"),
            {f"TestG{size}": _struct(["Query", "Gallery"], rows)},
        )


def test_train_split_identities_and_boxes(tmp_path):
    write_cuhk_fixture(str(tmp_path))
    train = load_cuhk_sysu(str(tmp_path), "train")
    assert [r["image_id"] for r in train] == ["s1.jpg", "s2.jpg", "s3.jpg"]
    assert (train[0]["height"], train[0]["width"]) == (100, 120)
    assert train[0]["annotations"][0]["bbox"] == [10.0, 10.0, 30.0, 60.0]  # xywh -> xyxy
    assert [[a["person_id"] for a in r["annotations"]] for r in train] == [[0, -1], [0], [1]]
    # s2's zero-width box is not a person.
    assert len(train[1]["annotations"]) == 1


def test_test_split_gallery_and_queries(tmp_path):
    write_cuhk_fixture(str(tmp_path))
    test = load_cuhk_sysu(str(tmp_path), "test", gallery_size=100)
    gallery = [r for r in test if "query_boxes" not in r]
    queries = [r for r in test if "query_boxes" in r]
    assert [r["image_id"] for r in gallery] == POOL
    assert [[a["person_id"] for a in r["annotations"]] for r in gallery] == [[0, 1], [0, 1], [-1]]
    assert queries[1]["query_boxes"] == [[70.0, 10.0, 90.0, 60.0]]
    assert (queries[1]["query_pid"], queries[1]["image_id"]) == (1, "s5.jpg")
    assert queries[1]["gallery"] == ["s4.jpg", "s6.jpg"]


def test_registration_per_gallery_size(tmp_path):
    write_cuhk_fixture(str(tmp_path))
    register_cuhk_sysu("cuhk_fixture", str(tmp_path))
    try:
        assert len(DatasetCatalog.get("cuhk_fixture_test_100")) == 3 + 2
        with pytest.raises(FileNotFoundError, match=r"TestG500.mat: missing"):
            DatasetCatalog.get("cuhk_fixture_test_500")
    finally:
        for name in list(DatasetCatalog.list()):
            if name.startswith("cuhk_fixture"):
                DatasetCatalog.remove(name)


def test_malformed_files_name_file_and_field(tmp_path):
    root = str(tmp_path)
    write_cuhk_fixture(root)
    savemat(
        os.path.join(root, "annotation", "pool.mat"),
        {"gallery": np.array([["s4.jpg"]], dtype=object)},
    )
    with pytest.raises(KeyError, match=r"pool.mat: expected key 'pool', found \['gallery'\]"):
        load_cuhk_sysu(root, "train")
    os.remove(os.path.join(root, "annotation", "Images.mat"))
    with pytest.raises(FileNotFoundError, match="Images.mat: missing"):
        load_cuhk_sysu(root, "train")


def test_unknown_identity_box_and_image_outside(tmp_path):
    root = str(tmp_path)
    TRAIN.append([("s3.jpg", [6, 5, 25, 60])])  # no such box in Images.mat
    try:
        write_cuhk_fixture(root)
    finally:
        TRAIN.pop()
    with pytest.raises(ValueError, match=r"Train.mat: box \[6.0, 5.0, 25.0, 60.0\] of identity 2"):
        load_cuhk_sysu(root, "train")
    IMAGES["s6.jpg"].append([100, 10, 40, 50])  # x1 = 140 > width 120
    try:
        write_cuhk_fixture(str(tmp_path / "b"))
    finally:
        IMAGES["s6.jpg"].pop()
    with pytest.raises(ValueError, match=r"box .* of s6.jpg lies outside its 120x100 image"):
        load_cuhk_sysu(str(tmp_path / "b"), "test")
