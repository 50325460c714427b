# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Shared checks of the annotation readers (mot.py, prw.py, cuhk_sysu.py).

Every malformed annotation raises :class:`AnnotationError`, whose message starts with the path of
the file at fault, then the line (``path:12: ...``) or the key (``path: sequences.X.ids: ...``)
when there is one. Every parse goes through a helper here so that no reader lets a bare
``JSONDecodeError``, ``UnicodeDecodeError``, ``RecursionError``, ``IndexError`` or ``TypeError``
escape. A missing file stays a :class:`FileNotFoundError` naming its path.
"""

import json
import os
from typing import Dict, Iterable, Optional

import numpy as np
import scipy.io

__all__ = [
    "AnnotationError",
    "MAX_ID",
    "first_duplicate",
    "first_nonfinite_row",
    "first_noninteger",
    "first_true",
    "json_int",
    "load_json_object",
    "load_mat",
    "read_text",
    "require_file",
]

# Frames and identity ids must stay far below 2**53 (beyond it a float64 cannot tell
# neighbouring integers apart) and fit an int64; 2**31 is far above any real dataset.
MAX_ID = 2**31 - 1


class AnnotationError(ValueError, KeyError):
    """
    A malformed annotation file. A ValueError (the data is wrong) and, so that callers written
    against the older readers that raised KeyError for a missing key still catch it, a KeyError;
    the same double inheritance as numpy's AxisError(ValueError, IndexError).
    """

    def __init__(self, path: str, message: Optional[str] = None, line: Optional[int] = None):
        self.path = path
        self.line = line
        if message is None:  # unpickling passes the full message back as the only argument
            super().__init__(path)
            return
        where = path if line is None else f"{path}:{line}"
        super().__init__(f"{where}: {message}")

    # KeyError quotes its message (repr): show it as written instead.
    __str__ = ValueError.__str__


def require_file(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing {what}")


def read_text(path: str, what: str = "file") -> str:
    """The whole file as text: UTF-8 (a byte-order mark is dropped), else an AnnotationError."""
    require_file(path, what)
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise AnnotationError(path, f"not UTF-8 text (byte {e.start}: {e.reason})") from None


def _reject_duplicate_keys(path: str):
    def object_pairs_hook(pairs):
        out = {}
        for key, value in pairs:
            if key in out:
                raise AnnotationError(path, f"key {key!r} appears twice in one object")
            out[key] = value
        return out

    return object_pairs_hook


def _reject_constant(path: str):
    def parse_constant(name):
        raise AnnotationError(path, f"{name} is not a JSON number")

    return parse_constant


def load_json_object(path: str) -> Dict:
    """
    Parse a JSON file whose top level is an object. Rejected, naming the file: invalid JSON,
    non-UTF-8 bytes, nesting too deep for the parser, NaN/Infinity (not JSON, though Python's json
    accepts them), a key twice in one object (json keeps the last silently), and numbers too long
    to convert.
    """
    text = read_text(path, "JSON file")
    try:
        value = json.loads(
            text,
            object_pairs_hook=_reject_duplicate_keys(path),
            parse_constant=_reject_constant(path),
        )
    except AnnotationError:
        raise
    except json.JSONDecodeError as e:
        raise AnnotationError(path, f"invalid JSON ({e.msg})", line=e.lineno) from None
    except RecursionError:
        raise AnnotationError(path, "JSON nested too deeply") from None
    except ValueError as e:  # e.g. an integer literal with more digits than int() allows
        raise AnnotationError(path, f"invalid JSON ({e})") from None
    if not isinstance(value, dict):
        raise AnnotationError(path, f"top level must be a JSON object, got {type(value).__name__}")
    return value


def json_int(value, path: str, key: str, low: int = 0, high: int = MAX_ID) -> int:
    """A JSON integer in [low, high]: no string ("9"), float (2.5, 2.0, 1e8) or bool."""
    if type(value) is not int:
        raise AnnotationError(path, f"{key} must be an integer, got {json.dumps(value)[:40]}")
    if not low <= value <= high:
        raise AnnotationError(path, f"{key} must be in [{low}, {high}], got {value}")
    return value


def load_mat(path: str) -> Dict:
    """scipy.io.loadmat, any failure (bad header, truncation, nesting, ...) naming the file."""
    require_file(path, "file")
    try:
        return scipy.io.loadmat(path)
    except Exception as e:  # scipy raises ValueError, MatReadError, TypeError, ... on a bad file
        raise AnnotationError(path, f"not a readable .mat file ({type(e).__name__}: {e})") from None


def first_true(mask: np.ndarray) -> Optional[int]:
    """Index of the first True of a boolean vector, or None."""
    hits = np.flatnonzero(mask)
    return int(hits[0]) if len(hits) else None


def first_nonfinite_row(table: np.ndarray) -> Optional[int]:
    """The first row of a 2-D float table holding a NaN or an infinity, or None."""
    return first_true(~np.isfinite(table).all(axis=1))


def first_noninteger(column: np.ndarray, low: int, high: int) -> Optional[int]:
    """The first entry of a finite float column that is not a whole number in [low, high]."""
    return first_true((column != np.floor(column)) | (column < low) | (column > high))


def first_duplicate(items: Iterable):
    """(first index, second index) of the first item seen twice, or None."""
    seen = {}
    for index, item in enumerate(items):
        if item in seen:
            return seen[item], index
        seen[item] = index
    return None
