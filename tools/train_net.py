#!/usr/bin/env python3
# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
personsearch_kd training script: detectron2's usual CLI (--config-file, --num-gpus, --num-machines,
--resume, --eval-only, trailing KEY VALUE opts) over personsearch_kd.engine.Trainer.
"""

import os

from detectron2.engine import default_argument_parser

from personsearch_kd.engine import launch_from_args, train_or_evaluate
from personsearch_kd.engine.command_line import one_line_errors


def invoke_main(argv=None):
    parser = one_line_errors(default_argument_parser())
    args = parser.parse_args(argv)
    if not os.path.isfile(args.config_file):
        parser.error(f"--config-file {args.config_file}: no such file")
    print("Command Line Args:", args)
    return launch_from_args(train_or_evaluate, args)


if __name__ == "__main__":
    invoke_main()  # pragma: no cover
