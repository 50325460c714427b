#!/usr/bin/env python3
# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
personsearch_kd training script: detectron2's usual CLI (--config-file, --num-gpus, --num-machines,
--resume, --eval-only, trailing KEY VALUE opts) over personsearch_kd.engine.Trainer, and
--override FILE (repeatable): a file of keys merged after --config-file, before the opts, e.g.
  python tools/train_net.py --config-file configs/mot15/fd_R_18.yaml \
    --override configs/mot15/gpu.yaml
"""

import os

from detectron2.engine import default_argument_parser

from personsearch_kd.engine import launch_from_args, train_or_evaluate
from personsearch_kd.engine.command_line import one_line_errors, run_cli


def invoke_main(argv=None):
    parser = one_line_errors(default_argument_parser())
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="FILE",
        help="a config file of keys only, no _BASE_ (e.g. the hardware keys of "
        "configs/mot15/gpu.yaml), merged after --config-file and before the trailing KEY VALUE "
        "opts; repeatable, merged in order",
    )
    args = parser.parse_args(argv)
    if not os.path.isfile(args.config_file):
        parser.error(f"--config-file {args.config_file}: no such file")
    for override in args.override:
        if not os.path.isfile(override):
            parser.error(f"--override {override}: no such file")
    print("Command Line Args:", args)
    return launch_from_args(train_or_evaluate, args)


if __name__ == "__main__":
    run_cli(invoke_main)  # pragma: no cover
