# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
import argparse

__all__ = ["one_line_errors", "query_box_problem"]


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """
    Make ``parser`` answer bad input as every tool of this project does: one line ``error: ...``
    on stderr and exit status 2 (argparse's own answer adds the usage, which --help prints).
    Returns ``parser``.
    """

    def error(message: str):
        parser.exit(2, f"error: {message}\n")

    parser.error = error
    return parser


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
