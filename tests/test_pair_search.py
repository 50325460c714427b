# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""The evaluation of query-guided models: a pass per query-gallery pair, scored by the protocol."""

import pytest

pytest.importorskip("detectron2")

import torch  # noqa: E402

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402

from personsearch_kd.data.datasets.records import query_record, set_metadata  # noqa: E402
from personsearch_kd.evaluation import pair_search  # noqa: E402

PERSON_0 = [10.0, 10.0, 40.0, 90.0]
PERSON_1 = [60.0, 10.0, 90.0, 90.0]


def _image(image_id, persons):
    annos = [{"bbox": box, "bbox_mode": 0, "category_id": 0, "person_id": pid}
             for pid, box in persons]  # fmt: skip
    return {"file_name": f"{image_id}.jpg", "image_id": image_id, "height": 100, "width": 100,
            "annotations": annos}  # fmt: skip


class PairModel:
    """Stands in for QEEPS: fixed detections and similarities per (query, gallery image) pair."""

    def __init__(self, answers):
        self.answers, self.pairs = answers, []

    def search_pair(self, queries, galleries):
        results = []
        for q, g in zip(queries, galleries):
            self.pairs.append((q["query_id"], g["image_id"]))
            boxes, scores, sims = zip(*self.answers[(q["query_id"], g["image_id"])]) or ((),) * 3
            inst = Instances((100, 100))
            inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
            inst.scores = torch.tensor(scores, dtype=torch.float32)
            inst.query_similarity = torch.tensor(sims, dtype=torch.float32)
            inst.reid_feats = torch.nn.functional.normalize(torch.ones(len(boxes), 4), dim=1)
            results.append({"instances": inst, "query_feat": torch.ones(4) / 2})
        return results


@pytest.fixture
def pair_set():
    """Gallery: person 0 in images 1 and 2, person 1 in 2 and 3; one query of person 0 in 0."""
    images = [_image(0, [(0, PERSON_0)]), _image(1, [(0, PERSON_0)]),
              _image(2, [(0, PERSON_1), (1, PERSON_0)]), _image(3, [(1, PERSON_1)])]  # fmt: skip
    name = "pair_search_test"
    query = query_record(images[0], PERSON_0, 0, 0)
    DatasetCatalog.register(name, lambda: images[1:] + [query])
    set_metadata(name, ("all",))
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_pair_search_scores_each_querys_pairs_as_the_protocol_by_hand(pair_set):
    # Image 1: the person at similarity 0.9. Image 2: a wrong person at 0.8, the person at 0.3
    # (person 1 stands where person 0 stood in image 1). Image 3: a wrong person at 0.5, and a
    # detection under the search threshold that is never ranked.
    model = PairModel({
        (0, 1): [(PERSON_0, 0.99, 0.9)],
        (0, 2): [(PERSON_0, 0.95, 0.8), (PERSON_1, 0.9, 0.3)],
        (0, 3): [(PERSON_1, 0.9, 0.5), (PERSON_0, 0.2, 0.99)],
    })  # fmt: skip
    results = pair_search(model, pair_set, mapper=lambda r: dict(r))
    assert sorted(model.pairs) == [(0, 1), (0, 2), (0, 3)]  # every pair once, not the own frame
    # Ranked: 0.9 hit, 0.8 miss, 0.5 miss, 0.3 hit: AP = (1/1 + 2/4) / 2, both persons found.
    assert results["mAP"] == pytest.approx((1 + 2 / 4) / 2)
    assert results["top1"] == 1.0 and results["top5"] == 1.0
    assert results["per_query"][0]["count_gt"] == 2 and results["per_query"][0]["count_tp"] == 2

    # Only image 1 run (a pre-filter): image 2's person is still counted, as a miss.
    model.pairs = []
    limited = pair_search(model, pair_set, mapper=lambda r: dict(r), top_images={0: [1]})
    assert model.pairs == [(0, 1)]
    assert limited["mAP"] == pytest.approx(1.0 * 1 / 2) and limited["top1"] == 1.0
    # Ranked by the pair-conditioned ID features instead: all equal here (cosine 1).
    cosine = pair_search(model, pair_set, mapper=lambda r: dict(r), score="cosine")
    assert cosine["per_query"][0]["count_tp"] == 2
    with pytest.raises(ValueError, match="score='dot'"):
        pair_search(model, pair_set, mapper=lambda r: dict(r), score="dot")
