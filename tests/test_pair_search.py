# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""The evaluation of query-guided models: a pass per query-gallery pair, scored by the protocol."""

import json

import pytest

pytest.importorskip("detectron2")

import torch  # noqa: E402

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.engine import launch  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402

from personsearch_kd.data.datasets.records import query_record, set_metadata  # noqa: E402
from personsearch_kd.evaluation import (  # noqa: E402
    PAIR_SCORES,
    PairCache,
    pair_search,
    prefilter_search,
    restricted_search,
)

from helpers import end_distributed_worker  # noqa: E402

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


def _register_pair_set(name):
    """Gallery: person 0 in images 1 and 2, person 1 in 2 and 3; one query of person 0 in 0."""
    images = [_image(0, [(0, PERSON_0)]), _image(1, [(0, PERSON_0)]),
              _image(2, [(0, PERSON_1), (1, PERSON_0)]), _image(3, [(1, PERSON_1)])]  # fmt: skip
    query = query_record(images[0], PERSON_0, 0, 0)
    DatasetCatalog.register(name, lambda: images[1:] + [query])
    set_metadata(name, ("all",))


@pytest.fixture
def pair_set():
    name = "pair_search_test"
    _register_pair_set(name)
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


# Image 1: the person at similarity 0.9. Image 2: a wrong person at 0.8, the person at 0.3 (person
# 1 stands where person 0 stood in image 1). Image 3: a wrong person at 0.5, and a detection under
# the search threshold that is never ranked.
ANSWERS = {
    (0, 1): [(PERSON_0, 0.99, 0.9)],
    (0, 2): [(PERSON_0, 0.95, 0.8), (PERSON_1, 0.9, 0.3)],
    (0, 3): [(PERSON_1, 0.9, 0.5), (PERSON_0, 0.2, 0.99)],
}


def test_pair_search_scores_each_querys_pairs_as_the_protocol_by_hand(pair_set):
    model = PairModel(ANSWERS)
    found = pair_search(model, pair_set, mapper=lambda r: dict(r), scores=PAIR_SCORES)
    assert sorted(model.pairs) == [(0, 1), (0, 2), (0, 3)]  # every pair once for both scores
    results = found["query_similarity"]
    # Ranked: 0.9 hit, 0.8 miss, 0.5 miss, 0.3 hit: AP = (1/1 + 2/4) / 2, both persons found.
    assert results["mAP"] == pytest.approx((1 + 2 / 4) / 2)
    assert results["top1"] == 1.0 and results["top5"] == 1.0
    assert results["per_query"][0]["count_gt"] == 2 and results["per_query"][0]["count_tp"] == 2
    assert results["pairs"] == 3 and results["seconds"] >= 0
    # Ranked by the pair-conditioned ID features instead: all equal here (cosine 1).
    assert found["cosine"]["per_query"][0]["count_tp"] == 2
    # Detection over the 3 pairs (4 persons): every person found, one false detection (image 3,
    # score 0.2) ranked last: AP 1, recall 1, for every score alike.
    assert results["det_AP"] == pytest.approx(1.0) and results["det_recall"] == 1.0
    assert found["cosine"]["det_AP"] == results["det_AP"]
    # Above 0.92 only the detections at 0.99 and 0.95 count: 2 of the 4 persons.
    strict = pair_search(model, pair_set, mapper=lambda r: dict(r), detection_thresh=0.92)
    assert strict["query_similarity"]["det_recall"] == 0.5
    assert strict["query_similarity"]["det_AP"] == pytest.approx(0.5)

    # Only image 1 run (a pre-filter): image 2's person is still counted, as a miss.
    model.pairs = []
    limited = pair_search(model, pair_set, mapper=lambda r: dict(r), top_images={0: [1]})
    assert model.pairs == [(0, 1)] and list(limited) == ["query_similarity"]
    assert limited["query_similarity"]["mAP"] == pytest.approx(1.0 * 1 / 2)
    assert limited["query_similarity"]["top1"] == 1.0 and limited["query_similarity"]["pairs"] == 1
    for wrong in (("dot",), ()):
        with pytest.raises(ValueError, match="expected one or more of"):
            pair_search(model, pair_set, mapper=lambda r: dict(r), scores=wrong)


class StoppingModel(PairModel):
    """PairModel that dies (as a killed process would) when asked for its ``stop_at``-th pair."""

    def __init__(self, answers, stop_at):
        super().__init__(answers)
        self.stop_at = stop_at

    def search_pair(self, queries, galleries):
        if len(self.pairs) + len(queries) >= self.stop_at:
            raise KeyboardInterrupt
        return super().search_pair(queries, galleries)


