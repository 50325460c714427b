# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
CUHK-SYSU loader on a small fixture written in the real .mat formats, and one test per rule of
the strict reader on mutated copies (the message names the file and the entry).
"""

import os

import cv2
import numpy as np
import pytest
from scipy.io import savemat

pytest.importorskip("detectron2")

from detectron2.data import DatasetCatalog  # noqa: E402

from personsearch_kd.data.datasets.checks import AnnotationError  # noqa: E402
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


def write_images_mat(root, images):
    """Images.mat from (image name, [xywh boxes]) pairs (a list, so a name may repeat)."""
    img = _struct(
        ["imname", "nAppear", "box"],
        [
            (name, len(b), _struct(["idlocate", "ishard"], [(_box(x), 0) for x in b]))
            for name, b in images
        ],
    )
    savemat(os.path.join(root, "annotation", "Images.mat"), {"Img": img})


def write_cuhk_fixture(
    root, test_key_sizes=(50, 100), images=IMAGES, pool=POOL, train=TRAIN, test=TEST
):
    """The CUHK-SYSU folder layout under ``root`` (default content: the module's tables)."""
    os.makedirs(os.path.join(root, "Image", "SSM"))
    train_test = os.path.join(root, "annotation", "test", "train_test")
    os.makedirs(train_test)
    for name in images:
        cv2.imwrite(os.path.join(root, "Image", "SSM", name), np.zeros((100, 120, 3), np.uint8))
    write_images_mat(root, list(images.items()))
    pool_cell = np.empty((len(pool), 1), dtype=object)
    pool_cell[:, 0] = pool
    savemat(os.path.join(root, "annotation", "pool.mat"), {"pool": pool_cell})
    train_cell = np.empty((len(train), 1), dtype=object)
    for i, scenes in enumerate(train):
        scene = _struct(["imname", "idlocate", "ishard"], [(n, _box(b), 0) for n, b in scenes])
        train_cell[i, 0] = _struct(["idname", "nAppear", "scene"], [(f"p{i}", len(scenes), scene)])
    savemat(os.path.join(train_test, "Train.mat"), {"Train": train_cell})
    for size in test_key_sizes:
        rows = []
        for i, ((qname, qbox), gallery) in enumerate(test):
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


# --- Strict reader: one test per rule, on mutated copies of the fixture's real formats. ---


def _with(table, key, value):
    """A copy of IMAGES with one entry replaced (or added)."""
    return {**table, key: value}


def _mat(root, *parts):
    return os.path.join(root, "annotation", *parts)


def _truncate(path, size):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:size])


def _images_without_box_field(root):
    img = _struct(["imname", "nAppear"], [(name, len(b)) for name, b in IMAGES.items()])
    savemat(_mat(root, "Images.mat"), {"Img": img})


STRICT_RULES = [
    (
        "a NaN box",
        "train",
        dict(images=_with(IMAGES, "s1.jpg", [[10, 10, 20, 50], [40, 10, np.nan, 50]])),
        None,
        r"Images.mat: s1.jpg: idlocate must be 4 finite numbers",
    ),
    (
        "an image twice in Images.mat",
        "train",
        {},
        lambda root: write_images_mat(root, list(IMAGES.items()) + [("s1.jpg", [])]),
        r"Images.mat: Img\[6\]: image 's1.jpg' listed twice",
    ),
    (
        "an image name that is a number",
        "train",
        {},
        lambda root: savemat(
            _mat(root, "Images.mat"), {"Img": _struct(["imname", "nAppear", "box"], [(7, 0, 0)])}
        ),
        r"Images.mat: Img\[0\]: an image name must be a string",
    ),
    (
        "no box field",
        "train",
        {},
        _images_without_box_field,
        r"Images.mat: entries need the field 'box'",
    ),
    (
        "a pool entry twice",
        "test",
        dict(pool=POOL + ["s4.jpg"]),
        None,
        r"pool.mat: pool\[3\]: image 's4.jpg' listed twice \(also \[0\]\)",
    ),
    (
        "a pool entry that is a number",
        "train",
        {},
        lambda root: savemat(_mat(root, "pool.mat"), {"pool": np.array([[4.0], [5.0]])}),
        r"pool.mat: pool\[0\]: an image name must be a string",
    ),
    (
        "one identity on two boxes of one image",
        "train",
        dict(train=[TRAIN[0] + [("s1.jpg", [40, 10, 20, 50])], TRAIN[1]]),
        None,
        r"Train.mat: identity 0 has two boxes in s1.jpg",
    ),
    (
        "one identity listing an image twice",
        "train",
        dict(train=[TRAIN[0] + [TRAIN[0][0]], TRAIN[1]]),
        None,
        r"Train.mat: identity 0 lists s1.jpg twice",
    ),
    (
        "one box given two identities",
        "train",
        dict(train=[TRAIN[0], TRAIN[1] + [TRAIN[0][0]]]),
        None,
        r"Train.mat: box \[10.0, 10.0, 20.0, 50.0\] of s1.jpg is given identities 0 and 1",
    ),
    (
        "an identity with no scene",
        "train",
        dict(train=TRAIN + [[]]),
        None,
        r"Train.mat: Train\[2\]: an identity with no scene",
    ),
    (
        "a Train cell that is not a struct",
        "train",
        {},
        lambda root: savemat(_mat(root, "test", "train_test", "Train.mat"), {"Train": [[1.0]]}),
        r"Train.mat: Train\[0\]: not a struct",
    ),
    (
        "a truncated Train.mat",
        "train",
        {},
        lambda root: _truncate(_mat(root, "test", "train_test", "Train.mat"), 200),
        r"Train.mat: not a readable .mat file",
    ),
    (
        "a gallery listing an image twice",
        "test",
        dict(test=[(TEST[0][0], TEST[0][1] + [("s6.jpg", None)]), TEST[1]]),
        None,
        r"TestG100.mat: TestG100\[0\]: Gallery lists 's6.jpg' twice",
    ),
    (
        "a query box of text",
        "test",
        {},
        lambda root: savemat(
            _mat(root, "test", "train_test", "TestG50.mat"),
            {
                "TestG50": _struct(
                    ["Query", "Gallery"],
                    [(_struct(["imname", "idlocate"], [("s4.jpg", "abcd")]), np.zeros((0, 0)))],
                )
            },
        ),
        r"TestG50.mat: s4.jpg: idlocate must be 4 finite numbers",
    ),
]


@pytest.mark.parametrize(
    "rule, split, tables, breakage, message", STRICT_RULES, ids=[r[0] for r in STRICT_RULES]
)
def test_strict_rule(tmp_path, rule, split, tables, breakage, message):
    root = str(tmp_path)
    write_cuhk_fixture(root, **tables)
    if breakage is not None:
        breakage(root)
    with pytest.raises(AnnotationError, match=message):
        load_cuhk_sysu(root, split)


def test_an_image_with_an_empty_box_list_loads(tmp_path):
    root = str(tmp_path)
    write_cuhk_fixture(root, images=_with(IMAGES, "s7.jpg", []), pool=POOL + ["s7.jpg"])
    assert load_cuhk_sysu(root, "test")[3]["annotations"] == []
    write_cuhk_fixture(str(tmp_path / "b"), images=_with(IMAGES, "s7.jpg", []))
    train = load_cuhk_sysu(str(tmp_path / "b"), "train")
    assert [(r["image_id"], len(r["annotations"])) for r in train][3] == ("s7.jpg", 0)
