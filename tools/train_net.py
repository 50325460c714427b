#!/usr/bin/env python3
# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
personsearch_kd training script: detectron2's usual CLI (--config-file, --num-gpus, --num-machines,
--resume, --eval-only, trailing KEY VALUE opts).
"""

import logging
import os
import weakref
from collections import OrderedDict

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import (
    DatasetCatalog,
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup
from detectron2.evaluation.evaluator import inference_context
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from personsearch_kd import PersonSearchDatasetMapper, load_config, student_config
from personsearch_kd.engine import PeakMemory, SafeCheckpointer, launch_from_args
from personsearch_kd.data import build_person_crop_train_loader, build_query_pair_train_loader
from personsearch_kd.evaluation import (
    GroundTruthBoxes,
    IndexedGallery,
    PersonSearchEvaluator,
    pair_search,
)

logger = logging.getLogger("personsearch_kd.train_net")


class Trainer(DefaultTrainer):
    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return PersonSearchEvaluator(
            dataset_name,
            search_score_thresh=cfg.TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH,
            detection_score_thresh=cfg.TEST.PERSON_SEARCH.DETECTION_SCORE_THRESH,
            output_dir=output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name),
            vis_queries=cfg.TEST.PERSON_SEARCH.VIS_QUERIES,
            vis_topk=cfg.TEST.PERSON_SEARCH.VIS_TOPK,
            detection_only=cfg.TEST.PERSON_SEARCH.DETECTION_ONLY,
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
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

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        search = cfg.TEST.PERSON_SEARCH
        if cfg.DATALOADER.QUERY_PAIRS:
            return cls.test_pairs(cfg, model)
        if search.DETECTION_ONLY or search.GROUND_TRUTH_BOXES or cfg.DATALOADER.PERSON_CROPS:
            return super().test(cfg, model, evaluators)
        # One gallery pass for all test sets: images they share (CUHK-SYSU's gallery sizes) run
        # the model once.
        return super().test(cfg, IndexedGallery(model, cfg.MODEL.OIM.EMBED_DIM), evaluators)

    @classmethod
    def test_pairs(cls, cfg, model):
        """
        A query-guided model (QEEPS) searched pair by pair (:func:`pair_search`: the pairs are
        shared among the processes), in percent, on the main process; {} on the others.
        """
        results = OrderedDict()
        model = getattr(model, "module", model)  # DDP-wrapped in training
        with inference_context(model):
            for name in cfg.DATASETS.TEST:
                found = pair_search(
                    model, name, DatasetMapper(cfg, False),
                    search_thresh=cfg.TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH,
                    detection_thresh=cfg.TEST.PERSON_SEARCH.DETECTION_SCORE_THRESH,
                )  # fmt: skip
                if found:  # the main process
                    found = found["query_similarity"]
                    keys = ("mAP", "top1", "top5", "top10", "det_AP", "det_recall")
                    metrics = {k: 100.0 * found[k] for k in keys}
                    logger.info(f"{name}: pair search {metrics}")
                    results[name] = {"person_search": metrics}
        return next(iter(results.values())) if len(results) == 1 else results

    def build_hooks(self):
        # DefaultTrainer.__init__ makes a plain DetectionCheckpointer just before it calls this;
        # swapping it here is the one place where the checkpoint hooks are not yet built.
        self.checkpointer = SafeCheckpointer(
            self.checkpointer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        hooks = super().build_hooks()
        # Before the writers (last), so each period's metrics.json line has the peak so far.
        hooks.insert(-1, PeakMemory(self.cfg.MODEL.DEVICE))
        return hooks

    @classmethod
    def build_train_loader(cls, cfg):
        if cfg.DATALOADER.PERSON_CROPS:
            return build_person_crop_train_loader(cfg)
        if cfg.DATALOADER.QUERY_PAIRS:
            return build_query_pair_train_loader(cfg)
        # Our mapper carries person ids to Instances.gt_pids.
        return build_detection_train_loader(cfg, mapper=PersonSearchDatasetMapper(cfg, True))


def setup(args):
    """
    Create configs and perform basic setups.
    """
    cfg = load_config(args.config_file, args.opts)
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="personsearch_kd")
    return cfg


def main(args):
    cfg = setup(args)

    if args.eval_only:
        # Teachers are for training: evaluation needs the student's checkpoint only.
        model = Trainer.build_model(student_config(cfg))
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return Trainer.test(cfg, model)

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch_from_args(main, args)


if __name__ == "__main__":
    invoke_main()  # pragma: no cover
