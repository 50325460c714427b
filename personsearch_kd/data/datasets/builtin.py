# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Registration of person-search datasets in detectron2's DatasetCatalog / MetadataCatalog.
Built-in names are registered on import, under $DETECTRON2_DATASETS (default "datasets");
see datasets/README.md for the folder layouts.
"""

import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from .cuhk_sysu import register_cuhk_sysu
from .mot import load_mot_person_search
from .prw import register_prw
from .records import set_metadata

__all__ = ["register_mot_person_search"]


def register_mot_person_search(name: str, root: str, split_file: str = None):
    """
    Register ``<name>_train`` and ``<name>_test`` for MOTChallenge sequences under ``root`` split
    by the JSON spec ``split_file`` (default ``<root>/split.json``). Files are read only when a
    dataset is loaded. The test set holds the gallery images followed by the queries
    (dicts with ``query_boxes``), which :class:`PersonSearchEvaluator` understands.
    """
    split_file = split_file or os.path.join(root, "split.json")
    for split in ("train", "test"):
        DatasetCatalog.register(
            f"{name}_{split}",
            lambda split=split: load_mot_person_search(root, split_file, split),
        )
        # Every sequence is one camera: all-camera search only.
        set_metadata(f"{name}_{split}", ("all",), image_root=root, split_file=split_file)


def register_all(root: str):
    register_cuhk_sysu("cuhk_sysu", os.path.join(root, "cuhk_sysu"))
    register_mot_person_search("mot15_ps_mini", os.path.join(root, "mot15-ps-mini"))
    # The 10 MB subset of mot15-ps-mini shipped in the repository's datasets/ (the quickstart).
    register_mot_person_search("mot15_ps_sample", os.path.join(root, "mot15-ps-sample"))
    prw_root = os.path.join(root, "prw")
    register_prw("prw", prw_root)
    # PRW-mini only swaps the query list; it has no training set of its own.
    register_prw("prw_mini", prw_root, os.path.join(prw_root, "prwmini_query_info.txt"))
    DatasetCatalog.remove("prw_mini_train")
    MetadataCatalog.remove("prw_mini_train")


register_all(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))
