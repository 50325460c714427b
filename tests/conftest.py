# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
import importlib.util
import os

import pytest


def _detectron2_missing() -> bool:
    return importlib.util.find_spec("detectron2") is None


def _running_in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_configure(config):
    """Under CI (CI=true) every test must run: a missing detectron2 fails the run at once."""
    if _running_in_ci() and _detectron2_missing():
        raise pytest.UsageError(
            "CI=true but detectron2 is not importable: the model, dataset and distillation tests "
            "would be skipped. Install it first (.ci/run does, from ../shared/third_party)."
        )


def pytest_terminal_summary(terminalreporter):
    """One line saying how many tests were skipped because detectron2 is not importable."""
    if not _detectron2_missing():
        return
    skipped = [
        r for r in terminalreporter.stats.get("skipped", []) if "detectron2" in str(r.longrepr)
    ]
    terminalreporter.write_line(
        f"detectron2 is not importable: {len(skipped)} test file(s) that need it were SKIPPED "
        "whole (install it from its repository, see README 'Install', to run them)"
    )


@pytest.fixture
def tiny_sets(tmp_path):
    """
    A train set and a test set (gallery + one query) of synthetic persons (helpers.PERSONS),
    registered as ``<name>_train`` / ``<name>_test``; yields the name.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from helpers import PERSONS, synthetic_record

    from personsearch_kd.data.datasets.records import query_record, set_metadata

    name = f"crop_reid_{os.getpid()}_{tmp_path.name}"
    train = [synthetic_record(tmp_path, 10 + i, p) for i, p in enumerate(PERSONS)]
    gallery = [synthetic_record(tmp_path, 20 + i, p) for i, p in enumerate(PERSONS[:3])]
    queries = [query_record(gallery[0], gallery[0]["annotations"][0]["bbox"], 0, 0)]
    DatasetCatalog.register(f"{name}_train", lambda: train)
    DatasetCatalog.register(f"{name}_test", lambda: gallery + queries)
    for split in ("train", "test"):
        set_metadata(f"{name}_{split}", ("all",))
    yield name
    for split in ("train", "test"):
        DatasetCatalog.remove(f"{name}_{split}")
        MetadataCatalog.remove(f"{name}_{split}")


@pytest.fixture
def native_bf16(monkeypatch):
    """
    The CPU taken for one that computes bf16 natively (AVX-512 BF16), whatever this one has:
    tests of the bf16 code paths run on AVX2 machines too, where TEST.PERSON_SEARCH.PRECISION
    bf16 is otherwise refused (personsearch_kd/modeling/precision.py).
    """
    from personsearch_kd.modeling import precision

    monkeypatch.setattr(precision, "cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(precision, "_cpu_has", lambda feature: feature == "avx512_bf16")
