# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""PersonSearchEvaluator through detectron2's inference loop, on a written MOT fixture."""

import json
import os

import pytest

pytest.importorskip("detectron2")

import cv2  # noqa: E402

from detectron2.data import (  # noqa: E402
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
)
from detectron2.engine import launch  # noqa: E402
from detectron2.evaluation import DatasetEvaluators, inference_on_dataset  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from personsearch_kd.data.datasets import register_mot_person_search  # noqa: E402
from personsearch_kd.evaluation import (  # noqa: E402
    PersonSearchEvaluator,
    RandomFeatureEvaluator,
    build_person_search_evaluator,
    build_person_search_test_loader,
)

from helpers import (  # noqa: E402
    OracleModel,
    end_distributed_worker,
    set_seed,
    tiny_cfg,
    write_mot_fixture,
)


@pytest.fixture
def fixture_test_set(tmp_path):
    name = f"mot_fixture_{tmp_path.name}"
    register_mot_person_search(name, str(tmp_path), write_mot_fixture(tmp_path))
    yield f"{name}_test"
    for split in ("train", "test"):
        DatasetCatalog.remove(f"{name}_{split}")
        MetadataCatalog.remove(f"{name}_{split}")


def _evaluate(model, dataset_name, cfg, output_dir=None, **kwargs):
    loader = build_detection_test_loader(cfg, dataset_name)
    evaluator = PersonSearchEvaluator(dataset_name, output_dir=output_dir, **kwargs)
    return inference_on_dataset(model, loader, evaluator)["person_search"]


def test_oracle_scores_100_percent_and_writes_ranked_matches(fixture_test_set, tmp_path):
    records = DatasetCatalog.get(fixture_test_set)
    results = _evaluate(
        OracleModel(records), fixture_test_set, tiny_cfg(18), str(tmp_path), vis_queries=2
    )
    for key in ("det_AP", "det_recall", "det_recall_labeled"):
        assert results[key] == pytest.approx(100.0), key
    for key in ("mAP", "top1", "top5", "top10"):
        assert results[key] == pytest.approx(100.0), key
    per_query = json.load(open(tmp_path / "search_results.json"))["all"]
    assert len(per_query) == 4
    # Query 0 (SEQ-A id 3, frame 5): its person is in the 3 other test frames of SEQ-A.
    assert per_query[0]["count_gt"] == 3 and per_query[0]["ranked"][0][3] is True
    # Pictures of the first 2 queries: query panel + top-5 panels (all correct ones first).
    pictures = sorted(os.listdir(tmp_path / "ranked_matches"))
    assert pictures == ["0.jpg", "1.jpg"]
    picture = cv2.imread(str(tmp_path / "ranked_matches" / "0.jpg"))
    assert picture.shape[0] == 256 + 28 and picture.shape[1] > 6 * 100


def test_wrong_query_features_lower_the_search_metrics(fixture_test_set):
    records = DatasetCatalog.get(fixture_test_set)
    results = _evaluate(OracleModel(records, wrong_queries=True), fixture_test_set, tiny_cfg(18))
    assert results["det_AP"] == pytest.approx(100.0)  # detection is untouched
    assert results["mAP"] < 60.0 and results["top1"] < 60.0


def test_untrained_model_runs_end_to_end(fixture_test_set):
    set_seed(0)
    cfg = tiny_cfg(18)
    model = build_model(cfg).eval()
    results = _evaluate(model, fixture_test_set, cfg)
    assert set(results) == {
        "det_AP",
        "det_recall",
        "det_recall_labeled",
        "mAP",
        "top1",
        "top5",
        "top10",
    }
    assert all(0.0 <= v <= 100.0 for v in results.values())


def test_missing_predictions_are_an_error(fixture_test_set):
    evaluator = PersonSearchEvaluator(fixture_test_set, distributed=False)
    evaluator.reset()
    with pytest.raises(RuntimeError, match=r"no prediction for 8 gallery images .* 4 queries"):
        evaluator.evaluate()


def _evaluate_on_two_ranks(dataset_name, split_file, out_file):
    from detectron2.utils import comm

    # Each process registers the set itself (spawned workers start from a fresh catalog).
    if dataset_name not in DatasetCatalog.list():
        register_mot_person_search(
            dataset_name[: -len("_test")], os.path.dirname(split_file), split_file
        )
    records = DatasetCatalog.get(dataset_name)
    cfg = tiny_cfg(18)
    # detectron2's test loader gives each rank a disjoint part of the test set.
    loader = build_detection_test_loader(cfg, dataset_name)
    results = inference_on_dataset(
        OracleModel(records), loader, PersonSearchEvaluator(dataset_name)
    )
    if comm.is_main_process():
        with open(out_file, "w") as f:
            json.dump(results["person_search"], f)
    else:
        assert results == {}
    end_distributed_worker()


def test_distributed_evaluation_gathers_on_the_main_process(fixture_test_set, tmp_path):
    launch(
        _evaluate_on_two_ranks,
        num_gpus_per_machine=2,
        dist_url="auto",
        args=(fixture_test_set, str(tmp_path / "split.json"), str(tmp_path / "results.json")),
    )
    results = json.load(open(tmp_path / "results.json"))
    assert results["mAP"] == pytest.approx(100.0) and results["det_AP"] == pytest.approx(100.0)


def test_random_features_keep_detection_and_lower_search(fixture_test_set, tmp_path):
    records = DatasetCatalog.get(fixture_test_set)
    loader = build_detection_test_loader(tiny_cfg(18), fixture_test_set)
    evaluators = DatasetEvaluators(
        [
            PersonSearchEvaluator(fixture_test_set),
            RandomFeatureEvaluator(PersonSearchEvaluator(fixture_test_set), seed=3),
        ]
    )
    results = inference_on_dataset(OracleModel(records), loader, evaluators)
    real, chance = results["person_search"], results["person_search_random_features"]
    for key in ("det_AP", "det_recall", "det_recall_labeled"):
        assert chance[key] == real[key], key
    assert real["mAP"] == pytest.approx(100.0)
    assert chance["mAP"] < 90.0


def test_detection_only_evaluates_a_plain_detector_on_the_gallery(fixture_test_set):
    """A DET config (KD_det teacher): its loader runs the gallery only, detection metrics only."""
    set_seed(0)
    cfg = tiny_cfg(
        18,
        **{
            "MODEL.META_ARCHITECTURE": "GeneralizedRCNN",
            "MODEL.ROI_HEADS.NAME": "PersonDetectorROIHeads",
            "TEST.PERSON_SEARCH.DETECTION_ONLY": True,
            "TEST.PERSON_SEARCH.VIS_QUERIES": 0,
        },
    )
    loader = build_person_search_test_loader(cfg, fixture_test_set)
    assert len(loader) == 8  # the 8 gallery frames; the 4 queries are left out
    evaluator = build_person_search_evaluator(cfg, fixture_test_set)
    results = inference_on_dataset(build_model(cfg).eval(), loader, evaluator)["person_search"]
    assert set(results) == {"det_AP", "det_recall", "det_recall_labeled"}
    assert all(0.0 <= v <= 100.0 for v in results.values())
    # The oracle's detections through the same evaluator: a detection-only 100%.
    records = DatasetCatalog.get(fixture_test_set)
    oracle = _evaluate(OracleModel(records), fixture_test_set, cfg, detection_only=True)
    assert oracle == {"det_AP": 100.0, "det_recall": 100.0, "det_recall_labeled": 100.0}