def test_a_stopped_pair_evaluation_resumes_from_its_cache(pair_set, tmp_path):
    mapper = lambda r: dict(r)  # noqa: E731
    key = {"config_sha1": "a", "weights_sha1": "b", "batch_size": "1"}
    everything = pair_search(PairModel(ANSWERS), pair_set, mapper, PAIR_SCORES, batch_size=1)

    # Killed at its 3rd pair: the 2 pairs done are in the cache (written after every batch here).
    with pytest.raises(KeyboardInterrupt):
        pair_search(StoppingModel(ANSWERS, 3), pair_set, mapper, batch_size=1,
                    cache=PairCache(str(tmp_path), pair_set, key, interval=0))  # fmt: skip
    assert set(PairCache(str(tmp_path), pair_set, key).load()) == {(0, 1), (0, 2)}
    # The same evaluation again runs only the missing pair and scores all 3 as an uncached run.
    model = PairModel(ANSWERS)
    resumed = pair_search(model, pair_set, mapper, PAIR_SCORES, batch_size=1,
                          cache=PairCache(str(tmp_path), pair_set, key))  # fmt: skip
    assert model.pairs == [(0, 3)]
    for score in PAIR_SCORES:
        assert resumed[score]["pairs"] == 3 and resumed[score]["pairs_run"] == 1
        for metric in ("mAP", "top1", "det_AP", "det_recall", "per_query"):
            assert resumed[score][metric] == everything[score][metric]

    # The pairs split over two processes' files (a run with --num-gpus 2) are all read; a
    # restricted evaluation takes only its own pairs from them and runs nothing.
    saved = torch.load(tmp_path / f"{pair_set}.rank0.pth", weights_only=False)
    pairs = saved["pairs"]
    assert set(pairs) == {(0, 1), (0, 2), (0, 3)}
    for rank, part in enumerate(([(0, 1)], [(0, 2), (0, 3)])):
        torch.save(
            dict(saved, pairs={p: pairs[p] for p in part}), tmp_path / f"{pair_set}.rank{rank}.pth"
        )
    model = PairModel(ANSWERS)
    limited = pair_search(
        model, pair_set, mapper, top_images={0: [1]}, cache=PairCache(str(tmp_path), pair_set, key)
    )
    assert model.pairs == [] and limited["query_similarity"]["pairs_run"] == 0
    assert limited["query_similarity"]["mAP"] == pytest.approx(1 / 2)
    assert set(PairCache(str(tmp_path), pair_set, key).load()) == set(pairs)  # nothing lost

    # A cache of another model is refused, naming the file and what differs.
    other = dict(key, weights_sha1="c")
    with pytest.raises(ValueError, match=r"rank0\.pth: pair results of another .*weights_sha1"):
        pair_search(
            PairModel(ANSWERS), pair_set, mapper, cache=PairCache(str(tmp_path), pair_set, other)
        )


class GalleryModel:
    """Stands in for a query-agnostic model: one detection per image with a fixed feature."""

    FEATS = {0: [1.0, 0.0], 1: [0.6, 0.8], 2: [0.8, 0.6], 3: [0.0, 1.0]}

    def __call__(self, inputs):
        (record,) = inputs
        inst = Instances((100, 100))
        # Where person 0 stands in images 0 and 1, person 1 in image 2, nobody in image 3.
        inst.pred_boxes = Boxes(torch.tensor([PERSON_0]))
        inst.scores = torch.ones(1)
        inst.reid_feats = torch.tensor([self.FEATS[record["image_id"]]])
        return [{"instances": inst}]


def _search_on_two_ranks(name, out_dir):
    from detectron2.utils import comm

    _register_pair_set(name)  # spawned workers start from a fresh catalog
    model = PairModel(ANSWERS)
    cache = PairCache(f"{out_dir}/cache", name, {"weights_sha1": "b"})
    results = pair_search(model, name, mapper=lambda r: dict(r), batch_size=1, cache=cache)
    top, baseline = prefilter_search(GalleryModel(), name, lambda r: dict(r), top_n=2)
    with open(f"{out_dir}/rank{comm.get_rank()}.json", "w") as f:
        json.dump({"pairs": model.pairs, "results": results, "top": top, "base": baseline}, f)
    end_distributed_worker()


