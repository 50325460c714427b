# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
The worked example of datasets/README.md ("Registering your own dataset"), run as written: its
CSV and its ``my_dataset.py`` and ``train_my_dataset.py`` code blocks are taken from the README,
on small synthetic images.
"""

import os
import re
import sys
import types
from unittest import mock

import pytest

pytest.importorskip("detectron2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from detectron2.data import (  # noqa: E402
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.evaluation import inference_on_dataset  # noqa: E402
from detectron2.structures import BoxMode  # noqa: E402

import personsearch_kd.data  # noqa: E402
import personsearch_kd.data.datasets  # noqa: E402
from personsearch_kd import PersonSearchDatasetMapper  # noqa: E402
from personsearch_kd.evaluation import PersonSearchEvaluator  # noqa: E402

from helpers import REPO_ROOT, OracleModel, model_inputs, tiny_cfg  # noqa: E402

SECTION = "## Registering your own dataset"


def _readme_blocks():
    """The fenced code blocks of the README's section, as (language, text)."""
    with open(os.path.join(REPO_ROOT, "datasets", "README.md")) as f:
        text = f.read()
    assert SECTION in text, f"datasets/README.md lost its section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w*)\n(.*?)```", section, flags=re.S)


def _block(language, first_line):
    for lang, text in _readme_blocks():
        if lang == language and text.startswith(first_line):
            return text
    raise AssertionError(f"datasets/README.md: no {language} block starting {first_line!r}")


@pytest.fixture
def my_dataset(tmp_path):
    """The README's CSV and images for it; its module executed; the sets registered."""
    csv_text = _block("text", "image,split,")
    (tmp_path / "annotations.csv").write_text(csv_text)
    for name in sorted({line.split(",")[0] for line in csv_text.splitlines()[1:]}):
        os.makedirs(tmp_path / os.path.dirname(name), exist_ok=True)
        cv2.imwrite(str(tmp_path / name), np.full((128, 176, 3), 90, np.uint8))
    module = {}
    exec(compile(_block("python", "# my_dataset.py"), "my_dataset.py", "exec"), module)
    name = f"my_dataset_{tmp_path.name}"
    module["register_my_dataset"](name, str(tmp_path))
    yield name, tmp_path
    for split in ("train", "test"):
        DatasetCatalog.remove(f"{name}_{split}")
        MetadataCatalog.remove(f"{name}_{split}")


def test_helpers_are_exported():
    for module in (personsearch_kd.data, personsearch_kd.data.datasets):
        for helper in ("person_annotation", "query_record", "set_metadata"):
            assert helper in module.__all__ and callable(getattr(module, helper))
    # The example's training script, run as a module (not as __main__): its imports resolve and
    # it registers the sets with my_dataset.py's function.
    registered = []
    stand_in = types.ModuleType("my_dataset")
    stand_in.register_my_dataset = lambda name, root: registered.append((name, root))
    script = _block("python", "# train_my_dataset.py")
    with mock.patch.dict(sys.modules, my_dataset=stand_in):
        exec(compile(script, "train_my_dataset.py", "exec"), {"__name__": "train_my_dataset"})
    assert registered == [("my_dataset", "/path/to/my_dataset")]


def test_train_set_dicts_and_mapper(my_dataset):
    name, root = my_dataset
    records = DatasetCatalog.get(f"{name}_train")
    assert [r["image_id"] for r in records] == ["train/0001.jpg", "train/0002.jpg"]
    first = records[0]
    assert first["file_name"] == os.path.join(str(root), "train/0001.jpg")
    assert (first["height"], first["width"]) == (128, 176)
    assert first["annotations"][0] == {
        "bbox": [10.0, 20.0, 40.0, 100.0],
        "bbox_mode": BoxMode.XYXY_ABS,
        "category_id": 0,
        "person_id": 0,  # alice
    }
    pids = [[a["person_id"] for a in r["annotations"]] for r in records]
    assert pids == [[0, -1], [1, 0]]  # alice, unlabeled; bob, alice
    assert not any("query_boxes" in r for r in records)
    assert MetadataCatalog.get(f"{name}_train").thing_classes == ["person"]

    # MODEL.OIM.NUM_IDS 2, as the README says: the mapper carries the ids to gt_pids.
    cfg = tiny_cfg(18, **{"MODEL.OIM.NUM_IDS": 2})
    mapped = model_inputs(cfg, records)
    assert mapped[1]["instances"].gt_pids.tolist() == [1, 0]
    assert mapped[0]["instances"].gt_boxes.tensor.shape == (2, 4)
    # DATASETS.TRAIN: detectron2's train loader finds the set by name.
    cfg.merge_from_list(["DATASETS.TRAIN", (f"{name}_train",), "SOLVER.IMS_PER_BATCH", 2])
    loader = build_detection_train_loader(cfg, mapper=PersonSearchDatasetMapper(cfg, True))
    batch = next(iter(loader))
    assert len(batch) == 2 and all(b["instances"].has("gt_pids") for b in batch)
    # NUM_IDS smaller than the labeled identities is an error naming the file.
    with pytest.raises(ValueError, match="0002.jpg: annotation 0 has person_id=1"):
        model_inputs(tiny_cfg(18, **{"MODEL.OIM.NUM_IDS": 1}), records[1:])


def test_test_set_dicts(my_dataset):
    name, root = my_dataset
    records = DatasetCatalog.get(f"{name}_test")
    gallery = [r for r in records if "query_boxes" not in r]
    queries = [r for r in records if "query_boxes" in r]
    assert records == gallery + queries  # gallery first, then queries
    assert [r["image_id"] for r in gallery] == ["test/0101.jpg", "test/0102.jpg", "test/0103.jpg"]
    # Test ids are numbered on their own: carol 0, dave 1.
    assert [[a["person_id"] for a in r["annotations"]] for r in gallery] == [[0, -1], [0, 1], [1]]
    assert queries == [
        {
            "file_name": os.path.join(str(root), "test/0101.jpg"),
            "height": 128,
            "width": 176,
            "image_id": "test/0101.jpg",
            "query_boxes": [[30.0, 25.0, 62.0, 110.0]],
            "query_pid": 0,
            "query_id": 0,
            "annotations": [],
        },
        {
            "file_name": os.path.join(str(root), "test/0103.jpg"),
            "height": 128,
            "width": 176,
            "image_id": "test/0103.jpg",
            "query_boxes": [[20.0, 22.0, 52.0, 100.0]],
            "query_pid": 1,
            "query_id": 1,
            "annotations": [],
        },
    ]
    metadata = MetadataCatalog.get(f"{name}_test")
    assert metadata.search_protocols == ("all",)
    assert metadata.evaluator_type == personsearch_kd.data.datasets.PERSON_SEARCH_EVALUATOR


def test_evaluator_accepts_the_test_set(my_dataset):
    name, _ = my_dataset
    dataset = f"{name}_test"
    # DATASETS.TEST: detectron2's test loader and our evaluator find the set by name.
    loader = build_detection_test_loader(tiny_cfg(18), dataset)
    evaluator = PersonSearchEvaluator(dataset, distributed=False)
    results = inference_on_dataset(
        OracleModel(DatasetCatalog.get(dataset), dim=8), loader, evaluator
    )
    results = results["person_search"]
    for key in ("det_AP", "det_recall", "mAP", "top1"):
        assert results[key] == pytest.approx(100.0), key
