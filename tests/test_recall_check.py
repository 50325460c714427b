# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""The recall self-check of an approximate gallery index (numpy + faiss, no detectron2)."""

import json
import logging

import numpy as np
import pytest
from helpers import load_tool

from personsearch_kd.search import GalleryIndex, GalleryIndexError, check_recall
from personsearch_kd.search import recall_check
from personsearch_kd.search.index_benchmark import exact_topk, queries_like, synthetic_features
from personsearch_kd.search.recall_check import describe_recall, search_parameter_ladder

MODEL = {"model": "test"}
DIM = 32
ROWS = 20_000


@pytest.fixture(autouse=True)
def propagating_logs(monkeypatch):
    """caplog sees our warnings even after a tool's setup_logger stopped their propagation."""
    monkeypatch.setattr(logging.getLogger("personsearch_kd"), "propagate", True)


@pytest.fixture(scope="module")
def feats():
    return synthetic_features(ROWS, DIM, seed=0)  # structureless: low nprobe misses many


def _ivf(feats, factory="IVF64,Flat", params="nprobe=1", per_source=10):
    index = GalleryIndex(DIM, MODEL, factory, params, train_size=len(feats))
    count = len(feats) // per_source
    paths = [f"img_{i:06d}.jpg" for i in range(count)]
    index.add_sources(feats, np.zeros((len(feats), 4)), np.ones(len(feats)), [per_source] * count,
                      paths)  # fmt: skip
    assert index.index.is_trained and not index._num_pending
    return index


def _recall_of_new_queries(index, feats, count=300):
    queries = queries_like(feats, count, seed=5)
    _, found = index.index.search(queries, 10)
    exact = exact_topk(feats, queries, 10)
    return np.mean([len(set(f) & set(e)) for f, e in zip(found, exact)]) / 10


def test_search_parameter_ladder_doubles_its_parameter_up_to_its_limit():
    assert search_parameter_ladder("IVF64,Flat", "nprobe=5", 10_000) == [
        "nprobe=5", "nprobe=10", "nprobe=20", "nprobe=40", "nprobe=64"
    ]  # fmt: skip
    assert search_parameter_ladder("IVF8_HNSW32,SQ8", "", 100)[:2] == ["nprobe=1", "nprobe=2"]
    assert search_parameter_ladder("OPQ8,IVF16,PQ8", "ht=10,nprobe=8", 100) == [
        "ht=10,nprobe=8", "ht=10,nprobe=16"
    ]  # fmt: skip
    assert search_parameter_ladder("HNSW32", "efSearch=64", 300) == [
        "efSearch=64", "efSearch=128", "efSearch=256", "efSearch=300"
    ]  # fmt: skip
    assert search_parameter_ladder("PQ8", "", 100) == [""]  # nothing to tune


def test_the_check_raises_nprobe_until_the_target_is_met_and_records_it(feats, caplog):
    index = _ivf(feats)
    low = _recall_of_new_queries(index, feats)
    with caplog.at_level(logging.INFO, logger="personsearch_kd.search.recall_check"):
        record = check_recall(index, target=0.95, budget_ms=1000.0, features=feats)
    assert record is index.recall_check and record["reached"] is True
    assert record["recall_at_10"] >= 0.95 and record["target"] == 0.95
    assert record["queries"] == 1000 and record["rows"] == ROWS
    assert record["ground_truth"] == "exact features"
    tried = record["tried"]
    assert [t["search_params"] for t in tried] == [f"nprobe={2**i}" for i in range(len(tried))]
    assert len(tried) > 2 and all(t["recall_at_10"] < 0.95 for t in tried[:-1])
    assert record["search_params"] == tried[-1]["search_params"] == index.search_params
    assert record["p50_ms"] == tried[-1]["p50_ms"] > 0
    # The setting chosen holds for new queries too (other views of the gallery's persons).
    assert low < 0.8 and _recall_of_new_queries(index, feats) >= 0.92
    assert "target 0.95 reached" in caplog.text


def test_an_unreachable_target_keeps_the_best_setting_within_the_budget_and_warns(
    feats, caplog, monkeypatch
):
    index = _ivf(feats)
    # One query costs nprobe ms (measured time is noisy): nprobe 16 exceeds an 8 ms budget.
    fake_ms = lambda index, queries: float(index.index.nprobe)  # noqa: E731
    monkeypatch.setattr(recall_check, "_p50_ms", fake_ms)
    with caplog.at_level(logging.WARNING):
        record = check_recall(index, target=0.99, budget_ms=8.0, features=feats)
    assert record["reached"] is False and record["search_params"] == "nprobe=8"
    assert index.search_params == "nprobe=8" and record["p50_ms"] == 8.0
    assert [t["search_params"] for t in record["tried"]][-1] == "nprobe=16"
    assert record["tried"][-1]["recall_at_10"] is None  # over the budget: not measured
    assert record["recall_at_10"] == max(t["recall_at_10"] or 0 for t in record["tried"]) < 0.99
    assert "NOT reached" in caplog.text and "BELOW the target" in describe_recall(index)
    # Even the first setting over a tiny budget: it stays, measured, and the target is missed.
    index = _ivf(feats)
    record = check_recall(index, target=0.95, budget_ms=1e-6, features=feats, num_queries=100)
    assert len(record["tried"]) == 1 and record["reached"] is False
    assert index.search_params == "nprobe=1" and 0 < record["recall_at_10"] < 0.95


