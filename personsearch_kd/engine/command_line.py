# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
How every tool of this project answers bad input: one line ``error: <what>, <where>, <what was
expected>`` on stderr and exit status 2 (argparse's convention), no traceback.

- :func:`one_line_errors` makes a parser's own errors (a bad option) answer so, and adds
  ``--debug`` to it.
- :func:`run_cli` runs a tool's ``main`` and answers so the input errors raised deeper (a missing
  file, an unreadable image, a bad config key, a malformed annotation or gallery index): the
  exception types in :data:`INPUT_ERRORS`, and the assertions with which yacs checks config keys
  and fvcore checks that a checkpoint exists. Anything else (AttributeError, TypeError, ...) is a
  bug and keeps its traceback. ``--debug`` on the command line, or the environment variable
  ``PERSONSEARCH_DEBUG=1``, shows the traceback of an input error too.
"""

import argparse
import os
import re
import sys
from typing import Callable, Optional, Sequence

__all__ = [
    "DEBUG_ENV",
    "INPUT_ERRORS",
    "error_line",
    "input_error_message",
    "one_line_errors",
    "query_box_problem",
    "require_dir",
    "require_file",
    "require_weights",
    "run_cli",
]

DEBUG_ENV = "PERSONSEARCH_DEBUG"
# The package's own error classes derive from these: AnnotationError (ValueError, KeyError),
# GalleryIndexError (ValueError); a missing or unreadable file is an OSError.
INPUT_ERRORS = (OSError, ValueError, KeyError)

# Assertions that check user input in libraries the tools go through (config files and KEY VALUE
# options in yacs; the checkpoint file in fvcore's Checkpointer), by the file raising them.
_INPUT_ASSERTION_FILES = (
    os.path.join("yacs", "config.py"),
    os.path.join("fvcore", "common", "checkpoint.py"),
)
# (pattern of the library's message, one-line rewrite naming what, where and what was expected)
_REWRITES = (
    (
        r"^Checkpoint (?P<path>.*) not found!$",
        "{path}: checkpoint not found (MODEL.WEIGHTS or a --weights option; expected an existing "
        "detectron2 checkpoint file)",
    ),
    (
        r"^Non-existent (?:config )?key: (?P<key>\S+)$",
        "config key {key} does not exist (in the config file or its KEY VALUE options; expected a "
        "key of detectron2's and personsearch_kd's config)",
    ),
    (
        r"^Type mismatch \(<class '(?P<want>\w+)'> vs\. <class '(?P<got>\w+)'>\) with values "
        r"\((?P<default>.*) vs\. (?P<value>.*)\) for config key: (?P<key>\S+)$",
        "config key {key}: {value!r} is a {got} (in the config file or its KEY VALUE options; "
        "expected type {want}, e.g. {default})",
    ),
    (
        r"^Override list has odd length: (?P<opts>.*); it must be a list of pairs$",
        "KEY VALUE options {opts}: odd length (expected pairs of a config key and its value, "
        "after the other options)",
    ),
)


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """
    Make ``parser`` answer bad input as every tool of this project does: one line ``error: ...``
    on stderr and exit status 2 (argparse's own answer adds the usage, which --help prints).
    Adds ``--debug`` (see :func:`run_cli`). Returns ``parser``.
    """

    def error(message: str):
        parser.exit(2, error_line(message))

    parser.error = error
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"show the traceback of an error (also: {DEBUG_ENV}=1); before any KEY VALUE option",
    )
    return parser


def error_line(message: str) -> str:
    """``error: <message>`` on one line (newlines and runs of spaces become one space)."""
    return "error: " + " ".join(str(message).split()) + "\n"


def _raised_in(exc: BaseException, files: Sequence[str]) -> bool:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_filename.endswith(tuple(files))


def input_error_message(exc: BaseException) -> Optional[str]:
    """
    The one-line message of an exception that is an input error (see the module docstring), or
    None for one that is not (a bug: its traceback matters).
    """
    if isinstance(exc, AssertionError):
        if not _raised_in(exc, _INPUT_ASSERTION_FILES):
            return None
    elif not isinstance(exc, INPUT_ERRORS):
        return None
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        # "[Errno 2] No such file or directory: 'x'" -> "x: No such file or directory"
        message = f"{exc.filename}: {exc.strerror}"
    elif isinstance(exc, KeyError) and type(exc).__str__ is KeyError.__str__ and exc.args:
        message = str(exc.args[0])  # KeyError's str() quotes its message
    else:
        message = str(exc) or type(exc).__name__
    message = " ".join(message.split())
    for pattern, rewrite in _REWRITES:
        match = re.match(pattern, message)
        if match:
            return rewrite.format(**match.groupdict())
    return message


def _debugging(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run_cli(main: Callable, argv: Optional[Sequence[str]] = None):
    """
    Run a tool's ``main(argv)`` (``argv`` None: the command line) and return what it returns; an
    input error raised in it is answered with one line ``error: ...`` on stderr and exit status 2
    (SystemExit), unless ``--debug`` is in ``argv`` or ``PERSONSEARCH_DEBUG`` is set (not "0"):
    then it propagates with its traceback, as does every other exception.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        return main(argv)
    except Exception as e:
        message = input_error_message(e)
        if message is None or _debugging(args):
            raise
        sys.stdout.flush()
        sys.stderr.write(error_line(message))
        sys.stderr.flush()
        raise SystemExit(2) from None


def require_file(parser: argparse.ArgumentParser, option: str, path: str, expected: str) -> None:
    """``parser.error`` unless ``path`` (the value of ``option``) is an existing file."""
    if path and not os.path.isfile(path):
        what = "is a folder" if os.path.isdir(path) else "no such file"
        parser.error(f"{option} {path}: {what} (expected {expected})")


def require_dir(parser: argparse.ArgumentParser, option: str, path: str, expected: str) -> None:
    """``parser.error`` unless ``path`` (the value of ``option``) is an existing folder."""
    if path and not os.path.isdir(path):
        what = "is a file" if os.path.isfile(path) else "no such folder"
        parser.error(f"{option} {path}: {what} (expected {expected})")


def require_weights(cfg, config_file: str) -> None:
    """
    A FileNotFoundError naming MODEL.WEIGHTS and where it came from, when it names a local file
    that is not there (checked before a model is built; empty: no checkpoint, a URL: downloaded).
    """
    weights = cfg.MODEL.WEIGHTS
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise FileNotFoundError(
            f"MODEL.WEIGHTS {weights}: no such file (set by {config_file} or its KEY VALUE "
            "options; expected a detectron2 checkpoint, e.g. output/<run>/model_final.pth)"
        )


def query_box_problem(box, width: int, height: int, image_name: str) -> str:
    """
    What is wrong with a tool's ``--query-box`` (x0, y0, x1, y1) in the pixels of a ``width`` x
    ``height`` image, in one line; "" when it lies inside the image.
    """
    x0, y0, x1, y1 = box
    if 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height:
        return ""
    return (
        f"--query-box {list(box)}: expected 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height} "
        f"(pixels of {image_name})"
    )
