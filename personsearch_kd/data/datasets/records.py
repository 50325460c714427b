# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""The dataset-dict pieces every person-search loader builds the same way."""

from typing import Dict, Iterable, List

from detectron2.data import MetadataCatalog
from detectron2.structures import BoxMode

__all__ = ["PERSON_SEARCH_EVALUATOR", "person_annotation", "query_record", "set_metadata"]

PERSON_SEARCH_EVALUATOR = "person_search"

# Fields of an image dict that a query on that image repeats.
_IMAGE_FIELDS = ("file_name", "height", "width", "image_id", "cam_id")


def person_annotation(bbox: List[float], person_id: int) -> Dict:
    """One person: XYXY_ABS box, category 0, identity (-1 = unlabeled)."""
    return {
        "bbox": bbox,
        "bbox_mode": BoxMode.XYXY_ABS,
        "category_id": 0,
        "person_id": int(person_id),
    }


def query_record(image: Dict, box: List[float], pid: int, query_id: int, **extra) -> Dict:
    """
    A query dict: the image fields of its frame plus ``query_boxes`` [box] (XYXY, original
    coordinates), ``query_pid``, ``query_id``, any ``extra`` (e.g. a per-query ``gallery``) and
    empty ``annotations``: the frame's persons are described by its gallery dict.
    """
    record = {key: image[key] for key in _IMAGE_FIELDS if key in image}
    record.update(query_boxes=[box], query_pid=pid, query_id=query_id, annotations=[], **extra)
    return record


def set_metadata(name: str, search_protocols: Iterable[str], **extra) -> None:
    """Metadata of a person-search set (``search_protocols`` is read by PersonSearchEvaluator)."""
    MetadataCatalog.get(name).set(
        thing_classes=["person"],
        evaluator_type=PERSON_SEARCH_EVALUATOR,
        search_protocols=tuple(search_protocols),
        **extra,
    )
