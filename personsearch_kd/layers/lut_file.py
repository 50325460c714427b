# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
The teacher lookup-table file of KD_reid (Munjal et al., BMVC 2019, section 4.2): a teacher's
identity features that a student copies into its OIM LUT and keeps fixed.

A LUT file is ``torch.save`` of a dict:

- ``"lut"``: float tensor [num_ids, dim], L2-normalised rows;
- ``"dim"``: int, the feature width (= ``lut.shape[1]``);
- ``"dataset"``: list of str, the registered training sets the rows belong to (DATASETS.TRAIN);
- ``"id_map"``: dict {dataset person id (int): row (int)}, one entry per row;
- ``"method"``: ``"from_checkpoint"`` (the LUT buffer of an OIM-family checkpoint),
  ``"compute"`` (per-identity mean of a teacher's features on the labeled training boxes) or
  ``"random"`` (seeded random unit rows: a fixed table that holds no teacher's knowledge, the
  control for what fixing a table does by itself);
- ``"teacher_config"`` (the teacher's config as YAML text) and ``"teacher_weights"`` (its
  checkpoint path; ``"seed N"`` for a random table): where the table came from;
- ``"version"``: 1.

Pure torch: no detectron2 import.
"""

from typing import Dict, Iterable, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "LUT_METHODS",
    "save_lut_file",
    "load_lut_file",
    "check_lut_file",
    "identity_means",
    "random_lut",
    "lut_structure",
    "lut_agreement",
]

LUT_METHODS = ("from_checkpoint", "compute", "random")
_VERSION = 1
_KEYS = ("lut", "dim", "dataset", "id_map", "method", "teacher_config", "teacher_weights")


def save_lut_file(
    path: str,
    lut: torch.Tensor,
    dataset: Sequence[str],
    person_ids: Sequence[int],
    method: str,
    teacher_config: str,
    teacher_weights: str,
) -> Dict:
    """
    Args:
        lut: (num_ids, dim) teacher features.
        dataset: names of the training sets.
        person_ids: (num_ids,) the dataset person id held by each row.
        method, teacher_config, teacher_weights: see the module docstring.

    Returns:
        the dict written to ``path``.
    """
    if method not in LUT_METHODS:
        raise ValueError(f"save_lut_file: method must be one of {LUT_METHODS}, got {method!r}")
    if lut.dim() != 2 or len(person_ids) != lut.shape[0]:
        raise ValueError(
            f"save_lut_file: expected a [num_ids, dim] LUT and one person id per row, got "
            f"{tuple(lut.shape)} and {len(person_ids)} ids"
        )
    content = {
        "lut": lut.detach().float().cpu(),
        "dim": int(lut.shape[1]),
        "dataset": list(dataset),
        "id_map": {int(pid): row for row, pid in enumerate(person_ids)},
        "method": method,
        "teacher_config": teacher_config,
        "teacher_weights": teacher_weights,
        "version": _VERSION,
    }
    torch.save(content, path)
    return content


def load_lut_file(path: str) -> Dict:
    """Read and validate a LUT file; errors name the file and the key."""
    try:
        content = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"LUT file {path!r} does not exist") from None
    if not isinstance(content, dict):
        raise ValueError(
            f"LUT file {path!r}: expected a dict written by tools/export_lut.py, got "
            f"{type(content).__name__}"
        )
    missing = [key for key in _KEYS if key not in content]
    if missing:
        raise ValueError(
            f"LUT file {path!r}: missing keys {missing} (has {sorted(content)}); write it with "
            "tools/export_lut.py"
        )
    lut = content["lut"]
    if not isinstance(lut, torch.Tensor) or lut.dim() != 2 or lut.shape[1] != content["dim"]:
        raise ValueError(
            f"LUT file {path!r}: 'lut' must be a [num_ids, dim={content['dim']}] tensor, got "
            f"{tuple(lut.shape) if isinstance(lut, torch.Tensor) else type(lut).__name__}"
        )
    if sorted(content["id_map"].values()) != list(range(lut.shape[0])):
        raise ValueError(
            f"LUT file {path!r}: 'id_map' must give each of the {lut.shape[0]} rows exactly one "
            "person id"
        )
    if content["method"] not in LUT_METHODS:
        raise ValueError(f"LUT file {path!r}: 'method' must be one of {LUT_METHODS}")
    return dict(content, lut=lut.float())


def check_lut_file(
    content: Dict, path: str, dataset: Sequence[str], person_ids: Iterable[int], dim: int
) -> None:
    """
    Check a loaded LUT file against a student: the same training sets, the same feature width,
    and row ``r`` of the student's LUT holding the same dataset person id as row ``r`` of the file
    (``person_ids`` lists the student's id of each row). Raises ValueError naming each difference.
    """
    problems = []
    if list(content["dataset"]) != list(dataset):
        problems.append(
            f"dataset: the file's rows are identities of {list(content['dataset'])}, the student "
            f"trains on {list(dataset)} (DATASETS.TRAIN)"
        )
    if content["dim"] != dim:
        problems.append(f"dim: the file has {content['dim']}, MODEL.OIM.EMBED_DIM is {dim}")
    student = {int(pid): row for row, pid in enumerate(person_ids)}
    if content["id_map"] != student:
        only_file = sorted(set(content["id_map"]) - set(student))
        only_student = sorted(set(student) - set(content["id_map"]))
        moved = sorted(
            pid
            for pid in set(student) & set(content["id_map"])
            if student[pid] != content["id_map"][pid]
        )
        problems.append(
            f"ids: {len(content['id_map'])} rows in the file, {len(student)} in the student "
            f"(MODEL.OIM.NUM_IDS); person ids only in the file {only_file[:5]}, only in the "
            f"student {only_student[:5]}, in other rows {moved[:5]}"
        )
    if problems:
        raise ValueError(f"LUT file {path!r} does not fit this student: " + "; ".join(problems))


def identity_means(feats: torch.Tensor, pids: torch.Tensor, person_ids: Sequence[int]):
    """
    The ``--compute`` LUT: for each identity, the mean of its L2-normalised features, re-normalised.

    Args:
        feats: (N, D) features of labeled boxes.
        pids: (N,) their person ids.
        person_ids: (P,) the id of each output row.

    Returns:
        (P, D) tensor; raises ValueError naming the ids that have no feature.
    """
    feats = F.normalize(feats.float(), dim=1)
    rows = {int(pid): row for row, pid in enumerate(person_ids)}
    sums = torch.zeros(len(rows), feats.shape[1])
    counts = torch.zeros(len(rows))
    index = torch.tensor([rows[int(p)] for p in pids], dtype=torch.long)
    sums.index_add_(0, index, feats)
    counts.index_add_(0, index, torch.ones(len(index)))
    empty = [pid for pid, row in rows.items() if counts[row] == 0]
    if empty:
        raise ValueError(f"identity_means: no labeled box of person ids {empty[:10]}")
    return F.normalize(sums / counts[:, None], dim=1)


def random_lut(num_ids: int, dim: int, seed: int) -> torch.Tensor:
    """
    The ``--random`` LUT: (num_ids, dim) rows drawn from a standard normal (its own generator,
    seeded) and L2-normalised, so near-orthogonal for a large ``dim``: fixed identity targets
    that carry no knowledge of the persons.
    """
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(num_ids, dim, generator=generator), dim=1)


def _off_diagonal_cosines(lut: torch.Tensor) -> torch.Tensor:
    """(K(K-1),) cosines between distinct rows of a (K, D) table (each pair twice)."""
    unit = F.normalize(lut.float(), dim=1)
    return (unit @ unit.T)[~torch.eye(len(unit), dtype=torch.bool)]


def lut_structure(lut: torch.Tensor) -> Dict[str, float]:
    """
    How much identity structure a (K, D) table holds: the mean, std and max of the cosines
    between its distinct rows (near 0, 1/sqrt(D) and a few 1/sqrt(D) for a random table; a max
    near 1 means two identities share a row). Needs K >= 2.
    """
    cosines = _off_diagonal_cosines(lut)
    return {"mean": float(cosines.mean()), "std": float(cosines.std()), "max": float(cosines.max())}


def lut_agreement(a: Dict, b: Dict) -> Dict[str, float]:
    """
    How far two loaded LUT files agree on the person ids they share, e.g. a KD_reid student's own
    identity means (``export_lut --compute`` on the student's checkpoint) against the table it was
    taught: did the table's identity layout reach the student's features?

    Returns a dict:
        ``"ids"``: K, the number of shared person ids (rows matched by ``id_map``, not by row);
        ``"row_cosine"``: the mean over those ids of the cosine between a's and b's row of the
        same person. Meaningful only when both tables live in one feature space (a student and
        the table it was trained against); two separately trained networks give about 0;
        ``"structure_correlation"``: the Pearson correlation of the two tables' cosines between
        distinct shared identities: whether both hold the same identities close, in any feature
        space (unchanged by a rotation of either).

    Raises ValueError if the feature widths differ or fewer than 3 ids are shared.
    """
    shared = sorted(set(a["id_map"]) & set(b["id_map"]))
    if a["dim"] != b["dim"] or len(shared) < 3:
        raise ValueError(
            f"lut_agreement: expected tables of one width sharing at least 3 person ids, got "
            f"dims {a['dim']} and {b['dim']} and {len(shared)} shared ids"
        )
    rows_a = F.normalize(a["lut"][[a["id_map"][pid] for pid in shared]].float(), dim=1)
    rows_b = F.normalize(b["lut"][[b["id_map"][pid] for pid in shared]].float(), dim=1)
    structure = torch.corrcoef(
        torch.stack([_off_diagonal_cosines(rows_a), _off_diagonal_cosines(rows_b)])
    )[0, 1]
    return {
        "ids": len(shared),
        "row_cosine": float((rows_a * rows_b).sum(1).mean()),
        "structure_correlation": float(structure),
    }
