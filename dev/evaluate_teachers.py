#!/usr/bin/env python3
# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Evaluate the crop re-ID teachers of a config (its MODEL.TEACHERS of kind CropReIDTeacher, e.g. the
six partial-view teachers of a factorized-distillation config) on its DATASETS.TEST, searching the
ground-truth boxes: one Markdown row per teacher alone and one for their plain ensemble
(:class:`CropReIDEnsemble`, the upper reference of factorized distillation).

    python dev/evaluate_teachers.py --config-file configs/mot15/fd_crop_R_18.yaml \
        [KEY VALUE ...]
"""

import argparse

from detectron2.evaluation import inference_on_dataset

from personsearch_kd import load_config
from personsearch_kd.distillation import CropReIDTeacher, build_teachers
from personsearch_kd.evaluation import (
    CropReIDEnsemble,
    build_person_search_evaluator,
    build_person_search_test_loader,
)


def evaluate(cfg):
    """Rows (dataset, name, view, mAP, top-1) for each crop teacher and their ensemble."""
    teachers = {n: t for n, t in build_teachers(cfg).items() if isinstance(t, CropReIDTeacher)}
    if not teachers:
        raise ValueError("MODEL.TEACHERS has no CropReIDTeacher to evaluate")
    models = [(name, t.model) for name, t in teachers.items()]
    if len(models) > 1:
        ensemble = CropReIDEnsemble([m for _, m in models])
        if ensemble.input_format != cfg.INPUT.FORMAT:
            raise ValueError(
                f"the teachers read {ensemble.input_format} images; set INPUT.FORMAT to it"
            )
        models.append(("ensemble", ensemble))
    # Crop networks find no person: they search the ground-truth boxes.
    test_cfg = cfg.clone()
    test_cfg.defrost()
    test_cfg.TEST.PERSON_SEARCH.GROUND_TRUTH_BOXES = True
    rows = []
    for dataset in cfg.DATASETS.TEST:
        loader = build_person_search_test_loader(test_cfg, dataset)
        for name, model in models:
            evaluator = build_person_search_evaluator(test_cfg, dataset)
            results = inference_on_dataset(model, loader, evaluator)["person_search"]
            view = getattr(model, "view", "all")
            rows.append((dataset, name, view, results["mAP"], results["top1"]))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, help="a config with crop teachers")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    cfg = load_config(args.config_file, args.opts, freeze=False)
    rows = evaluate(cfg)
    print("| dataset | teacher | view (top, bottom) | mAP | top-1 |")
    print("|---|---|---|---|---|")
    for dataset, name, view, search_map, top1 in rows:
        print(f"| {dataset} | {name} | {view} | {search_map:.2f} | {top1:.2f} |")
    return rows


if __name__ == "__main__":
    main()  # pragma: no cover
