# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
PRW / PRW-mini loader: a written PRW fixture, the PRW-mini query list, malformed inputs, and one
test per rule of the strict readers (the message names the file and the row, line or key).
"""

import os

import cv2
import numpy as np
import pytest

pytest.importorskip("detectron2")

import scipy.io  # noqa: E402

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.structures import BoxMode  # noqa: E402

from personsearch_kd.data.datasets.checks import AnnotationError  # noqa: E402
from personsearch_kd.data.datasets.mot import mot_split_statistics  # noqa: E402
from personsearch_kd.data.datasets.prw import (  # noqa: E402
    load_prw,
    register_prw,
)

HEIGHT, WIDTH = 120, 160

# frame -> (annotation key, rows [id, x, y, w, h]).
TRAIN = {
    "c1s1_000001": ("box_new", [[932, 10, 10, 20, 40], [5, 50, 10, 20, 40], [-2, 80, 20, 20, 40]]),
    # Written with the older key; x = -6 is clipped to 0.
    "c1s1_000002": ("anno_file", [[5, -6, 5, 20, 40], [17, 100, 10, 20, 40]]),
    # Sticks out right and bottom: clipped to the 160x120 image.
    "c2s1_000001": ("box_new", [[17, 140, 60, 30, 80]]),
}
TEST = {
    "c1s2_000010": (
        "box_new",
        [[932, 10, 10, 20, 40], [100, 40, 10, 20, 40], [-2, 70, 10, 20, 40]],
    ),
    "c2s1_000020": ("anno_previous", [[100, 30, 20, 20, 40], [3, 60, 20, 20, 40]]),
    "c3s1_000030": ("box_new", [[932, 10.5, 10, 20, 40], [3, 50, 10, 20, 40]]),
}
QUERIES = [
    "932 10 10 20 40 c1s2_000010",
    "100 30 20 20 40 c2s1_000020",
    "932 10.5 10 20 40 c3s1_000030",
]


def _write_frame(root, name, key, rows, seed):
    image = np.random.RandomState(seed).randint(0, 60, (HEIGHT, WIDTH, 3)).astype(np.uint8)
    cv2.imwrite(os.path.join(root, "frames", f"{name}.jpg"), image)
    scipy.io.savemat(
        os.path.join(root, "annotations", f"{name}.jpg.mat"),
        {key: np.array(rows, dtype=np.float64)},
    )


def _write_queries(path, lines):
    with open(path, "w", newline="") as f:
        f.write("".join(line + "\r\n" for line in lines))  # CRLF, as in the real file


def write_prw_fixture(root):
    """A small PRW folder under ``root`` (3 train + 3 test frames, 3 cameras); returns root."""
    root = str(root)
    os.makedirs(os.path.join(root, "frames"))
    os.makedirs(os.path.join(root, "annotations"))
    for seed, (name, (key, rows)) in enumerate(list(TRAIN.items()) + list(TEST.items())):
        _write_frame(root, name, key, rows, seed)
    # Train names as a cell (loadmat: object array of arrays, as the real file), test names as
    # a char matrix (loadmat: str array): both nestings must load.
    scipy.io.savemat(
        os.path.join(root, "frame_train.mat"),
        {"img_index_train": np.array([[n] for n in TRAIN], dtype=object)},
    )
    scipy.io.savemat(os.path.join(root, "frame_test.mat"), {"img_index_test": list(TEST)})
    _write_queries(os.path.join(root, "query_info.txt"), QUERIES)
    return root


def _pids(record):
    return [a["person_id"] for a in record["annotations"]]


def test_train_ids_are_contiguous_and_boxes_clipped(tmp_path):
    train = load_prw(write_prw_fixture(tmp_path), "train")
    assert [r["image_id"] for r in train] == list(TRAIN)
    assert [r["cam_id"] for r in train] == [1, 1, 2]
    first = train[0]
    assert first["file_name"] == os.path.join(str(tmp_path), "frames", "c1s1_000001.jpg")
    assert (first["height"], first["width"]) == (HEIGHT, WIDTH)
    assert first["annotations"][0] == {
        "bbox": [10.0, 10.0, 30.0, 50.0],
        "bbox_mode": BoxMode.XYXY_ABS,
        "category_id": 0,
        "person_id": 2,
    }
    # Ids 5, 17, 932 (932 a test id seen in train: kept) -> 0, 1, 2; -2 -> -1.
    assert [_pids(r) for r in train] == [[2, 0, -1], [0, 1], [1]]
    assert train[1]["annotations"][0]["bbox"] == [0.0, 5.0, 14.0, 45.0]  # x = -6 clipped
    assert train[2]["annotations"][0]["bbox"] == [140.0, 60.0, 160.0, 120.0]
    assert mot_split_statistics(train) == {"images": 3, "boxes": 6, "labeled_ids": 3, "queries": 0}


def test_test_gallery_then_queries(tmp_path):
    test = load_prw(write_prw_fixture(tmp_path), "test")
    gallery, queries = test[:3], test[3:]
    assert [r["image_id"] for r in gallery] == list(TEST)
    assert [r["cam_id"] for r in gallery] == [1, 2, 3]
    # Only query ids are labeled: 100 -> 0, 932 -> 1; 3 and -2 -> -1.
    assert [_pids(r) for r in gallery] == [[1, 0, -1], [0, -1], [1, -1]]
    assert all("query_boxes" not in r for r in gallery)
    assert [(q["image_id"], q["cam_id"], q["query_pid"], q["query_id"]) for q in queries] == [
        ("c1s2_000010", 1, 1, 0),
        ("c2s1_000020", 2, 0, 1),
        ("c3s1_000030", 3, 1, 2),
    ]
    assert queries[2]["query_boxes"] == [[10.5, 10.0, 30.5, 50.0]]  # floats, not cast to int
    assert queries[2]["query_boxes"] == [gallery[2]["annotations"][0]["bbox"]]
    assert queries[0]["annotations"] == [] and queries[0]["file_name"] == gallery[0]["file_name"]
    assert mot_split_statistics(test)["queries"] == 3


def test_prw_mini_query_list_keeps_the_prw_gallery(tmp_path):
    root = write_prw_fixture(tmp_path)
    mini = os.path.join(root, "prwmini_query_info.txt")
    with open(mini, "w") as f:  # LF, with a header line
        f.write("ID x y w h frame\n100 30 20 20 40 c2s1_000020\n")
    prw, prw_mini = load_prw(root, "test"), load_prw(root, "test", mini)
    assert prw_mini[:3] == prw[:3]  # same gallery, same labels
    assert len(prw_mini) == 4
    assert (prw_mini[3]["query_pid"], prw_mini[3]["query_id"]) == (0, 0)
    assert load_prw(root, "train", mini) == load_prw(root, "train")


def test_register_prw_is_lazy_and_sets_metadata(tmp_path):
    root = str(tmp_path / "not_written_yet")
    register_prw("prw_fixture_test", root)
    try:
        meta = MetadataCatalog.get("prw_fixture_test_test")
        assert meta.evaluator_type == "person_search"
        assert meta.search_protocols == ("all", "cross_camera")
        assert meta.thing_classes == ["person"]
        assert meta.image_root == os.path.join(root, "frames")
        write_prw_fixture(root)
        assert len(DatasetCatalog.get("prw_fixture_test_test")) == 6
    finally:
        for split in ("train", "test"):
            DatasetCatalog.remove(f"prw_fixture_test_{split}")
            MetadataCatalog.remove(f"prw_fixture_test_{split}")


def _save(path, mapping):
    scipy.io.savemat(str(path), mapping)


@pytest.mark.parametrize(
    "split, breakage, error, message",
    [
        (
            "train",
            lambda p: os.remove(p / "frames" / "c1s1_000002.jpg"),
            FileNotFoundError,
            r"frames/c1s1_000002.jpg: missing frame image",
        ),
        (
            "train",
            lambda p: (p / "frames" / "c1s1_000002.jpg").write_bytes(b"not a jpeg"),
            ValueError,
            r"frames/c1s1_000002.jpg: cannot read the image size",
        ),
        (
            "train",
            lambda p: os.remove(p / "annotations" / "c2s1_000001.jpg.mat"),
            FileNotFoundError,
            r"annotations/c2s1_000001.jpg.mat: missing file",
        ),
        (
            "train",
            lambda p: _save(p / "annotations" / "c1s1_000001.jpg.mat", {"boxes": [[1]]}),
            KeyError,
            r"c1s1_000001.jpg.mat: none of the keys 'box_new', 'anno_file', 'anno_prev",
        ),
        (
            "train",
            lambda p: _save(p / "annotations" / "c1s1_000001.jpg.mat", {"box_new": [[5, 1, 2, 3]]}),
            ValueError,
            r"c1s1_000001.jpg.mat: box_new rows must be \[id, x, y, w, h\].*\(1, 4\)",
        ),
        (
            "test",
            lambda p: _save(
                p / "annotations" / "c2s1_000020.jpg.mat", {"anno_previous": [[3, 500, 10, 20, 40]]}
            ),
            ValueError,
            r"c2s1_000020.jpg.mat: anno_previous row 0 .* outside the 160x120 image",
        ),
        (
            "train",
            lambda p: _save(p / "frame_train.mat", {"img_index": ["c1s1_000001"]}),
            KeyError,
            r"frame_train.mat: missing key 'img_index_train'",
        ),
        (
            "test",
            lambda p: os.remove(p / "frame_test.mat"),
            FileNotFoundError,
            r"frame_test.mat: missing file",
        ),
        (
            "test",
            lambda p: os.remove(p / "query_info.txt"),
            FileNotFoundError,
            r"query_info.txt: missing query list",
        ),
        (
            "test",
            lambda p: _write_queries(p / "query_info.txt", QUERIES + ["555 1 1 5 5 c1s2_000010"]),
            ValueError,
            r"query_info.txt:4: query pid 555 appears in no test frame annotation",
        ),
        (
            "test",
            lambda p: _write_queries(p / "query_info.txt", ["100 30 20 20 40 c1s1_000001"]),
            ValueError,
            r"query_info.txt:1: query frame 'c1s1_000001' is not in the test split",
        ),
        (
            "test",
            lambda p: _write_queries(p / "query_info.txt", ["100 30 20 20 c2s1_000020"]),
            ValueError,
            r"query_info.txt:1: expected 6 fields 'pid x y w h frame_name', got 5",
        ),
        (
            "test",
            lambda p: _write_queries(p / "query_info.txt", ["100 30 20 0 40 c2s1_000020"]),
            ValueError,
            r"query_info.txt:1: query box w, h must be > 0",
        ),
    ],
)
def test_malformed_inputs_name_file_and_field(tmp_path, split, breakage, error, message):
    write_prw_fixture(tmp_path)
    breakage(tmp_path)
    with pytest.raises(error, match=message):
        load_prw(str(tmp_path), split)


def test_frame_without_camera_and_bad_split(tmp_path):
    root = write_prw_fixture(tmp_path)
    _write_frame(root, "x1_000001", "box_new", [[5, 1, 1, 5, 5]], 9)
    _save(os.path.join(root, "frame_train.mat"), {"img_index_train": ["x1_000001"]})
    with pytest.raises(ValueError, match=r"frame_train.mat: frame name 'x1_000001' has no camera"):
        load_prw(root, "train")
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'val'"):
        load_prw(root, "val")


def test_prw_mini_query_not_a_prw_query_identity(tmp_path):
    root = write_prw_fixture(tmp_path)
    mini = os.path.join(root, "mini.txt")
    with open(mini, "w") as f:
        f.write("3 60 20 20 40 c2s1_000020\n")  # in the gallery, but not in query_info.txt
    with pytest.raises(ValueError, match=r"mini.txt:1: query pid 3 is not a query_info.txt"):
        load_prw(root, "test", mini)


# --- Strict readers: one test per rule, on mutated copies of the fixture's real formats. ---


def _annotation(root, name):
    return root / "annotations" / f"{name}.jpg.mat"


def _rows(root, name, rows, key="box_new"):
    _save(_annotation(root, name), {key: np.array(rows, dtype=np.float64)})


def _bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)


def _truncate(path, size):
    data = open(path, "rb").read()
    _bytes(path, data[:size])


STRICT_RULES = [
    (
        "frame list of numbers",
        "train",
        lambda p: _save(p / "frame_train.mat", {"img_index_train": np.array([[1.0], [2.0]])}),
        r"frame_train.mat: img_index_train must hold frame names, found float64",
    ),
    (
        "the same frame twice",
        "train",
        lambda p: _save(
            p / "frame_train.mat",
            {"img_index_train": np.array([["c1s1_000001"], ["c1s1_000001.jpg"]], dtype=object)},
        ),
        r"frame_train.mat: img_index_train\[1\]: frame 'c1s1_000001' listed twice \(also \[0\]\)",
    ),
    (
        "a frame name with a path",
        "test",
        lambda p: _save(p / "frame_test.mat", {"img_index_test": ["../c1s2_000010"]}),
        r"frame_test.mat: img_index_test: '../c1s2_000010' is not a frame name",
    ),
    (
        "a truncated .mat",
        "train",
        lambda p: _truncate(p / "frame_train.mat", 150),
        r"frame_train.mat: not a readable .mat file",
    ),
    (
        "a .mat of text",
        "test",
        lambda p: _bytes(_annotation(p, "c2s1_000020"), b"MATLAB 5.0 but not really"),
        r"c2s1_000020.jpg.mat: not a readable .mat file",
    ),
    (
        "rows of text",
        "train",
        lambda p: _save(_annotation(p, "c1s1_000001"), {"box_new": "abcde"}),
        r"c1s1_000001.jpg.mat: box_new rows must be \[id, x, y, w, h\], got <U5",
    ),
    (
        "a NaN box",
        "train",
        lambda p: _rows(p, "c1s1_000001", [[932, 10, 10, 20, 40], [5, 50, 10, np.nan, 40]]),
        r"c1s1_000001.jpg.mat: box_new row 1: NaN or infinity in \[5.0, 50.0, 10.0, nan, 40.0\]",
    ),
    (
        "an infinite box",
        "test",
        lambda p: _rows(p, "c2s1_000020", [[100, 30, np.inf, 20, 40]], "anno_previous"),
        r"c2s1_000020.jpg.mat: anno_previous row 0: NaN or infinity",
    ),
    (
        "a fractional id",
        "train",
        lambda p: _rows(p, "c1s1_000001", [[932, 10, 10, 20, 40], [2.5, 50, 10, 20, 40]]),
        r"c1s1_000001.jpg.mat: box_new row 1: id 2.5 is not a PRW id",
    ),
    (
        "id -1",
        "train",
        lambda p: _rows(p, "c2s1_000001", [[-1, 140, 60, 30, 80]]),
        r"c2s1_000001.jpg.mat: box_new row 0: id -1.0 is not a PRW id",
    ),
    (
        "id -3",
        "train",
        lambda p: _rows(p, "c2s1_000001", [[-3, 140, 60, 30, 80]]),
        r"c2s1_000001.jpg.mat: box_new row 0: id -3.0 is not a PRW id",
    ),
    (
        "a labeled id twice in one frame",
        "test",
        lambda p: _rows(p, "c3s1_000030", [[932, 10.5, 10, 20, 40], [932, 50, 10, 20, 40]]),
        r"c3s1_000030.jpg.mat: box_new row 1: id 932 twice in one frame \(also row 0\)",
    ),
    (
        "a query list with non-UTF-8 bytes",
        "test",
        lambda p: _bytes(p / "query_info.txt", b"932 10 10 20 40 c1s2_000010\r\n\xff\r\n"),
        r"query_info.txt: not UTF-8 text",
    ),
    (
        "a query with id -2",
        "test",
        lambda p: _write_queries(p / "query_info.txt", QUERIES + ["-2 70 10 20 40 c1s2_000010"]),
        r"query_info.txt:4: query pid must be an identity >= 0, got -2",
    ),
    (
        "a fractional query pid",
        "test",
        lambda p: _write_queries(p / "query_info.txt", ["2.5 30 20 20 40 c2s1_000020"]),
        r"query_info.txt:1: pid x y w h must be numbers",
    ),
    (
        "a NaN query box",
        "test",
        lambda p: _write_queries(p / "query_info.txt", ["100 nan 20 20 40 c2s1_000020"]),
        r"query_info.txt:1: NaN or infinity in x y w h",
    ),
    (
        "a query listed twice",
        "test",
        lambda p: _write_queries(p / "query_info.txt", QUERIES + QUERIES[:1]),
        r"query_info.txt:4: query pid 932 in c1s2_000010 twice \(also line 1\)",
    ),
    (
        "a query box off its image",
        "test",
        lambda p: _write_queries(p / "query_info.txt", ["100 170 20 20 40 c2s1_000020"]),
        r"query_info.txt:1: query box \[170.0, 20.0, 190.0, 60.0\] .* is off its 160x120 image",
    ),
    (
        "a query pid whose frame lost it",
        "test",
        lambda p: (
            _rows(p, "c1s2_000010", [[932, 10, 10, 20, 40]]),
            _rows(p, "c2s1_000020", [[3, 60, 20, 20, 40]], "anno_previous"),
        ),
        r"query_info.txt:2: query pid 100 appears in no test frame annotation "
        r"\(its frame's: .*annotations/c2s1_000020.jpg.mat\)",
    ),
]


@pytest.mark.parametrize(
    "rule, split, breakage, message", STRICT_RULES, ids=[r[0] for r in STRICT_RULES]
)
def test_strict_rule(tmp_path, rule, split, breakage, message):
    write_prw_fixture(tmp_path)
    breakage(tmp_path)
    with pytest.raises(AnnotationError, match=message):
        load_prw(str(tmp_path), split)


def test_unlabeled_id_may_repeat_and_an_empty_frame_loads(tmp_path):
    root = write_prw_fixture(tmp_path)
    _rows(
        tmp_path, "c1s1_000001", [[932, 10, 10, 20, 40], [-2, 50, 10, 20, 40], [-2, 80, 20, 9, 9]]
    )
    _save(_annotation(tmp_path, "c1s1_000002"), {"box_new": np.zeros((0, 5))})
    train = load_prw(root, "train")
    assert [_pids(r) for r in train] == [[1, -1, -1], [], [0]]
