# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Training data of query-guided person search (QEEPS): every sample an ordered pair of a query
image, with a labeled person, and another image of the same person. As the QEEPS authors answered
(issue #2 of their repository), all such pairs: a person seen in N images gives N(N-1) pairs.
"""

from collections import defaultdict
from typing import Dict, List, Tuple

from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts

from .dataset_mapper import PersonSearchDatasetMapper

__all__ = ["QueryPairMapper", "build_query_pair_train_loader", "query_gallery_pairs"]


def query_gallery_pairs(dataset_dicts: List[Dict]) -> List[Tuple[int, int, int]]:
    """
    Args:
        dataset_dicts: person-search records (queries, which have ``query_boxes``, are skipped).
    Returns:
        every ordered ``(query index, gallery index, person_id)`` of two different images of
        ``dataset_dicts`` that both show the labeled person ``person_id``, by person then image.
    """
    images_of = defaultdict(list)
    for index, record in enumerate(dataset_dicts):
        if "query_boxes" in record:
            continue
        for pid in sorted({a["person_id"] for a in record.get("annotations", [])}):
            if pid >= 0:
                images_of[pid].append(index)
    return [
        (query, gallery, pid)
        for pid, images in sorted(images_of.items())
        for query in images
        for gallery in images
        if query != gallery
    ]


class QueryPairMapper:
    """
    A pair ``{"query": record, "gallery": record, "person_id": int}`` -> ``{"query": mapped,
    "gallery": mapped, "person_id": int}``, each image mapped (and augmented independently) by
    :class:`PersonSearchDatasetMapper`; the person must survive in both.
    """

    def __init__(self, cfg, is_train: bool = True):
        self.image_mapper = PersonSearchDatasetMapper(cfg, is_train)

    def __call__(self, pair: Dict) -> Dict:
        mapped = {k: self.image_mapper(pair[k]) for k in ("query", "gallery")}
        for key, image in mapped.items():
            if not (image["instances"].gt_pids == pair["person_id"]).any():
                raise ValueError(
                    f"{pair[key]['file_name']}: person_id {pair['person_id']} is not among its "
                    f"{key} image's boxes after mapping (expected it in both images of the pair)"
                )
        return {**mapped, "person_id": int(pair["person_id"])}


def build_query_pair_train_loader(cfg):
    """The query-gallery pairs of DATASETS.TRAIN, sampled by detectron2's TrainingSampler."""
    dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
    pairs = [
        {"query": dicts[q], "gallery": dicts[g], "person_id": pid}
        for q, g, pid in query_gallery_pairs(dicts)
    ]
    if not pairs:
        raise ValueError(
            f"DATASETS.TRAIN {list(cfg.DATASETS.TRAIN)}: no labeled person appears in two images"
        )
    return build_detection_train_loader(
        pairs,
        mapper=QueryPairMapper(cfg, True),
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=False,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
