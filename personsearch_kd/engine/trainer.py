# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
detectron2's DefaultTrainer for person search, and the train-or-evaluate run behind
tools/train_net.py (detectron2's CLI: --config-file, --num-gpus, --resume, --eval-only, opts).
"""

import logging
import os
import weakref
from collections import OrderedDict

from detectron2.data import DatasetMapper, build_detection_train_loader
from detectron2.engine import DefaultTrainer, default_setup
from detectron2.evaluation.evaluator import inference_context
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import load_config
from ..distillation import student_of
from ..data import (
    PersonSearchDatasetMapper,
    build_person_crop_train_loader,
    build_query_pair_train_loader,
)
from ..evaluation import (
    IndexedGallery,
    build_person_search_evaluator,
    build_person_search_test_loader,
    pair_search,
)
from .checkpoint import SafeCheckpointer
from .hooks import PeakMemory
from .trained_model import build_trained_student

__all__ = ["Trainer", "setup_from_args", "train_or_evaluate"]

logger = logging.getLogger(__name__)


class Trainer(DefaultTrainer):
    """
    DefaultTrainer with this project's data and evaluation: person crops (DATALOADER.PERSON_CROPS)
    and query-gallery pairs (DATALOADER.QUERY_PAIRS) besides whole images, the person-search
    evaluator, checkpoints that survive a kill or a divergence, and the peak memory in
    metrics.json.
    """

    @classmethod
    def build_train_loader(cls, cfg):
        if cfg.DATALOADER.PERSON_CROPS:
            return build_person_crop_train_loader(cfg)
        if cfg.DATALOADER.QUERY_PAIRS:
            return build_query_pair_train_loader(cfg)
        # Our mapper carries person ids to Instances.gt_pids.
        return build_detection_train_loader(cfg, mapper=PersonSearchDatasetMapper(cfg, True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_person_search_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_dir = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_person_search_evaluator(cfg, dataset_name, output_dir)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        # Evaluation runs the plain student (of a DDP-wrapped Distiller, in training).
        model = student_of(model)
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
        model = student_of(model)
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


def setup_from_args(args):
    """
    The frozen config of detectron2's command-line ``args`` (config file, then the override files
    of ``args.override`` if any, then KEY VALUE opts), with detectron2's run setup (OUTPUT_DIR,
    config.yaml, logs, seed) and this package's logger.
    """
    cfg = load_config(args.config_file, args.opts, overrides=getattr(args, "override", None) or ())
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="personsearch_kd")
    return cfg


def train_or_evaluate(args):
    """
    detectron2's train_net ``main`` (run it in every process with :func:`launch_from_args`):
    trains the config of ``args``, or with ``--eval-only`` evaluates its MODEL.WEIGHTS (with
    ``--resume``: OUTPUT_DIR's last checkpoint). Returns the evaluation results.
    """
    cfg = setup_from_args(args)
    if args.eval_only:
        # Teachers are for training: evaluation needs the student's checkpoint only.
        model = build_trained_student(cfg, cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()
