# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
The measurements of tools/benchmark_indexing.py: :func:`index_gallery` run end to end on real
images and videos, once per setting (override files and KEY VALUE keys over one config) and
round, the settings alternated so that a change in the machine's load hits all alike; frames
per second, boxes indexed, and the share of each stage of the run.
"""

import os
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

from ..config import load_config
from ..search import index_gallery, indexing_config
from .inference_benchmark import STAGES, StageTimer
from .predictor import PersonSearchPredictor

__all__ = ["IndexingSetting", "INDEXING_STAGES", "measure_indexing", "parse_setting"]

# The model's stages (inference_benchmark.STAGES), then what a run does around them: resizing
# and batching images for the model, and reading (the wait on the decoding thread), the frame
# gate and the index.
INDEXING_STAGES = STAGES[:-1] + ["model rest", "resize and batch", "read, gate, index"]


@dataclass
class IndexingSetting:
    """One row: override files and KEY VALUE keys over the benchmark's config."""

    name: str
    overrides: List[str] = field(default_factory=list)
    opts: List[str] = field(default_factory=list)
    # Re-ID on every detection (the config as it is), not only on those the index keeps
    # (indexing_config, which tools/index_gallery.py applies): the path before it did.
    all_detections: bool = False


def parse_setting(tokens: Sequence[str]) -> IndexingSetting:
    """``NAME [FILE.yaml ...] [KEY VALUE ...]`` (tools/benchmark_indexing.py's --setting)."""
    if not tokens:
        raise ValueError("--setting: expected NAME [FILE.yaml ...] [KEY VALUE ...]")
    name, rest = tokens[0], list(tokens[1:])
    overrides = [t for t in rest if t.endswith((".yaml", ".yml"))]
    opts = [t for t in rest if not t.endswith((".yaml", ".yml"))]
    if len(opts) % 2:
        raise ValueError(f"--setting {name}: {opts}: expected KEY VALUE pairs")
    return IndexingSetting(name, overrides, opts)


def _predictor(config_file: str, opts: Sequence[str], setting: IndexingSetting):
    cfg = load_config(config_file, list(opts) + setting.opts, overrides=setting.overrides)
    if not setting.all_detections:
        cfg = indexing_config(cfg)
    return cfg, PersonSearchPredictor(cfg)


def _timed_run(cfg, predictor, inputs, every, output) -> Dict:
    """One indexing run into ``output``: wall seconds, frames, boxes and seconds per stage."""
    timer = StageTimer(predictor.model, cfg.MODEL.DEVICE)
    seconds = defaultdict(float)
    detect_batch, model_forward = predictor.detect_batch, predictor.model.forward

    def timed_forward(*args, **kwargs):
        timer.res5_calls = 0  # res5's first call of each forward is the detector's
        start = time.perf_counter()
        try:
            return model_forward(*args, **kwargs)
        finally:
            seconds["model"] += time.perf_counter() - start

    def timed_detect_batch(images):
        start = time.perf_counter()
        try:
            return detect_batch(images)
        finally:
            seconds["detect_batch"] += time.perf_counter() - start

    predictor.detect_batch, predictor.model.forward = timed_detect_batch, timed_forward
    start = time.perf_counter()
    try:
        index = index_gallery(cfg, predictor, inputs, output, every, save_every=1 << 30)
    finally:
        wall = time.perf_counter() - start
        del predictor.detect_batch, predictor.model.forward  # the class's methods again
        for handle in timer.handles:
            handle.remove()
    stages = {name: timer.seconds.get(name, 0.0) for name in STAGES[:-1]}
    stages["model rest"] = max(0.0, seconds["model"] - sum(stages.values()))
    stages["resize and batch"] = max(0.0, seconds["detect_batch"] - seconds["model"])
    stages["read, gate, index"] = max(0.0, wall - seconds["detect_batch"])
    return {"wall": wall, "frames": index.num_sources, "boxes": len(index), "stages": stages}


def measure_indexing(
    config_file: str,
    inputs: Sequence[str],
    settings: Sequence[IndexingSetting],
    rounds: int = 2,
    every: int = 1,
    opts: Sequence[str] = (),
) -> List[Dict]:
    """
    Index ``inputs`` with every setting in turn, ``rounds`` times (a new index each time).

    Returns:
        one dict per setting: ``name``, ``frames`` and ``boxes`` indexed, ``frames_per_s`` (of
        the median run), ``speedup`` over the first setting, ``shares`` {stage: share of the
        run's time} (INDEXING_STAGES, mean over the rounds) and ``seconds`` (every run).
    """
    built = {s.name: _predictor(config_file, opts, s) for s in settings}
    runs = defaultdict(list)
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(rounds):
            for setting in settings:  # alternated: load changes hit every setting alike
                output = os.path.join(scratch, f"{setting.name}-{round_}")
                runs[setting.name].append(_timed_run(*built[setting.name], inputs, every, output))
    rows = []
    for setting in settings:
        done = runs[setting.name]
        median = statistics.median(run["wall"] for run in done)
        wall = sum(run["wall"] for run in done)
        shares = {k: sum(run["stages"][k] for run in done) / wall for k in INDEXING_STAGES}
        rows.append(
            {
                "name": setting.name,
                "frames": done[0]["frames"],
                "boxes": done[0]["boxes"],
                "frames_per_s": done[0]["frames"] / median,
                "shares": shares,
                "seconds": [run["wall"] for run in done],
            }
        )
    for row in rows:
        row["speedup"] = row["frames_per_s"] / rows[0]["frames_per_s"]
    return rows
