# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""Search and detection metrics (pure numpy) against values derived by hand."""

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from personsearch_kd.evaluation.metrics import (
    average_precision,
    box_iou,
    detection_metrics,
    search_metrics,
)


def _unit(similarity):
    """2-d unit feature whose dot product with the query [1, 0] is `similarity`."""
    return [similarity, math.sqrt(1 - similarity**2)]


def _image(gt_boxes, gt_pids, dets, cam_id=None):
    """dets: list of (box, score, similarity to the query)."""
    return {
        "gt_boxes": np.array(gt_boxes, dtype=float).reshape(-1, 4),
        "gt_pids": np.array(gt_pids),
        "boxes": np.array([d[0] for d in dets], dtype=float).reshape(-1, 4),
        "scores": np.array([d[1] for d in dets]),
        "feats": np.array([_unit(d[2]) for d in dets]).reshape(-1, 2),
        "cam_id": cam_id,
    }


@pytest.fixture
def gallery():
    box_a, box_b = [0, 0, 100, 200], [50, 50, 150, 250]
    return {
        # Holds pid 1. The most similar detection (0.95) lies on the person but scores 0.3 < 0.5.
        "A": _image(
            [box_a, [300, 0, 400, 200]],
            [1, -1],
            [(box_a, 0.3, 0.95), ([200, 0, 300, 200], 0.8, 0.9), (box_a, 0.9, 0.5)],
            cam_id=1,
        ),
        # Holds pid 1, but its only detection is elsewhere.
        "B": _image([box_b], [1], [([400, 400, 500, 600], 0.9, 0.7)], cam_id=2),
        "C": _image([[0, 0, 50, 100]], [2], [([0, 0, 50, 100], 0.7, 0.8)], cam_id=2),
        "Q": _image([[0, 0, 100, 200]], [1], [([0, 0, 100, 200], 0.99, 1.0)], cam_id=1),
    }


QUERY = {"image_id": "Q", "pid": 1, "feat": np.array([1.0, 0.0]), "cam_id": 1}


def test_search_all_gallery_images_except_the_query_own(gallery):
    out = search_metrics(gallery, [QUERY])
    # Ranking (score >= 0.5, Q excluded): 0.9 (A, wrong box), 0.8 (C), 0.7 (B), 0.5 (A, match).
    # Ranking AP = precision at the one positive = 1/4; found 1 of the 2 images holding pid 1.
    assert out["mAP"] == pytest.approx(0.25 * 1 / 2)
    assert (out["top1"], out["top5"], out["top10"]) == (0.0, 1.0, 1.0)
    q = out["per_query"][0]
    assert (q["count_gt"], q["count_tp"]) == (2, 1)
    assert [r[0] for r in q["ranked"]] == ["A", "C", "B", "A"]
    assert [r[3] for r in q["ranked"]] == [False, False, False, True]


def test_search_det_thresh_admits_low_scoring_detections(gallery):
    out = search_metrics(gallery, [QUERY], det_thresh=0.2)
    # The 0.3-scoring detection on the person (similarity 0.95) is now first and the match;
    # only the most similar matching detection of an image counts, so A gives one positive.
    assert out["mAP"] == pytest.approx(1.0 * 1 / 2)
    assert out["top1"] == 1.0


def test_search_cross_camera_keeps_other_cameras_only(gallery):
    out = search_metrics(gallery, [QUERY], cross_camera=True)
    # Camera 1 (A and Q) is left out: pid 1 is only in B, not found -> AP 0.
    q = out["per_query"][0]
    assert (q["count_gt"], q["count_tp"], q["ap"]) == (1, 0, 0.0)
    assert [r[0] for r in q["ranked"]] == ["C", "B"]


