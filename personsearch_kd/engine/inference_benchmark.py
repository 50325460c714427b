# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
The measurements of tools/benchmark_inference.py: gallery inference of person-search configs on
a batch of random images, its time per forward and per stage (forward hooks), detections and peak
memory, every setting (config, re-ID placement, precision, memory format) alternated in one
process, so that a change in the machine's load hits all alike; SeqNet as one more setting.
"""

import statistics
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ..config import load_config
from ..modeling.precision import PRECISIONS, resolve_precision
from ..utils.seqnet_reference import build_seqnet, seqnet_gallery_inputs
from .hooks import peak_memory_gb
from .trained_model import build_trained_student

__all__ = ["InferenceOptions", "PRECISIONS", "STAGES", "calibrate_batchnorm", "measure_inference"]


@dataclass
class InferenceOptions:
    """What :func:`measure_inference` runs: tools/benchmark_inference.py's options."""

    config_files: Sequence[str]
    opts: Sequence[str] = ()  # KEY VALUE for every config
    height: int = 576
    width: int = 768
    batch: int = 1  # gallery images per forward
    precision: Sequence[str] = ("fp32",)
    channels_last: Sequence[int] = (0,)
    reid_on_proposals: Sequence[int] = (0,)
    warmup: int = 1
    iters: int = 5
    # MODEL.ROI_HEADS.SCORE_THRESH_TEST of every model, SeqNet's too (None: the configs').
    score_thresh: Optional[float] = None
    calibrate_bn: int = 0  # forwards that set random models' BatchNorm statistics first
    seqnet_root: Optional[str] = None  # a checkout of serend1p1ty/SeqNet: time it too
    seqnet_device: str = "cpu"
    seqnet_detections: int = 300


# The config name of SeqNet's row (personsearch_kd/utils/seqnet_reference.py).
SEQNET = "SeqNet"

# The timed stages of a forward, in order ("postprocess and rest": what the others leave).
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


def _inputs(setting, built, images, options):
    """The model of ``setting`` and its input for ``images``."""
    config_file, on_proposals, _, _ = setting
    if config_file == SEQNET:
        return built[SEQNET], seqnet_gallery_inputs(images, options.seqnet_device)
    cfg, model = built[config_file, on_proposals]
    h, w = options.height, options.width
    inputs = [
        {"image": image.float().to(cfg.MODEL.DEVICE), "height": h, "width": w} for image in images
    ]
    return model, inputs


def _forward(setting, built, images, options):
    """Seconds of one forward of ``setting`` on ``images``, detections per image, stage times."""
    config_file, on_proposals, precision, channels_last = setting
    model, inputs = _inputs(setting, built, images, options)
    if config_file == SEQNET:
        device, timer = options.seqnet_device, None
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


def measure_inference(options: InferenceOptions):
    """
    Rows, one per config and setting (then SeqNet's): (config, re-ID on proposals, precision,
    channels_last, images/s, median s per forward, detections per image, {stage: share of the
    forward} (empty for SeqNet), peak memory GB).
    """
    built = {}
    precisions = {}  # per config: "auto" resolved, an emulated precision refused before any run
    for config_file in options.config_files:
        device = load_config(config_file, options.opts).MODEL.DEVICE
        precisions[config_file] = list(
            dict.fromkeys(resolve_precision(p, device) for p in options.precision)
        )
    settings = [
        (config_file, on_proposals, precision, channels_last)
        for config_file in options.config_files
        for on_proposals in options.reid_on_proposals
        for precision in precisions[config_file]
        for channels_last in options.channels_last
    ]
    for config_file, on_proposals, _, _ in settings:
        if (config_file, on_proposals) not in built:
            built[config_file, on_proposals] = _model(
                config_file, options.opts, on_proposals, options.score_thresh
            )
    if options.seqnet_root:
        built[SEQNET] = build_seqnet(
            options.seqnet_root,
            options.height,
            options.width,
            options.score_thresh,
            options.seqnet_detections,
            options.seqnet_device,
        )
        settings.append((SEQNET, "-", "fp32", 0))
    generator = torch.Generator().manual_seed(0)
    shape = (options.batch, 3, options.height, options.width)
    images = torch.randint(0, 256, shape, generator=generator)
    if options.calibrate_bn:
        for setting in settings:
            calibrate_batchnorm(*_inputs(setting, built, images, options), options.calibrate_bn)
    times = defaultdict(list)
    detections = defaultdict(list)
    stages = defaultdict(lambda: defaultdict(float))
    memory = {}
    for iteration in range(options.warmup + options.iters):
        for setting in settings:  # alternated: load changes hit every setting alike
            elapsed, found, seconds, device = _forward(setting, built, images, options)
            if iteration >= options.warmup:
                times[setting].append(elapsed)
                detections[setting].append(found)
                for name, stage_seconds in seconds.items():
                    stages[setting][name] += stage_seconds / options.iters
                memory[setting] = max(memory.get(setting, 0.0), peak_memory_gb(device))
    rows = []
    for setting in settings:
        median = statistics.median(times[setting])
        mean = statistics.mean(times[setting])
        shares = {k: v / mean for k, v in stages[setting].items()}
        if shares:  # SeqNet's stages are not timed
            shares["postprocess and rest"] = max(0.0, 1.0 - sum(shares.values()))
        found = statistics.mean(detections[setting])
        rows.append((*setting, options.batch / median, median, found, shares, memory[setting]))
    return rows
