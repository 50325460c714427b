# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""Command-line tools run end to end on tiny inputs."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("detectron2")

from helpers import CONFIGS, REPO_ROOT  # noqa: E402


def test_benchmark_train_step_prints_a_table_row_per_config():
    config = os.path.join(CONFIGS, "scratch", "oim_R_18_C4_scratch.yaml")
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO_ROOT, "tools", "benchmark_train_step.py"),
            "--config-file",
            config,
            config,
            "--height",
            "96",
            "--width",
            "128",
            "--batch",
            "1",
            "--persons",
            "2",
            "--warmup",
            "0",
            "--iters",
            "1",
            "MODEL.DEVICE",
            "cpu",
            "MODEL.OIM.NUM_IDS",
            "4",
            "MODEL.OIM.QUEUE_SIZE",
            "8",
            "MODEL.RPN.POST_NMS_TOPK_TRAIN",
            "50",
            "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
            "16",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = [line for line in result.stdout.splitlines() if line.startswith(f"| {config}")]
    assert len(rows) == 2
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[1:4] == ["R18", "cpu", "16"]
    assert float(cells[4]) > 0 and float(cells[6]) > 0
