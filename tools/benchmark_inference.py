#!/usr/bin/env python3
# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Gallery inference speed of person-search configs: images per second and the time of each stage
(backbone, RPN, ROI pooling, res5 for detection, res5 and embedding for re-ID, box predictor, the
rest = postprocess), with peak memory, for a batch of images at a given size, precision and
memory format; one Markdown row per config and setting. Settings alternate in one process, so a
change in the machine's load hits all alike.

    python tools/benchmark_inference.py --config-files configs/mot15/oim_R_50_C4_cpu.yaml \
        --height 576 --width 768 --precision fp32 bf16 --iters 5 MODEL.DEVICE cpu
    python tools/benchmark_inference.py --config-files configs/mot15/oim_R_18_C4_cpu.yaml \
        --reid-on-proposals 0 1 MODEL.WEIGHTS output/mot15_oim_R_18_C4_cpu/model_final.pth
"""

import argparse
import itertools
import statistics
import time
from collections import defaultdict

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from personsearch_kd import load_config, student_config
from personsearch_kd.engine.hooks import peak_memory_gb

PRECISIONS = ("fp32", "bf16", "fp16")


class StageTimer:
    """Forward hooks adding each stage's wall time (CUDA synchronised) for one forward."""

    def __init__(self, model, device: str):
        self.device = device
        self.seconds = defaultdict(float)
        heads = model.roi_heads
        stages = {
            "backbone": model.backbone,
            "RPN": model.proposal_generator,
            "ROI pooling": heads.pooler,
            "box predictor": heads.box_predictor,
            "re-ID embedding": heads.reid_head,
        }
        if getattr(heads, "reid_res5", None) is not None:
            stages["res5 re-ID"] = heads.reid_res5
        self.handles = []
        for name, module in stages.items():
            self._hook(module, lambda name=name: name)
        # res5's first call of a forward is the detector's pass; a second one embeds the final
        # boxes for re-ID.
        self.res5_calls = 0
        self._hook(heads.res5, self._res5_stage)

    def _res5_stage(self):
        self.res5_calls += 1
        return "res5 detection" if self.res5_calls == 1 else "res5 re-ID"

    def _sync(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def _hook(self, module, stage_name):
        start = {}

        def pre(*_):
            self._sync()
            start["t"] = time.perf_counter()

        def post(*_):
            self._sync()
            self.seconds[stage_name()] += time.perf_counter() - start["t"]

        self.handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def reset(self):
        self.seconds.clear()
        self.res5_calls = 0


def _model(config_file, opts, reid_on_proposals):
    cfg = load_config(config_file, opts, freeze=False)
    cfg.TEST.PERSON_SEARCH.REID_ON_PROPOSALS = bool(reid_on_proposals)
    cfg = student_config(cfg)
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return cfg, model


def measure(args):
    """Rows: config, reid on proposals, precision, channels_last, images/s, stage shares, GB."""
    settings = list(
        itertools.product(
            args.config_files, args.reid_on_proposals, args.precision, args.channels_last
        )
    )
    built = {}
    for config_file, on_proposals, _, _ in settings:
        if (config_file, on_proposals) not in built:
            built[config_file, on_proposals] = _model(config_file, args.opts, on_proposals)
    times = defaultdict(list)
    stages = defaultdict(lambda: defaultdict(float))
    memory = {}
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch, 3, args.height, args.width), generator=generator)
    for iteration in range(args.warmup + args.iters):
        for setting in settings:  # alternated: load changes hit every setting alike
            config_file, on_proposals, precision, channels_last = setting
            cfg, model = built[config_file, on_proposals]
            device = cfg.MODEL.DEVICE
            model = model.to(memory_format=torch.channels_last) if channels_last else model
            inputs = [
                {"image": image.float().to(device), "height": args.height, "width": args.width}
                for image in images
            ]
            timer = StageTimer(model, device)
            model.inference_precision = precision  # TEST.PERSON_SEARCH.PRECISION
            if device.startswith("cuda"):  # on CPU the peak is the process's so far
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            with torch.no_grad():
                model(inputs)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            for handle in timer.handles:
                handle.remove()
            if iteration >= args.warmup:
                times[setting].append(elapsed)
                for name, seconds in timer.seconds.items():
                    stages[setting][name] += seconds / args.iters
                memory[setting] = max(memory.get(setting, 0.0), peak_memory_gb(device))
            if channels_last:
                model.to(memory_format=torch.contiguous_format)
    rows = []
    for setting in settings:
        median = statistics.median(times[setting])
        mean = statistics.mean(times[setting])
        shares = {k: v / mean for k, v in stages[setting].items()}
        shares["postprocess and rest"] = max(0.0, 1.0 - sum(shares.values()))
        rows.append((*setting, args.batch / median, median, shares, memory[setting]))
    return rows


STAGES = [
    "backbone",
    "RPN",
    "ROI pooling",
    "res5 detection",
    "box predictor",
    "res5 re-ID",
    "re-ID embedding",
    "postprocess and rest",
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-files", nargs="+", required=True)
    parser.add_argument("--height", type=int, default=576)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--batch", type=int, default=1, help="gallery images per forward")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=PRECISIONS)
    parser.add_argument("--channels-last", nargs="+", type=int, default=[0], choices=[0, 1])
    parser.add_argument("--reid-on-proposals", nargs="+", type=int, default=[0], choices=[0, 1])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE for every config")
    args = parser.parse_args(argv)
    rows = measure(args)
    print(
        "| config | re-ID on proposals | precision | channels_last | images/s | s/forward | "
        + " | ".join(f"{s} %" for s in STAGES)
        + " | peak GB |"
    )
    print("|" + "---|" * (7 + len(STAGES)))
    for config_file, on_proposals, precision, cl, rate, median, shares, gb in rows:
        cells = " | ".join(f"{100 * shares.get(s, 0.0):.1f}" for s in STAGES)
        print(
            f"| {config_file} | {on_proposals} | {precision} | {cl} | {rate:.2f} | {median:.3f} "
            f"| {cells} | {gb:.2f} |"
        )
    return rows


if __name__ == "__main__":
    main()  # pragma: no cover
