# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
The person-search evaluator of a config and the test loader it expects, for the trainer and every
tool: what a config's TEST.PERSON_SEARCH and DATALOADER keys mean for evaluation is decided here.
"""

from typing import Optional

from detectron2.data import DatasetCatalog, DatasetMapper, build_detection_test_loader

from .evaluator import PersonSearchEvaluator
from .two_step import GroundTruthBoxes

__all__ = ["build_person_search_evaluator", "build_person_search_test_loader"]


def build_person_search_test_loader(cfg, dataset_name: str):
    """
    The test loader of ``dataset_name`` for the model of ``cfg``: its gallery images and queries;
    the gallery alone for a plain detector (TEST.PERSON_SEARCH.DETECTION_ONLY); each gallery
    image with its ground-truth boxes for a re-ID network on crops (DATALOADER.PERSON_CROPS) or
    TEST.PERSON_SEARCH.GROUND_TRUTH_BOXES.
    """
    batch = cfg.TEST.PERSON_SEARCH.IMS_PER_BATCH
    if cfg.DATALOADER.PERSON_CROPS or cfg.TEST.PERSON_SEARCH.GROUND_TRUTH_BOXES:
        # A re-ID network on crops finds no person: it searches the ground-truth boxes.
        mapper = GroundTruthBoxes(DatasetMapper(cfg, False))
        return build_detection_test_loader(cfg, dataset_name, mapper=mapper, batch_size=batch)
    if not cfg.TEST.PERSON_SEARCH.DETECTION_ONLY:
        return build_detection_test_loader(cfg, dataset_name, batch_size=batch)
    # A plain detector has no query mode: run the gallery images only.
    gallery = [d for d in DatasetCatalog.get(dataset_name) if "query_boxes" not in d]
    return build_detection_test_loader(
        gallery,
        mapper=DatasetMapper(cfg, False),
        batch_size=batch,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )


def build_person_search_evaluator(
    cfg, dataset_name: str, output_dir: Optional[str] = None
) -> PersonSearchEvaluator:
    """
    The :class:`PersonSearchEvaluator` of ``dataset_name`` with the thresholds, pictures and mode
    of ``cfg.TEST.PERSON_SEARCH``. Without ``output_dir`` nothing is written (no
    search_results.json, no ranked-match pictures): a tool's own table is its output.
    """
    search = cfg.TEST.PERSON_SEARCH
    return PersonSearchEvaluator(
        dataset_name,
        search_score_thresh=search.SEARCH_SCORE_THRESH,
        detection_score_thresh=search.DETECTION_SCORE_THRESH,
        output_dir=output_dir,
        vis_queries=search.VIS_QUERIES,
        vis_topk=search.VIS_TOPK,
        detection_only=search.DETECTION_ONLY,
    )
