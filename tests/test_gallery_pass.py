# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""One gallery pass serves several test sets of the same images, with unchanged results."""

import copy
import json
import os

import pytest

pytest.importorskip("detectron2")

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.evaluation import inference_on_dataset  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from personsearch_kd.data.datasets.builtin import register_mot_person_search  # noqa: E402
from personsearch_kd.data.datasets.records import set_metadata  # noqa: E402

from personsearch_kd.engine import Trainer  # noqa: E402

from helpers import REPO_ROOT, set_seed, tiny_cfg  # noqa: E402


@pytest.fixture
def sample_sets(tmp_path):
    """
    Part of the shipped sample's test set (20 gallery images, 8 queries), and a copy whose
    queries each search half of that gallery (as CUHK-SYSU's gallery sizes do).
    """
    name = f"gallery_pass_{os.getpid()}"
    register_mot_person_search(name, os.path.join(REPO_ROOT, "datasets", "mot15-ps-sample"))
    records = DatasetCatalog.get(f"{name}_test")
    gallery = [r for r in records if "query_boxes" not in r][:20]
    queries = [r for r in records if "query_boxes" in r][:8]
    half = copy.deepcopy(queries)
    for i, query in enumerate(half):
        query["gallery"] = [r["image_id"] for r in gallery][i % 2 :: 2]
    sets = {f"{name}_whole": gallery + queries, f"{name}_half": gallery + half}
    for set_name, dicts in sets.items():
        DatasetCatalog.register(set_name, lambda dicts=dicts: dicts)
        set_metadata(set_name, ("all",))
    yield tuple(sets)
    for set_name in list(sets) + [f"{name}_train", f"{name}_test"]:
        DatasetCatalog.remove(set_name)
        MetadataCatalog.remove(set_name)


def test_trainer_test_runs_each_gallery_image_once_with_the_same_results(tmp_path, sample_sets):
    cfg = tiny_cfg(18, **{"TEST.DETECTIONS_PER_IMAGE": 20, "MODEL.OIM.NUM_IDS": 13})
    cfg.DATASETS.TEST = sample_sets
    cfg.TEST.PERSON_SEARCH.VIS_QUERIES = 0
    cfg.TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH = 0.0
    cfg.OUTPUT_DIR = str(tmp_path)
    set_seed(0)
    model = build_model(cfg).eval()
    plain, plain_rankings = {}, {}
    for name in sample_sets:
        evaluator = Trainer.build_evaluator(cfg, name)
        loader = Trainer.build_test_loader(cfg, name)
        plain[name] = inference_on_dataset(model, loader, evaluator)["person_search"]
        plain_rankings[name] = _rankings(tmp_path, name)
    runs = []
    original = model.forward

    def counting(batched_inputs):
        runs.extend(x["file_name"] for x in batched_inputs if "query_boxes" not in x)
        return original(batched_inputs)

    model.forward = counting
    results = Trainer.test(cfg, model)
    gallery = [r for r in DatasetCatalog.get(sample_sets[0]) if "query_boxes" not in r]
    assert sorted(runs) == sorted(r["file_name"] for r in gallery)  # once each
    for name in sample_sets:
        assert results[name]["person_search"] == plain[name]
        # Every query's ranked gallery detections and similarities are the same.
        assert _rankings(tmp_path, name) == plain_rankings[name]
    whole, half = (plain_rankings[name] for name in sample_sets)
    assert whole != half  # the half galleries rank other detections


def _rankings(output_dir, dataset):
    """Per query, the ranked (image, box, similarity, is_match) of search_results.json."""
    with open(os.path.join(output_dir, "inference", dataset, "search_results.json")) as f:
        return [query["ranked"] for query in json.load(f)["all"]]
