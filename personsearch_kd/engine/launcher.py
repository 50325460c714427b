# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
The process options of detectron2's launcher for this project's tools (the evaluation of
query-guided pairs, the LUT export, the gallery indexer), and the launch itself.

detectron2's ``default_argument_parser`` carries them too, but with ``--resume``/``--eval-only``
and a config file that these tools do not all take in the same sense; they share only these four.
"""

import argparse
import os
from typing import Any, Callable, Optional

import torch

from detectron2.engine import launch
from detectron2.utils import comm


def add_launcher_arguments(parser: argparse.ArgumentParser, what: str = "") -> None:
    """
    Add ``--num-gpus``, ``--num-machines``, ``--machine-rank`` and ``--dist-url`` (detectron2's
    meaning: processes per machine, GPUs or, without one, CPU processes over gloo).

    Args:
        what: a prefix for ``--num-gpus``'s help, e.g. "--compute: " where only one mode is
            distributed.
    """
    parser.add_argument(
        "--num-gpus", type=int, default=1, help=f"{what}processes per machine (GPUs or CPU)"
    )
    parser.add_argument("--num-machines", type=int, default=1, help="machines taking part")
    parser.add_argument("--machine-rank", type=int, default=0, help="this machine's rank")
    parser.add_argument(
        "--dist-url", default="auto", help="the main process's address ('auto': one machine)"
    )


def launch_from_args(main_func: Callable[[argparse.Namespace], Any], args) -> Optional[Any]:
    """
    Run ``main_func(args)`` in ``args.num_gpus * args.num_machines`` processes.

    Returns:
        what ``main_func`` returned when it ran in this process (a world of one), else None:
        detectron2's ``launch`` discards the spawned processes' results.
    """
    if args.num_gpus * args.num_machines == 1:
        return main_func(args)
    launch(
        main_func,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
    return None


def share_cpu_cores() -> int:
    """
    Give each process of this machine its share of the CPU cores as torch threads, unless
    OMP_NUM_THREADS sets them: by default every process takes all cores, so N processes would
    run N x cores threads on them. Returns this process's threads.
    """
    processes = comm.get_local_size()
    if processes > 1 and "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        torch.set_num_threads(max(1, cores // processes))
    return torch.get_num_threads()