def test_search_per_query_gallery_list(gallery):
    out = search_metrics(gallery, [dict(QUERY, gallery=["A", "C"])])
    # Ranking 0.9 (A), 0.8 (C), 0.5 (A, match): AP 1/3, and A is the only image with pid 1.
    assert out["mAP"] == pytest.approx(1 / 3)
    with pytest.raises(KeyError, match=r"query 0: gallery image ids \['Z'\]"):
        search_metrics(gallery, [dict(QUERY, gallery=["A", "Z"])])


def test_search_small_box_iou_rule():
    # A 10x20 person: IoU threshold min(0.5, 200 / (20 * 30)) = 1/3, so IoU 0.4 is a match;
    # the same detection on a 100x200 person with IoU 0.4 is not.
    small = {"S": _image([[0, 0, 10, 20]], [7], [([0, 0, 10, 8], 0.9, 0.9)])}
    large = {"L": _image([[0, 0, 100, 200]], [7], [([0, 0, 100, 80], 0.9, 0.9)])}
    query = {"image_id": "q", "pid": 7, "feat": np.array([1.0, 0.0])}
    assert search_metrics(small, [query])["mAP"] == 1.0
    assert search_metrics(large, [query])["mAP"] == 0.0


def test_search_rejects_query_without_ground_truth(gallery):
    with pytest.raises(ValueError, match=r"query 0 \(pid 9, image 'Q'\): no image"):
        search_metrics(gallery, [dict(QUERY, pid=9)])
    with pytest.raises(ValueError, match="needs 'cam_id' on every query"):
        search_metrics(gallery, [dict(QUERY, cam_id=None)], cross_camera=True)


def _detection_gallery(second_pid=3):
    dets = [
        ([100, 100, 110, 110], 0.95),  # false positive
        ([0, 0, 10, 10], 0.9),  # IoU 1 with g1
        ([1, 0, 11, 10], 0.8),  # IoU 0.82 with g1, but g1 is taken by the better one
        ([20, 0, 30, 10], 0.3),  # IoU 1 with g2
    ]
    return {
        "x": {
            "gt_boxes": np.array([[0, 0, 10, 10], [20, 0, 30, 10]], dtype=float),
            "gt_pids": np.array([2, second_pid]),
            "boxes": np.array([d[0] for d in dets], dtype=float),
            "scores": np.array([d[1] for d in dets]),
        }
    }


def test_detection_one_to_one_matching_ap_and_recall():
    # Ranked labels 0, 1, 0, 1: AP = 0.5 * (1/2) + 0.5 * (2/4) = 0.5; recall 2/2.
    assert detection_metrics(_detection_gallery()) == pytest.approx({"AP": 0.5, "recall": 1.0})
    # At 0.5 the 0.3 detection goes: ranking AP (1/2) x recall (1/2).
    out = detection_metrics(_detection_gallery(), det_thresh=0.5)
    assert out == pytest.approx({"AP": 0.25, "recall": 0.5})


def test_detection_labeled_only_ignores_unlabeled_ground_truth():
    # g2 unlabeled: only g1 counts; the detection on g2 becomes a false positive.
    out = detection_metrics(_detection_gallery(second_pid=-1), labeled_only=True)
    assert out == pytest.approx({"AP": 0.5, "recall": 1.0})


def test_average_precision_equals_scikit_learn_with_ties():
    rng = np.random.RandomState(0)
    for _ in range(200):
        n = rng.randint(1, 30)
        y_true = rng.randint(0, 2, n)
        if not y_true.any():
            y_true[0] = 1
        y_score = rng.randint(0, 5, n) / 4.0  # many ties
        assert average_precision(y_true, y_score) == pytest.approx(
            average_precision_score(y_true, y_score), abs=1e-12
        )
    assert average_precision([0, 0], [0.3, 0.2]) == 0.0


def test_box_iou():
    iou = box_iou([[0, 0, 10, 10]], [[5, 0, 15, 10], [20, 20, 30, 30]])
    assert iou.tolist() == [[pytest.approx(50 / 150), 0.0]]
