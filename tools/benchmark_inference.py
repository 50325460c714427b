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

--seqnet-root PATH (a checkout of serend1p1ty/SeqNet) adds SeqNet, fp32 with random weights and
its default settings, as one more alternated row (personsearch_kd/utils/seqnet_reference.py);
give our configs the same settings to compare, e.g. for R50-C4:

    python tools/benchmark_inference.py --config-files configs/scratch/oim_R_50_C4_scratch.yaml \
        --height 900 --width 1500 --precision fp32 bf16 --reid-on-proposals 0 1 \
        --seqnet-root ../SeqNet --score-thresh 0 --calibrate-bn 2 --seqnet-detections 100 \
        MODEL.DEVICE cpu MODEL.RPN.PRE_NMS_TOPK_TEST 6000 MODEL.RPN.POST_NMS_TOPK_TEST 300 \
        TEST.DETECTIONS_PER_IMAGE 100
"""

import argparse
import itertools
import statistics
import time
from collections import defaultdict

import torch

from personsearch_kd import load_config
from personsearch_kd.engine import build_trained_student
from personsearch_kd.engine.hooks import peak_memory_gb
from personsearch_kd.utils.seqnet_reference import build_seqnet, seqnet_gallery_inputs

SEQNET = "SeqNet"

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


def _model(config_file, opts, reid_on_proposals, score_thresh=None):
    cfg = load_config(config_file, opts, freeze=False)
    cfg.TEST.PERSON_SEARCH.REID_ON_PROPOSALS = bool(reid_on_proposals)
    if score_thresh is not None:
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = score_thresh
    torch.manual_seed(0)  # random weights: the same for every setting of a config
    return cfg, build_trained_student(cfg, cfg.MODEL.WEIGHTS)


@torch.no_grad()
def calibrate_batchnorm(model, inputs, passes: int):
    """
    Set the BatchNorm statistics of a randomly initialised ``model`` from ``passes`` inference
    forwards on ``inputs`` (its BN layers alone in train mode, cumulative averages). With the
    initial statistics (mean 0, variance 1) activations grow through the network; the RPN then
    finds no finite proposal, and the time measured is not that of a trained model's work.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    for _ in range(passes):
        model(inputs)
    for norm in norms:
        norm.eval()


def _inputs(setting, built, images, args):
    """The model of ``setting`` and its input for ``images``."""
    config_file, on_proposals, _, _ = setting
    if config_file == SEQNET:
        return built[SEQNET], seqnet_gallery_inputs(images, args.seqnet_device)
    cfg, model = built[config_file, on_proposals]
    inputs = [
        {"image": image.float().to(cfg.MODEL.DEVICE), "height": args.height, "width": args.width}
        for image in images
    ]
    return model, inputs


def _forward(setting, built, images, args):
    """Seconds of one forward of ``setting`` on ``images``, detections per image, stage times."""
    config_file, on_proposals, precision, channels_last = setting
    model, inputs = _inputs(setting, built, images, args)
    if config_file == SEQNET:
        device, timer = args.seqnet_device, None
    else:
        device = built[config_file, on_proposals][0].MODEL.DEVICE
        model = model.to(memory_format=torch.channels_last) if channels_last else model
        timer = StageTimer(model, device)
        model.inference_precision = precision  # TEST.PERSON_SEARCH.PRECISION
    if device.startswith("cuda"):  # on CPU the peak is the process's so far
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with torch.no_grad():
        outputs = model(inputs)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    if timer is None:
        return elapsed, statistics.mean(len(o["boxes"]) for o in outputs), {}, device
    for handle in timer.handles:
        handle.remove()
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    found = statistics.mean(len(o["instances"]) for o in outputs)
    return elapsed, found, timer.seconds, device


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
            built[config_file, on_proposals] = _model(
                config_file, args.opts, on_proposals, args.score_thresh
            )
    if args.seqnet_root:
        built[SEQNET] = build_seqnet(
            args.seqnet_root,
            args.height,
            args.width,
            args.score_thresh,
            args.seqnet_detections,
            args.seqnet_device,
        )
        settings.append((SEQNET, "-", "fp32", 0))
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch, 3, args.height, args.width), generator=generator)
    if args.calibrate_bn:
        for setting in settings:
            calibrate_batchnorm(*_inputs(setting, built, images, args), args.calibrate_bn)
    times = defaultdict(list)
    detections = defaultdict(list)
    stages = defaultdict(lambda: defaultdict(float))
    memory = {}
    for iteration in range(args.warmup + args.iters):
        for setting in settings:  # alternated: load changes hit every setting alike
            elapsed, found, seconds, device = _forward(setting, built, images, args)
            if iteration >= args.warmup:
                times[setting].append(elapsed)
                detections[setting].append(found)
                for name, stage_seconds in seconds.items():
                    stages[setting][name] += stage_seconds / args.iters
                memory[setting] = max(memory.get(setting, 0.0), peak_memory_gb(device))
    rows = []
    for setting in settings:
        median = statistics.median(times[setting])
        mean = statistics.mean(times[setting])
        shares = {k: v / mean for k, v in stages[setting].items()}
        if shares:  # SeqNet's stages are not timed
            shares["postprocess and rest"] = max(0.0, 1.0 - sum(shares.values()))
        found = statistics.mean(detections[setting])
        rows.append((*setting, args.batch / median, median, found, shares, memory[setting]))
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
    parser.add_argument(
        "--score-thresh",
        type=float,
        help="MODEL.ROI_HEADS.SCORE_THRESH_TEST of every model, SeqNet's too (random weights "
        "score near 0.5: 0 gives every model its maximum of detections)",
    )
    parser.add_argument(
        "--calibrate-bn",
        type=int,
        default=0,
        help="random weights: set every model's BatchNorm statistics from this many forwards "
        "first, so that it finds proposals and detections as a trained model does",
    )
    parser.add_argument("--seqnet-root", help="a checkout of serend1p1ty/SeqNet: time it too")
    parser.add_argument("--seqnet-device", default="cpu")
    parser.add_argument(
        "--seqnet-detections",
        type=int,
        default=300,
        help="SeqNet's DETECTIONS_PER_IMAGE_TEST (ours: TEST.DETECTIONS_PER_IMAGE); with "
        "--score-thresh 0 both reach an equal cap, so both embed as many boxes",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE for every config")
    args = parser.parse_args(argv)
    rows = measure(args)
    print(
        "| config | re-ID on proposals | precision | channels_last | images/s | s/forward "
        "| detections/image | "
        + " | ".join(f"{s} %" for s in STAGES)
        + " | peak GB |"
    )
    print("|" + "---|" * (8 + len(STAGES)))
    for config_file, on_proposals, precision, cl, rate, median, found, shares, gb in rows:
        cells = " | ".join(f"{100 * shares.get(s, 0.0):.1f}" if shares else "-" for s in STAGES)
        print(
            f"| {config_file} | {on_proposals} | {precision} | {cl} | {rate:.2f} | {median:.3f} "
            f"| {found:.1f} | {cells} | {gb:.2f} |"
        )
    return rows


if __name__ == "__main__":
    main()  # pragma: no cover
