# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
A persistent gallery index: every detection of every gallery image (or video frame) with its
L2-normalised re-ID feature, box, detection score and source, searched by inner product (cosine)
with faiss. Pure numpy + faiss: no detectron2 import. Its files: :mod:`.index_files`.
"""

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .index_files import GalleryIndexError, _faiss, read_index_files, write_index_files, writes

__all__ = ["GalleryIndex", "GalleryIndexError"]

_SOURCE_FIELDS = ("path", "frame", "time", "camera")


class GalleryIndex:
    """
    Rows are detections; each belongs to one source (an image, or a frame of a video) whose path,
    frame index, time and camera are stored once.

    Args (constructor):
        dim: D, the re-ID feature size.
        model: what identifies the model that embeds gallery and queries (e.g.
            :func:`personsearch_kd.search.model_fingerprint`: config and checkpoint digests);
            queries of another model are refused.
        factory: a faiss ``index_factory`` string, used with the inner-product metric: "Flat"
            (exact, the default), "HNSW32" (graph), "IVF1024,Flat", "IVF1024,PQ32" (inverted
            lists, product-quantised codes), ...
        search_params: faiss ParameterSpace settings applied at search, e.g. "nprobe=32" (IVF)
            or "efSearch=128" (HNSW); "" for faiss's defaults.
        train_size: for index types that need training (IVF, PQ): rows buffered before the index
            is trained on them; until then those rows are searched exactly.

    ``recall_check``: what :func:`.recall_check.check_recall` measured and chose, or None
    (exact, or unchecked). ``load(..., read_only=True)``: every change raises GalleryIndexError.
    """

    def __init__(
        self,
        dim: int,
        model: Dict[str, str],
        factory: str = "Flat",
        search_params: str = "",
        train_size: int = 100_000,
    ):
        faiss = _faiss()
        self.dim = int(dim)
        self.model = dict(model)
        self.factory = factory
        self.search_params = ""
        self.train_size = int(train_size)
        self.index = faiss.index_factory(self.dim, factory, faiss.METRIC_INNER_PRODUCT)
        self.on_gpus, self.read_only = False, False
        self.recall_check: Optional[Dict] = None
        self._exact_segments: List[Tuple[int, np.ndarray]] = []  # merge()'s, for check_recall
        self._apply_search_params(search_params)
        self._pending_parts: List[np.ndarray] = []  # chunks: buffering stays linear in rows
        self._num_pending = 0
        self._sources: Dict[str, list] = {k: [] for k in _SOURCE_FIELDS}
        self._source_ids: Dict[Tuple[str, int], int] = {}
        self._rows: Dict[str, List[np.ndarray]] = {"source": [], "box": [], "det_score": []}
        self._cache: Optional[Dict[str, np.ndarray]] = None

    def __len__(self) -> int:
        return self.index.ntotal + self._num_pending

    @property
    def num_sources(self) -> int:
        return len(self._sources["path"])

    def add(
        self,
        features: np.ndarray,
        boxes: np.ndarray,
        det_scores: np.ndarray,
        path: str,
        frame: int = -1,
        time: float = math.nan,
        camera: str = "",
    ) -> None:
        """
        Add the detections of one gallery image or video frame (none is fine: the source is
        still recorded as finished).

        Args:
            features: (N, D) L2-normalised re-ID features.
            boxes: (N, 4) XYXY boxes in the source's pixels.
            det_scores: (N,) detection scores.
            path: the image file, or the video file.
            frame, time: the frame index and its time in seconds in a video (-1, NaN for images).
            camera: the camera id, "" when unknown.
        """
        self.add_sources(features, boxes, det_scores, [len(features)], [path], [frame], [time],
                         [camera])  # fmt: skip

    @writes
    def add_sources(
        self,
        features: np.ndarray,
        boxes: np.ndarray,
        det_scores: np.ndarray,
        counts: Sequence[int],
        paths: Sequence[str],
        frames: Optional[Sequence[int]] = None,
        times: Optional[Sequence[float]] = None,
        cameras: Optional[Sequence[str]] = None,
    ) -> None:
        """
        :meth:`add` for many sources at once (one faiss call: merging shards, bulk imports).
        The N rows are grouped by source in order, ``counts[i]`` of them for ``paths[i]``;
        ``frames``, ``times``, ``cameras`` default to -1, NaN and "" per source.
        """
        features = np.ascontiguousarray(features, np.float32).reshape(-1, self.dim)
        n, num = len(features), len(paths)
        frames = [-1] * num if frames is None else [int(f) for f in frames]
        times = [math.nan] * num if times is None else [float(t) for t in times]
        cameras = [""] * num if cameras is None else [str(c) for c in cameras]
        counts = np.asarray(counts, np.int64)
        if not len(counts) == len(frames) == len(times) == len(cameras) == num:
            raise ValueError(f"counts, paths, frames, times, cameras: expected {num} of each")
        if counts.sum() != n:
            raise ValueError(f"counts sum to {counts.sum()} rows, but {n} features were given")
        if n and not np.allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-3):
            raise ValueError(f"{paths[0]}...: gallery features must be L2-normalised")
        keys = [(str(p), f) for p, f in zip(paths, frames)]
        for path, frame in keys:
            if self.has_source(path, frame):
                raise ValueError(f"{path} (frame {frame}) is already in the index")
        if len(set(keys)) != num:
            raise ValueError("a source is given twice")
        first = self.num_sources
        self._source_ids.update({key: first + i for i, key in enumerate(keys)})
        for field, values in zip(_SOURCE_FIELDS, ([k[0] for k in keys], frames, times, cameras)):
            self._sources[field].extend(values)
        self._rows["source"].append(np.repeat(np.arange(first, first + num), counts))
        self._rows["box"].append(np.asarray(boxes, np.float32).reshape(n, 4))
        self._rows["det_score"].append(np.asarray(det_scores, np.float32).reshape(n))
        self._cache = None
        self._add_features(features)

    def _add_features(self, features: np.ndarray) -> None:
        if self.index.is_trained and not self._num_pending:
            self.index.add(features)
            return
        self._pending_parts.append(features)
        self._num_pending += len(features)
        if self._num_pending >= self.train_size:
            self.train()

    @writes
    def train(self) -> None:
        """
        Train the index on the buffered rows now, however many (add() does it on reaching
        ``train_size``); they move from exact search to the index. An IVF index needs at least
        as many rows as lists.
        """
        pending = self._pending
        if len(pending):
            self.index.train(pending)
            self.index.add(pending)
        self._pending_parts, self._num_pending = [], 0

    @property
    def _pending(self) -> np.ndarray:
        """(P, D): the rows buffered until the index is trained (searched exactly meanwhile)."""
        if not self._num_pending:
            return np.zeros((0, self.dim), np.float32)
        if len(self._pending_parts) > 1:
            self._pending_parts = [np.concatenate(self._pending_parts)]
        return self._pending_parts[0]

    @writes
    def merge(self, other: "GalleryIndex") -> None:
        """
        Add every source of ``other`` (an exact "Flat" index of the same model, e.g. one
        process's shard) that this index lacks, in ``other``'s order.
        """
        if other.model != self.model or other.dim != self.dim:
            raise GalleryIndexError(
                f"cannot merge an index of model {other.model} (dim {other.dim}) into one of "
                f"{self.model} (dim {self.dim})"
            )
        if other.factory != "Flat":
            raise GalleryIndexError(
                f"merge reads exact features: expected a Flat index, got {other.factory}"
            )
        records = other.arrays()
        missing = [
            source
            for source, (path, frame) in enumerate(zip(records["path"], records["frame"]))
            if not self.has_source(str(path), int(frame))
        ]
        rows, first = np.isin(records["source"], missing), len(self)
        features = other.features()[rows]
        self.add_sources(
            features,
            records["box"][rows],
            records["det_score"][rows],
            np.bincount(records["source"], minlength=other.num_sources)[missing],
            *(records[k][missing].tolist() for k in _SOURCE_FIELDS),
        )
        if self.factory != "Flat" and len(features):  # exact: for check_recall, which frees them
            self._exact_segments.append((first, features))

    def features(self, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
        """The features of rows [start, stop), read back exactly (a Flat index only)."""
        if self.factory != "Flat":
            raise GalleryIndexError(f"features are read back from a Flat index, not {self.factory}")
        stop = len(self) if stop is None else stop
        in_faiss = max(0, min(stop, self.index.ntotal) - start)
        pending = self._pending[max(start - self.index.ntotal, 0) : stop - self.index.ntotal]
        return np.concatenate([self.index.reconstruct_n(start, in_faiss), pending])

    def source_rows(self, path: str, frame: int = -1) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """
        The detections of one source, in the order they were added: features (N, D), boxes
        (N, 4), detection scores (N,). Features are read back exactly from a Flat index only.
        """
        source, records = self._source_ids[(path, int(frame))], self.arrays()
        # add() appends each source's rows after the last's: the row->source array is sorted.
        start, stop = np.searchsorted(records["source"], [source, source + 1]).tolist()
        return (
            self.features(start, stop),
            records["box"][start:stop],
            records["det_score"][start:stop],
        )

    def has_source(self, path: str, frame: int = -1) -> bool:
        """Whether this image or frame is already in the index (to resume an indexing)."""
        return (path, int(frame)) in self._source_ids

    def arrays(self) -> Dict[str, np.ndarray]:
        """
        The metadata as arrays: per source ``path``, ``frame``, ``time``, ``camera``; per row
        ``source`` (its source's index), ``box`` (4,), ``det_score``.
        """
        if self._cache is None:
            self._cache = {
                "path": np.array(self._sources["path"], dtype=str),
                "frame": np.array(self._sources["frame"], dtype=np.int64),
                "time": np.array(self._sources["time"], dtype=np.float64),
                "camera": np.array(self._sources["camera"], dtype=str),
            }
            empty = {
                "source": np.zeros(0, np.int64),
                "box": np.zeros((0, 4), np.float32),
                "det_score": np.zeros(0, np.float32),
            }
            for key, parts in self._rows.items():
                self._cache[key] = np.concatenate(parts) if parts else empty[key]
            self._rows = {k: [v] for k, v in self._cache.items() if k in self._rows}
        return self._cache

    @writes
    def set_search_params(self, search_params: str) -> None:
        """
        Set faiss search parameters for the searches that follow (once, not per query), e.g.
        "nprobe=64" or "efSearch=128"; "" keeps the current ones.
        """
        self._apply_search_params(search_params)

    def _apply_search_params(self, search_params: str) -> None:
        if search_params:
            faiss = _faiss()
            space = faiss.GpuParameterSpace() if self.on_gpus else faiss.ParameterSpace()
            try:
                space.set_index_parameters(self.index, search_params)
            except RuntimeError as e:
                raise GalleryIndexError(
                    f"search parameters {search_params!r} do not apply to a {self.factory} "
                    f"index ({str(e).rsplit(':', 1)[-1].strip()})"
                ) from e
        self.search_params = search_params or self.search_params

    def _raw_search(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """(Q, k) similarities and row ids, best first (-1 where fewer than k rows)."""
        sims = np.full((len(queries), k), -np.inf, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        if self.index.ntotal:
            found_sims, found_ids = self.index.search(queries, min(k, self.index.ntotal))
            sims[:, : found_sims.shape[1]], ids[:, : found_ids.shape[1]] = found_sims, found_ids
        if self._num_pending:  # not trained yet: the buffered rows, exactly
            pending_sims = queries @ self._pending.T
            pending_ids = np.arange(len(self._pending)) + self.index.ntotal
            all_sims = np.concatenate([sims, pending_sims], axis=1)
            all_ids = np.concatenate([ids, np.broadcast_to(pending_ids, pending_sims.shape)], 1)
            order = np.argsort(-all_sims, axis=1, kind="stable")[:, :k]
            sims = np.take_along_axis(all_sims, order, 1)
            ids = np.take_along_axis(all_ids, order, 1)
        ids[~np.isfinite(sims)] = -1
        return sims, ids

    def search(
        self,
        queries: np.ndarray,
        model: Dict[str, str],
        topk: int = 10,
        per_image: bool = True,
        cameras: Optional[Sequence[str]] = None,
        time_range: Optional[Tuple[float, float]] = None,
        paths: Optional[Sequence[str]] = None,
    ) -> List[List[Dict]]:
        """
        Args:
            queries: (Q, D) or (D,) L2-normalised query features.
            model: the fingerprint of the model that embedded them; another model's is refused.
            topk: matches per query.
            per_image: at most one match per image or frame (its most similar detection).
            cameras, time_range, paths: keep only matches of these cameras, of times in
                [start, end] seconds, of these source files.
        Returns:
            per query, up to ``topk`` dicts {"score" (cosine), "path", "frame", "time",
            "camera", "box", "det_score", "row"}, most similar first.
        """
        if dict(model) != self.model:
            raise GalleryIndexError(
                f"the queries were embedded by model {model}, the index by {self.model}: embed "
                "them with the model the index was built with"
            )
        queries = np.ascontiguousarray(queries, np.float32).reshape(-1, self.dim)
        records = self.arrays()
        keep = np.ones(self.num_sources, bool)
        if cameras is not None:
            keep &= np.isin(records["camera"], list(cameras))
        if time_range is not None:
            keep &= (records["time"] >= time_range[0]) & (records["time"] <= time_range[1])
        if paths is not None:
            keep &= np.isin(records["path"], list(paths))
        results = []
        for query in queries:
            # Fetch more than topk until enough rows survive the filters and de-duplication.
            k, matches = min(len(self), max(4 * topk, 32)), []
            while k > 0:
                sims, ids = self._raw_search(query[None], k)
                matches = self._matches(sims[0], ids[0], keep, records, per_image, topk)
                if len(matches) >= topk or k >= len(self):
                    break
                k = min(len(self), 4 * k)
            results.append(matches)
        return results

    @staticmethod
    def _matches(sims, ids, keep, records, per_image: bool, topk: int) -> List[Dict]:
        matches, seen = [], set()
        for sim, row in zip(sims.tolist(), ids.tolist()):
            if row < 0:
                continue
            source = int(records["source"][row])
            if not keep[source] or (per_image and source in seen):
                continue
            seen.add(source)
            matches.append(
                {
                    "score": sim,
                    "path": str(records["path"][source]),
                    "frame": int(records["frame"][source]),
                    "time": float(records["time"][source]),
                    "camera": str(records["camera"][source]),
                    "box": records["box"][row].tolist(),
                    "det_score": float(records["det_score"][row]),
                    "row": row,
                }
            )
            if len(matches) == topk:
                break
        return matches

    @writes
    def save(self, directory: str) -> None:
        """Write the index to ``directory`` (created); each file is replaced atomically."""
        header = {
            "dim": self.dim,
            "count": len(self),
            "num_sources": self.num_sources,
            "factory": self.factory,
            "search_params": self.search_params,
            "train_size": self.train_size,
            "model": self.model,
            "recall_check": self.recall_check,
        }
        faiss_index = _faiss().index_gpu_to_cpu(self.index) if self.on_gpus else self.index
        write_index_files(directory, header, faiss_index, self.arrays(), self._pending)

    def to_gpus(self) -> bool:
        """
        Move the faiss index onto every GPU (faiss's GPU build; Flat and IVF types) for the adds
        and searches that follow; save() still writes a CPU index. False, and the index stays
        on the CPU, where faiss has no GPU or the index type has no GPU version (HNSW).
        """
        faiss = _faiss()
        if self.on_gpus or not hasattr(faiss, "index_cpu_to_all_gpus") or not faiss.get_num_gpus():
            return self.on_gpus
        try:
            self.index = faiss.index_cpu_to_all_gpus(self.index)
        except RuntimeError:  # no GPU version of this index type
            return False
        self.on_gpus = True
        self._apply_search_params(self.search_params)  # GPU indexes take their own parameters
        return True

    @classmethod
    def load(cls, directory: str, model: Optional[Dict] = None, read_only=False) -> "GalleryIndex":
        """
        Read an index written by :meth:`save`. ``model``, when given, must be the index's model.
        ``read_only``: refuse every change (e.g. a server's shared index). Fails with
        :class:`GalleryIndexError` naming the file on a missing, corrupt or mismatched part.
        """
        header, faiss_index, records, pending = read_index_files(directory)
        if model is not None and dict(model) != header["model"]:
            raise GalleryIndexError(
                f"{directory}: built with model {header['model']}, not the given {model}"
            )
        index = cls(
            header["dim"], header["model"], header["factory"], train_size=header["train_size"]
        )
        index.index = faiss_index
        try:
            index._apply_search_params(header["search_params"])
        except GalleryIndexError as e:
            raise GalleryIndexError(f"{directory}/index.json: {e}") from e
        index._pending_parts, index._num_pending = [pending], len(pending)
        for key in _SOURCE_FIELDS:
            index._sources[key] = records[key].tolist()
        index._source_ids = {
            (str(p), int(f)): i for i, (p, f) in enumerate(zip(records["path"], records["frame"]))
        }
        index._rows = {k: [records[k]] for k in ("source", "box", "det_score")}
        index.recall_check, index.read_only = header.get("recall_check"), bool(read_only)
        return index
