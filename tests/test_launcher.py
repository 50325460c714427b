# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""The tools' shared process options and launch: one process returns the result, N run N ranks."""

import argparse
import os

import pytest

pytest.importorskip("detectron2")

from detectron2.utils import comm  # noqa: E402

from helpers import end_distributed_worker  # noqa: E402
from personsearch_kd.engine import add_launcher_arguments, launch_from_args  # noqa: E402


def _parser():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    add_launcher_arguments(parser, what="--compute: ")
    return parser


def _write_rank(args):
    rank, world = comm.get_rank(), comm.get_world_size()
    with open(os.path.join(args.out, f"rank{rank}"), "w") as f:
        f.write(str(world))
    if world > 1:
        end_distributed_worker()
    return rank


def test_defaults_are_one_local_process_and_the_help_names_the_mode():
    parser = _parser()
    args = parser.parse_args([])
    assert (args.num_gpus, args.num_machines, args.machine_rank, args.dist_url) == (1, 1, 0, "auto")
    assert "--compute: processes per machine" in parser.format_help().replace("\n", " ")


def test_one_process_runs_here_and_returns_the_result(tmp_path):
    args = _parser().parse_args(["--out", str(tmp_path)])
    assert launch_from_args(_write_rank, args) == 0
    assert os.listdir(tmp_path) == ["rank0"]


def test_two_processes_each_run_their_rank_and_return_nothing_here(tmp_path):
    args = _parser().parse_args(["--out", str(tmp_path), "--num-gpus", "2"])
    assert launch_from_args(_write_rank, args) is None
    assert sorted(os.listdir(tmp_path)) == ["rank0", "rank1"]
    assert all(open(tmp_path / name).read() == "2" for name in ("rank0", "rank1"))


def test_cpu_processes_share_the_cores_unless_omp_num_threads_says(monkeypatch):
    import torch

    from personsearch_kd.engine.launcher import share_cpu_cores

    threads = torch.get_num_threads()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        monkeypatch.setattr(comm, "get_local_size", lambda: 1)
        torch.set_num_threads(3)
        assert share_cpu_cores() == 3  # one process: left as it is
        monkeypatch.setattr(comm, "get_local_size", lambda: 2)
        assert share_cpu_cores() == 2  # 4 cores, 2 processes
        monkeypatch.setattr(comm, "get_local_size", lambda: 8)
        assert share_cpu_cores() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        torch.set_num_threads(3)
        assert share_cpu_cores() == 3  # the user's choice
    finally:
        torch.set_num_threads(threads)
