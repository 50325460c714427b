#!/usr/bin/env python3
# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Training and evaluation with LazyConfig python files (configs/lazy/), detectron2's
tools/lazyconfig_train_net.py with this project's pieces: checkpoints written atomically and never
of a diverged model, the peak memory in metrics.json, the person-search evaluator of the config's
``dataloader.evaluator``; ``--eval-only`` builds a Distiller's student alone (teacher files may be
gone). Options: --config-file, --num-gpus, --resume, --eval-only, trailing key=value overrides
(``train.max_iter=100 model.teachers.table.weights=lut.pth``).
"""

import logging
import os

from detectron2.config import LazyConfig, instantiate
from detectron2.engine import (
    AMPTrainer,
    SimpleTrainer,
    default_argument_parser,
    default_setup,
    default_writers,
    hooks,
)
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.registry import locate

from personsearch_kd.distillation import Distiller
from personsearch_kd.engine import PeakMemory, SafeCheckpointer, launch_from_args
from personsearch_kd.engine.command_line import one_line_errors, run_cli

logger = logging.getLogger("detectron2")


def do_test(cfg, model):
    """The evaluation of ``dataloader.evaluator`` on ``dataloader.test``; {} without one."""
    if cfg.dataloader.get("evaluator") is None or cfg.dataloader.get("test") is None:
        return {}
    results = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    if comm.is_main_process() and results:
        print_csv_format(results)
    return results


def do_train(args, cfg):
    model = instantiate(cfg.model).to(cfg.train.device)
    logger.info(f"Model:\n{model}")
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(
        model, train_loader, optimizer
    )
    checkpointer = SafeCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    results = {}

    def test():
        results.update(do_test(cfg, model))
        return results

    main = comm.is_main_process()
    writers = default_writers(cfg.train.output_dir, cfg.train.max_iter) if main else None
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main else None,
            hooks.EvalHook(cfg.train.eval_period, test),
            PeakMemory(cfg.train.device),
            hooks.PeriodicWriter(writers, period=cfg.train.log_period) if main else None,
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
    return results


def load(args):
    cfg = LazyConfig.load(args.config_file)
    return LazyConfig.apply_overrides(cfg, args.opts)


def main(args):
    cfg = load(args)
    default_setup(cfg, args)
    if not args.eval_only:
        return do_train(args, cfg)
    # Teachers are for training: evaluation needs the student and its checkpoint only.
    target = cfg.model.get("_target_")
    target = locate(target) if isinstance(target, str) else target  # a saved config's name
    model = instantiate(cfg.model.student if target is Distiller else cfg.model)
    model = model.to(cfg.train.device)
    model = create_ddp_model(model.eval())
    checkpointer = SafeCheckpointer(model, cfg.train.output_dir)
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    return do_test(cfg, model)


def invoke_main(argv=None):
    parser = one_line_errors(default_argument_parser())
    args = parser.parse_args(argv)
    if not args.config_file.endswith(".py") or not os.path.isfile(args.config_file):
        parser.error(f"--config-file {args.config_file!r}: expected a LazyConfig .py file")
    try:  # cheap checks here, before any process starts
        cfg = load(args)
    except Exception as e:  # a bad key=value, a syntax error in the file
        message = " ".join(str(e).split())  # one line
        parser.error(f"{args.config_file} with {args.opts}: {type(e).__name__}: {message}")
    parts = ("model", "dataloader", "optimizer", "lr_multiplier", "train")
    missing = [k for k in parts if k not in cfg]
    if missing:
        parser.error(f"{args.config_file}: no {', '.join(missing)} (see configs/lazy/mot15/)")
    if args.eval_only and cfg.dataloader.get("evaluator") is None:
        parser.error(f"--eval-only: {args.config_file} has no dataloader.evaluator")
    return launch_from_args(main, args)


if __name__ == "__main__":
    run_cli(invoke_main)  # pragma: no cover
