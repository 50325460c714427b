# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
The files of a gallery index directory, written and read without pickle:

- ``index.faiss``: faiss's own format;
- ``records.npz``: the metadata as plain arrays (per source path, frame, time, camera; per row
  source, box, detection score);
- ``pending.npy``: the features buffered while a trained index type has not seen enough rows;
- ``index.json``: format version, feature size, counts, index type and parameters, the model
  fingerprint, the recall self-check (``recall_check``: :mod:`.recall_check`; null for exact
  search, absent from older indexes); written last, so a directory whose header is in place holds
  consistent files.
"""

import functools
import json
import os
from typing import Dict, Tuple

import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "GalleryIndexError",
    "read_index_files",
    "write_index_files",
    "writes",
]

FORMAT_VERSION = 1
_REQUIRED = ("index.json", "records.npz", "index.faiss")


class GalleryIndexError(ValueError):
    """A gallery index that cannot be used: corrupt, of another format, model or feature size."""


def writes(method):
    """A method that changes the index: refused on one opened read-only (``read_only``)."""

    @functools.wraps(method)
    def checked(self, *args, **kwargs):
        if self.read_only:
            raise GalleryIndexError(f"{method.__name__}: the index was opened read-only")
        return method(self, *args, **kwargs)

    return checked


def _faiss():
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss-cpu is a dependency
        raise ImportError("the gallery index needs faiss: pip install faiss-cpu") from e
    return faiss


def write_index_files(
    directory: str, header: Dict, faiss_index, records: Dict[str, np.ndarray], pending: np.ndarray
) -> None:
    """Write the four files into ``directory`` (created), each replaced atomically."""
    os.makedirs(directory, exist_ok=True)

    def write_npz(f):
        with open(f, "wb") as out:
            np.savez(out, **records)

    def write_npy(f):
        with open(f, "wb") as out:
            np.save(out, pending)

    def write_json(f):
        with open(f, "w") as out:
            json.dump({"format_version": FORMAT_VERSION, **header}, out, indent=1)

    writes = {
        "index.faiss": lambda f: _faiss().write_index(faiss_index, f),
        "records.npz": write_npz,
        "pending.npy": write_npy,
        "index.json": write_json,  # last: see the module docstring
    }
    for name, write in writes.items():
        target = os.path.join(directory, name)
        write(target + ".tmp")
        os.replace(target + ".tmp", target)


def read_index_files(directory: str) -> Tuple[Dict, object, Dict[str, np.ndarray], np.ndarray]:
    """
    Read what :func:`write_index_files` wrote: (header, faiss index, records, pending (P, D)).
    A missing, corrupt or inconsistent file (feature size, counts), or another format version,
    fails with :class:`GalleryIndexError` naming the file.
    """
    for name in _REQUIRED:
        if not os.path.isfile(os.path.join(directory, name)):
            path = os.path.join(directory, name)
            raise GalleryIndexError(f"{path}: missing; not a gallery index")
    header_file = os.path.join(directory, "index.json")
    try:
        with open(header_file) as f:
            header = json.load(f)
        for key in ("dim", "count", "num_sources", "train_size"):
            header[key] = int(header[key])
        for key in ("factory", "search_params", "model"):
            header[key]
    except (ValueError, KeyError, TypeError) as e:
        raise GalleryIndexError(f"{header_file}: not a gallery index header ({e})") from e
    if header.get("format_version") != FORMAT_VERSION:
        raise GalleryIndexError(
            f"{header_file}: format_version {header.get('format_version')}, "
            f"expected {FORMAT_VERSION}"
        )
    try:
        faiss_index = _faiss().read_index(os.path.join(directory, "index.faiss"))
        with np.load(os.path.join(directory, "records.npz"), allow_pickle=False) as arrays:
            records = {k: arrays[k] for k in arrays.files}
        pending_file = os.path.join(directory, "pending.npy")
        pending = np.zeros((0, header["dim"]), np.float32)
        if os.path.isfile(pending_file):
            pending = np.load(pending_file, allow_pickle=False).astype(np.float32)
    except (RuntimeError, ValueError, OSError, KeyError) as e:
        raise GalleryIndexError(f"{directory}: corrupt gallery index ({e})") from e
    dim, count, num_sources = header["dim"], header["count"], header["num_sources"]
    expected = {k: num_sources for k in ("path", "frame", "time", "camera")}
    expected.update(source=count, box=count, det_score=count)
    sizes = {k: len(v) for k, v in records.items()}
    faiss_rows = faiss_index.ntotal + len(pending)
    if faiss_index.d != dim or sizes != expected or faiss_rows != count:
        raise GalleryIndexError(
            f"{directory}: inconsistent gallery index: header dim {dim}, {count} rows of "
            f"{num_sources} sources; faiss dim {faiss_index.d}, {faiss_rows} rows (with "
            f"pending); records {sizes}"
        )
    return header, faiss_index, records, pending
