# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
The two ways of getting a teacher's identity table for KD_reid (Munjal et al., BMVC 2019): copy
the LUT buffer of an OIM-family checkpoint (section 4.2), or compute it from any teacher's
features on the labeled training boxes (section 6); and the control without a teacher, a seeded
random table. ``tools/export_lut.py`` is the command line of :func:`export_lut`.
"""

import logging
from typing import Dict, List, Optional, Tuple

import torch

from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.evaluation import inference_context
from detectron2.structures import BoxMode
from detectron2.utils import comm

from ..data import PersonSearchDatasetMapper
from ..layers.lut_file import identity_means, random_lut, save_lut_file
from .trained_model import build_trained_student

__all__ = [
    "LUT_METHODS",
    "OIM_LUT_KEY",
    "export_lut",
    "labeled_box_queries",
    "lut_from_checkpoint",
    "teacher_box_features",
]

# Where OIMROIHeads keeps its table in a checkpoint's "model" state dict.
OIM_LUT_KEY = "roi_heads.oim_loss.lut"
# The "method" of a LUT file: how its table was made.
LUT_METHODS = ("from_checkpoint", "compute", "random")

logger = logging.getLogger(__name__)


def lut_from_checkpoint(path: str, key: str = OIM_LUT_KEY) -> torch.Tensor:
    """
    Args:
        path: a checkpoint written by detectron2's Checkpointer (a dict with ``"model"``) or a
            bare state dict.
        key: the LUT buffer's name in the state dict.

    Returns:
        (P, D) float tensor, the teacher's LUT (row r = dataset person id r).
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else {}
    if key not in state:
        candidates = sorted(k for k in state if k.endswith("lut"))
        raise KeyError(
            f"checkpoint {path!r} has no LUT buffer {key!r}; its keys ending in 'lut': "
            f"{candidates} (choose one with --lut-key, or use --compute for a teacher without LUT)"
        )
    lut = torch.as_tensor(state[key]).float()
    if lut.dim() != 2:
        raise ValueError(f"checkpoint {path!r}: {key!r} has shape {tuple(lut.shape)}, not (P, D)")
    empty = (lut.norm(dim=1) < 0.5).nonzero().flatten().tolist()
    if empty:
        # OIM rows start at zero and are written when the identity is first seen in training.
        logger.warning(
            f"{path}: {len(empty)} of {len(lut)} LUT rows were never trained (person ids "
            f"{empty[:10]}); a KD_reid student learns nothing from them"
        )
    return lut


def labeled_box_queries(dataset_dicts: List[Dict]) -> List[Dict]:
    """
    Turn training images into query-mode inputs of :class:`PersonSearchRCNN`.

    Args:
        dataset_dicts: detectron2 dataset dicts whose annotations carry ``person_id``.

    Returns:
        one dict per image with at least one labeled person: the image fields, ``query_boxes``
        (K, 4) XYXY_ABS boxes of its labeled persons and ``query_pids`` (K,) their ids.
    """
    queries = []
    for record in dataset_dicts:
        boxes, pids = [], []
        for i, anno in enumerate(record.get("annotations", [])):
            pid = anno.get("person_id")
            if not isinstance(pid, int):
                raise ValueError(
                    f"{record.get('file_name')}: annotation {i} has person_id={pid!r}; expected "
                    "an int (-1 = unlabeled)"
                )
            if pid >= 0:
                boxes.append(BoxMode.convert(anno["bbox"], anno["bbox_mode"], BoxMode.XYXY_ABS))
                pids.append(pid)
        if boxes:
            query = {k: v for k, v in record.items() if k != "annotations"}
            query.update(query_boxes=boxes, query_pids=pids)
            queries.append(query)
    return queries


def teacher_box_features(
    model: torch.nn.Module, queries: List[Dict], cfg, num_workers: int = 0
) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """
    Embed every query box with the teacher in query mode. Under ``launch`` the images are shared
    out by detectron2's inference sampler and the features gathered on the main process.

    Args:
        model: a teacher with the query mode of :class:`PersonSearchRCNN` (inputs with
            ``query_boxes`` -> instances with ``reid_feats``).
        queries: from :func:`labeled_box_queries`.
        cfg: the teacher's config (input sizes for the test-time resize).

    Returns:
        on the main process (N, D) features and (N,) person ids of all boxes; None elsewhere.
    """
    loader = build_detection_test_loader(
        queries, mapper=PersonSearchDatasetMapper(cfg, is_train=False), num_workers=num_workers
    )
    feats, pids = [], []
    with inference_context(model), torch.no_grad():
        for inputs in loader:
            for inp, out in zip(inputs, model(inputs)):
                reid_feats = out["instances"].reid_feats
                if len(reid_feats) != len(inp["query_pids"]):
                    raise RuntimeError(
                        f"{inp['file_name']}: the teacher returned {len(reid_feats)} features "
                        f"for {len(inp['query_pids'])} query boxes"
                    )
                feats.append(reid_feats.cpu())
                pids.append(torch.as_tensor(inp["query_pids"], dtype=torch.long))
    gathered = comm.gather((feats, pids), dst=0)
    if not comm.is_main_process():
        return None
    feats = [f for rank_feats, _ in gathered for f in rank_feats]
    pids = [p for _, rank_pids in gathered for p in rank_pids]
    return torch.cat(feats), torch.cat(pids)


def export_lut(
    cfg,
    output: str,
    method: str,
    seed: int = 0,
    datasets: Optional[List[str]] = None,
    lut_key: str = OIM_LUT_KEY,
) -> None:
    """
    Write the LUT file (personsearch_kd/layers/lut_file.py) of the teacher ``cfg`` with its
    checkpoint in MODEL.WEIGHTS, on the main process; run it in every process of a launch
    ("compute" shares the images among them).

    Args:
        method: "from_checkpoint" (copy the checkpoint's ``lut_key`` buffer), "compute" (the
            mean feature of each labeled identity of ``datasets``, default DATASETS.TRAIN) or
            "random" (``seed``'s unit rows of MODEL.OIM.NUM_IDS x EMBED_DIM, no teacher).
    """
    weights = cfg.MODEL.WEIGHTS
    if method == "compute":
        dataset = list(datasets or cfg.DATASETS.TRAIN)
        queries = labeled_box_queries([d for name in dataset for d in DatasetCatalog.get(name)])
        # A distilled teacher needs no teacher of its own.
        model = build_trained_student(cfg, weights)
        result = teacher_box_features(model, queries, cfg, cfg.DATALOADER.NUM_WORKERS)
        if result is None:  # not the main process
            return
        feats, pids = result
        # One row per labeled identity of the training sets, in id order: the student's OIM
        # uses the person id as its LUT row.
        person_ids = sorted({pid for q in queries for pid in q["query_pids"]})
        lut = identity_means(feats, pids, person_ids)
        logger.info(f"Embedded {len(pids)} labeled boxes of {len(person_ids)} identities")
    else:
        if method == "from_checkpoint":
            lut = lut_from_checkpoint(weights, lut_key)
        else:
            lut = random_lut(cfg.MODEL.OIM.NUM_IDS, cfg.MODEL.OIM.EMBED_DIM, seed)
        # One row per id the student's OIM can see, in id order, as a checkpoint's LUT.
        dataset, person_ids = list(cfg.DATASETS.TRAIN), range(len(lut))
    if comm.is_main_process():
        source = weights or f"seed {seed}"
        save_lut_file(output, lut, dataset, person_ids, method, cfg.dump(), source)
        logger.info(f"Wrote {output}: {tuple(lut.shape)} LUT of {dataset} ({method}, {source})")
