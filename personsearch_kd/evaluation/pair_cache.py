# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
The saved pair results of a long pair evaluation (O(queries x gallery) passes, hours on a CPU):
a stopped or crashed evaluation resumes where it stopped instead of starting again.
"""

import glob
import hashlib
import os
import time
from typing import Dict, Tuple

import torch

from detectron2.utils import comm

from ..search import model_fingerprint

__all__ = ["PairCache", "pair_cache_key"]

Pair = Tuple[int, int]  # (query index, gallery image id)


def pair_cache_key(cfg, weights: str, batch_size: int) -> Dict[str, str]:
    """
    What decides a pair's results: the digest of the whole config (its detection settings
    included; without MODEL.WEIGHTS and MODEL.DEVICE), of the weights file's bytes, and the pairs
    per pass (a batch's images are padded to a common size).
    """
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = weights
    weights_sha1 = model_fingerprint(cfg)["weights_sha1"]
    cfg.MODEL.WEIGHTS, cfg.MODEL.DEVICE = "", ""
    return {
        "config_sha1": hashlib.sha1(cfg.dump().encode()).hexdigest(),
        "weights_sha1": weights_sha1,
        "batch_size": str(batch_size),
    }


class PairCache:
    """
    Pair results saved while a pair evaluation runs. Each process writes its own file,
    ``<directory>/<dataset>.rank<R>.pth``, atomically (a temporary file renamed over it) at most
    every ``interval`` seconds and when asked to flush; every process reads all of a dataset's
    files, so a resumed evaluation may use another number of processes. A file made with another
    key (:func:`pair_cache_key`) is refused with an error naming it; nothing is reused silently.
    The files are pickles: load only caches you made.
    """

    def __init__(self, directory: str, dataset_name: str, key: Dict[str, str],
                 interval: float = 60.0):  # fmt: skip
        self.directory, self.dataset_name, self.key = directory, dataset_name, dict(key)
        self.path = os.path.join(directory, f"{dataset_name}.rank{comm.get_rank()}.pth")
        self.interval = interval
        self.own: Dict[Pair, Dict] = {}  # what this process's file holds and will hold
        self._saved_at = time.monotonic()

    def load(self) -> Dict[Pair, Dict]:
        """(query index, image id) -> results, from every process's file of this dataset."""
        found = {}
        pattern = os.path.join(self.directory, f"{self.dataset_name}.rank*.pth")
        for path in sorted(glob.glob(pattern)):
            saved = torch.load(path, weights_only=False)
            if saved.get("dataset") != self.dataset_name or saved.get("key") != self.key:
                differ = sorted(k for k in self.key if saved.get("key", {}).get(k) != self.key[k])
                raise ValueError(
                    f"{path}: pair results of another evaluation (differs in "
                    f"{differ or ['dataset']}); use another cache directory or delete it"
                )
            found.update(saved["pairs"])
            if path == self.path:
                self.own = dict(saved["pairs"])
        return found

    def add(self, found: Dict[Pair, Dict], flush: bool = False) -> None:
        """Keeps ``found``; writes the file if ``interval`` has passed since the last write."""
        self.own.update(found)
        if flush or time.monotonic() - self._saved_at >= self.interval:
            os.makedirs(self.directory, exist_ok=True)
            temporary = f"{self.path}.tmp{os.getpid()}"
            saved = {"dataset": self.dataset_name, "key": self.key, "pairs": self.own}
            torch.save(saved, temporary)
            os.replace(temporary, self.path)  # a process killed mid-write leaves the old file
            self._saved_at = time.monotonic()
