# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Data loaders and evaluators of the lazy configs, one function per kind of training data: whole
scene images (person search), person crops (re-ID networks on crops) and query-gallery pairs
(QEEPS). Each returns ``dataloader`` with ``train``, and where the method is evaluated ``test``
and ``evaluator`` (the person-search evaluator, as the yacs Trainer builds it).
"""

from omegaconf import OmegaConf

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import (
    DatasetMapper,
    build_detection_test_loader,
    get_detection_dataset_dicts,
)

from personsearch_kd.data import PersonCropMapper, PersonSearchDatasetMapper
from personsearch_kd.evaluation import PersonSearchEvaluator
from personsearch_kd.evaluation.two_step import GroundTruthBoxes

from .builders import image_train_loader, person_crop_train_loader, query_pair_train_loader


def _test_mapper(min_size: int, max_size: int, image_format: str):
    return L(DatasetMapper)(
        is_train=False,
        augmentations=[
            L(T.ResizeShortestEdge)(
                short_edge_length=min_size, max_size=max_size, sample_style="choice"
            )
        ],
        image_format=image_format,
    )


def _image_mapper(min_sizes, max_size: int, image_format: str, num_ids: int, is_train=True):
    """PersonSearchDatasetMapper: resize (one of ``min_sizes``), flip, person ids -> gt_pids."""
    return L(PersonSearchDatasetMapper)(
        is_train=is_train,
        augmentations=[
            L(T.ResizeShortestEdge)(
                short_edge_length=list(min_sizes), max_size=max_size, sample_style="choice"
            ),
            L(T.RandomFlip)(horizontal=True, vertical=False),
        ],
        image_format=image_format,
        num_ids=num_ids,
    )


def _evaluator(ground_truth_boxes: bool = False):
    return L(PersonSearchEvaluator)(
        dataset_name="${..test.dataset.names}",
        # Gallery detections below 0.5 are not searched; detection AP counts from 0.01.
        search_score_thresh=0.5,
        detection_score_thresh=0.01,
        output_dir="${train.output_dir}/inference/${..test.dataset.names}",
        # Ranked-match pictures of the first queries at each evaluation.
        vis_queries=4,
        vis_topk=5,
        detection_only=False,
    )


def person_search_data(
    train: str,
    test: str,
    min_size_train=(600,),
    max_size_train: int = 1000,
    min_size_test: int = 600,
    max_size_test: int = 1000,
    image_format: str = "BGR",
    num_ids: int = 5532,
    total_batch_size: int = 4,
    num_workers: int = 4,
):
    """
    Whole images: detectron2's train loader over PersonSearchDatasetMapper (seeded as the yacs
    Trainer's); test: gallery images and queries.
    """
    dataloader = OmegaConf.create()
    dataloader.train = L(image_train_loader)(
        dataset=L(get_detection_dataset_dicts)(names=train, filter_empty=True),
        mapper=_image_mapper(min_size_train, max_size_train, image_format, num_ids),
        total_batch_size=total_batch_size,
        aspect_ratio_grouping=True,
        num_workers=num_workers,
        seed="${train.seed}",
    )
    dataloader.test = L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names=test, filter_empty=False),
        mapper=_test_mapper(min_size_test, max_size_test, "${...train.mapper.image_format}"),
        batch_size=1,
        num_workers=num_workers,
    )
    dataloader.evaluator = _evaluator()
    return dataloader


def person_crop_data(
    train: str,
    test: str,
    crop_size=(256, 128),
    expand: float = 10.0,
    shift: float = 4.0,
    erase_prob: float = 0.5,
    view="holistic",
    total_batch_size: int = 16,
    instances_per_id: int = 4,
    max_size_test: int = 1333,
    num_workers: int = 4,
):
    """
    Person crops in identity-balanced P x K batches (configs/Base-ReID-Crop.yaml); the test
    searches the test set's ground-truth boxes, whole images at their own size.
    """
    from personsearch_kd.layers.crops import parse_view

    dataloader = OmegaConf.create()
    dataloader.train = L(person_crop_train_loader)(
        dataset_names=train,
        mapper=L(PersonCropMapper)(
            image_format="RGB",
            size=crop_size if isinstance(crop_size, str) else list(crop_size),
            alpha=expand,
            shift=shift,
            erase_prob=erase_prob,
            view=L(parse_view)(view=view),
        ),
        total_batch_size=total_batch_size,
        instances_per_id=instances_per_id,
        seed="${train.seed}",
        num_workers=num_workers,
    )
    dataloader.test = L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names=test, filter_empty=False),
        # A re-ID network on crops finds no person: it embeds each gallery image's true boxes.
        mapper=L(GroundTruthBoxes)(
            mapper=_test_mapper(0, max_size_test, "${....train.mapper.image_format}")
        ),
        batch_size=1,
        num_workers=num_workers,
    )
    dataloader.evaluator = _evaluator()
    return dataloader


def query_pair_data(
    train: str,
    min_size_train=(600,),
    max_size_train: int = 1000,
    image_format: str = "BGR",
    num_ids: int = 5532,
    total_batch_size: int = 2,
    num_workers: int = 4,
):
    """
    Query-gallery pairs (QEEPS), ``total_batch_size`` pairs a step. No test loader: QEEPS
    searches pair by pair (tools/evaluate_pairs.py).
    """
    dataloader = OmegaConf.create()
    dataloader.train = L(query_pair_train_loader)(
        dataset_names=train,
        image_mapper=_image_mapper(min_size_train, max_size_train, image_format, num_ids),
        total_batch_size=total_batch_size,
        num_workers=num_workers,
    )
    return dataloader