def test_prefilter_keeps_each_querys_best_images_and_searches_them_alone(pair_set):
    # Cosine with the query (image 0's feature): image 2 0.8 (person 1 where the box is: a miss),
    # image 1 0.6 (person 0: a hit), image 3 0.0 (nobody).
    top, everything = prefilter_search(GalleryModel(), pair_set, lambda r: dict(r), top_n=0)
    assert top == {0: [2, 1, 3]}
    # Ranked 0.8 miss, 0.6 hit, 0.0 miss; person 0 is in images 1 and 2: AP = (1/2) / 2.
    assert everything["mAP"] == pytest.approx(0.25) and everything["top1"] == 0.0
    assert everything["per_query"][0]["count_gt"] == 2
    # Detection over the 3 images run (4 persons): the box of person 0 hits in images 1 and 2,
    # misses in image 3; tied scores: precision 2/3 at recall 2/4, AP = 2/3 * 1/2.
    assert everything["det_recall"] == 0.5 and everything["det_AP"] == pytest.approx(1 / 3)
    top, best_only = prefilter_search(GalleryModel(), pair_set, lambda r: dict(r), top_n=1)
    assert top == {0: [2]}
    # Image 1 left out: its person is a miss, as in the restricted pair evaluation.
    assert best_only["mAP"] == 0.0 and best_only["per_query"][0]["count_gt"] == 2
    # Detection counts the images run only: image 2, one of its two persons found.
    assert best_only["det_recall"] == 0.5 and best_only["det_AP"] == pytest.approx(0.5)


def test_restricted_search_searches_only_the_given_images_of_each_query(pair_set):
    model, mapper = GalleryModel(), lambda r: dict(r)
    # Image 1 alone: its person at 0.6 is a hit ranked first; image 2's person is a miss.
    only_1 = restricted_search(model, pair_set, mapper, {0: [1]})
    assert only_1["mAP"] == pytest.approx(1 / 2) and only_1["top1"] == 1.0
    assert only_1["per_query"][0]["count_gt"] == 2 and only_1["per_query"][0]["count_tp"] == 1
    # Every image, and the images a pre-filter kept: the same as the pre-filter's own search.
    assert restricted_search(model, pair_set, mapper)["mAP"] == pytest.approx(0.25)
    top, own = prefilter_search(model, pair_set, mapper, top_n=2)
    assert restricted_search(model, pair_set, mapper, top)["per_query"] == own["per_query"]
    with pytest.raises(KeyError, match="no entry for query_id 0"):
        restricted_search(model, pair_set, mapper, {5: [1]})
    with pytest.raises(ValueError, match=r"outside the query's gallery: \[0, 7\]"):
        restricted_search(model, pair_set, mapper, {0: [1, 7, 0]})


def test_two_processes_share_the_pairs_and_the_main_one_scores_them_all(pair_set, tmp_path):
    alone = pair_search(PairModel(ANSWERS), pair_set, mapper=lambda r: dict(r))
    top_alone, base_alone = prefilter_search(GalleryModel(), pair_set, lambda r: dict(r), top_n=2)
    assert top_alone == {0: [2, 1]}
    launch(_search_on_two_ranks, num_gpus_per_machine=2, dist_url="auto",
           args=("pair_search_two_ranks", str(tmp_path)))  # fmt: skip
    ranks = [json.load(open(tmp_path / f"rank{r}.json")) for r in (0, 1)]
    run = [tuple(pair) for rank in ranks for pair in rank["pairs"]]
    assert sorted(run) == [(0, 1), (0, 2), (0, 3)]  # every pair once, over both processes
    assert all(rank["pairs"] for rank in ranks)  # and each process ran some
    # Each process saved the pairs it ran in its own file; together they hold every pair.
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        f"pair_search_two_ranks.rank{r}.pth" for r in (0, 1)
    ]
    saved = PairCache(str(tmp_path / "cache"), "pair_search_two_ranks", {"weights_sha1": "b"})
    assert sorted(saved.load()) == [(0, 1), (0, 2), (0, 3)]
    assert ranks[1]["results"] == {} and ranks[1]["base"] == {}
    main = ranks[0]["results"]["query_similarity"]
    assert main["mAP"] == pytest.approx(alone["query_similarity"]["mAP"])
    assert main["per_query"] == json.loads(json.dumps(alone["query_similarity"]["per_query"]))
    # Every process gets the whole pre-filter; the main one its search of the kept images.
    assert all(rank["top"] == {"0": [2, 1]} for rank in ranks)
    assert ranks[0]["base"]["mAP"] == pytest.approx(base_alone["mAP"])