def test_the_recorded_check_survives_save_and_load_and_merged_shards_give_exact_truth(
    feats, tmp_path
):
    # Shards (exact, Flat) merged into an IVF index, as tools/index_gallery.py merges them:
    # the check's ground truth is their exact features.
    index = GalleryIndex(DIM, MODEL, "IVF64,Flat", "nprobe=2", train_size=ROWS)
    for part in range(2):
        shard = GalleryIndex(DIM, MODEL)
        rows = feats[part * ROWS // 2 : (part + 1) * ROWS // 2]
        count = len(rows) // 10
        paths = [f"shard{part}_{i:05d}.jpg" for i in range(count)]
        shard.add_sources(rows, np.zeros((len(rows), 4)), np.ones(len(rows)), [10] * count, paths)
        index.merge(shard)
    record = check_recall(index, 0.95, 1000.0)
    assert record["ground_truth"] == "exact features" and record["reached"]
    assert index._exact_segments == []  # freed
    index.save(str(tmp_path / "ivf"))
    header = json.loads((tmp_path / "ivf" / "index.json").read_text())
    assert header["recall_check"] == record
    loaded = GalleryIndex.load(str(tmp_path / "ivf"), read_only=True)
    assert loaded.recall_check == record and loaded.search_params == record["search_params"]
    assert "recall@10" in describe_recall(loaded) and "target 0.95" in describe_recall(loaded)
    # A loaded index has no exact features: they are decoded (exactly, for IVF*,Flat), and the
    # same rows as queries give the same recall.
    again = GalleryIndex.load(str(tmp_path / "ivf"))
    rechecked = check_recall(again, 0.95, 1000.0)
    assert rechecked["ground_truth"].startswith("features decoded from the index for 20000")
    assert rechecked["recall_at_10"] == record["recall_at_10"]
    assert len(rechecked["tried"]) == 1  # it starts from the recorded setting
    again.add(feats[:2], np.zeros((2, 4)), [1, 1], "new.jpg")
    assert "measured at 20000 boxes" in describe_recall(again)


def test_exact_search_records_no_check(feats, tmp_path):
    flat = GalleryIndex(DIM, MODEL)
    flat.add(feats[:500], np.zeros((500, 4)), np.ones(500), "a.jpg")
    assert check_recall(flat) is None and flat.recall_check is None
    flat.save(str(tmp_path / "flat"))
    assert json.loads((tmp_path / "flat" / "index.json").read_text())["recall_check"] is None
    assert GalleryIndex.load(str(tmp_path / "flat")).recall_check is None
    assert describe_recall(flat) == "Flat index of 500 boxes: exact search"
    # An IVF index not trained yet searches its buffered rows exactly: nothing to check either.
    buffered = GalleryIndex(DIM, MODEL, "IVF64,Flat", train_size=10_000)
    buffered.add(feats[:500], np.zeros((500, 4)), np.ones(500), "a.jpg")
    assert check_recall(buffered) is None and "exact search" in describe_recall(buffered)
    # Turned off (target 0): nothing measured, nothing changed.
    index = _ivf(feats[:2000])
    assert check_recall(index, target=0) is None and index.search_params == "nprobe=1"
    assert "recall not checked" in describe_recall(index)
    # A read-only index cannot be tuned.
    index.save(str(tmp_path / "ivf"))
    with pytest.raises(GalleryIndexError, match="read-only"):
        check_recall(GalleryIndex.load(str(tmp_path / "ivf"), read_only=True))


def test_hnsw_raises_ef_search():
    feats = synthetic_features(3000, DIM, seed=2)
    index = GalleryIndex(DIM, MODEL, "HNSW8", "efSearch=1")
    index.add_sources(feats, np.zeros((3000, 4)), np.ones(3000), [10] * 300,
                      [f"{i}.jpg" for i in range(300)])  # fmt: skip
    record = check_recall(index, 0.95, 1000.0, features=feats, num_queries=300)
    assert record["reached"] and record["search_params"].startswith("efSearch=")
    assert int(record["search_params"].split("=")[1]) > 1


def test_benchmark_index_self_check_prints_the_setting_chosen_per_type(capsys):
    rows = load_tool("benchmark_index").main(
        ["--self-check", "--sizes", "4000", "--dim", "32", "--types", "Flat", "IVF32,Flat:nprobe=1",
         "--queries", "200", "--train-size", "4000", "--latency-budget-ms", "1000"]
    )  # fmt: skip
    (flat, ivf) = rows
    assert flat[1] == "Flat" and flat[-1] is None  # exact: nothing to check
    record = ivf[-1]
    assert ivf[:3] == ("synthetic 4000", "IVF32,Flat:nprobe=1", 4000)
    assert record["reached"] and record["search_params"] != "nprobe=1"
    assert 0.85 <= record["new_queries_recall_at_10"] <= 1.0
    out = capsys.readouterr().out
    assert f"| {record['search_params']} | {record['recall_at_10']:.3f} |" in out
    assert "<!-- tried: nprobe=1: " in out
