# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
The few callables the lazy configs need that personsearch_kd does not yet offer with plain
keyword arguments (its yacs builders take a whole config): data loaders of person crops and of
query-gallery pairs, teachers built from their own (yacs) config and checkpoint, KD_det's hint
adapter, SGD with gradient clipping. Each reuses the package's own pieces and checks, so a lazy
config trains exactly what the yacs config trains.
"""

import torch
from torch import nn

from detectron2.config import CfgNode
from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts
from detectron2.data.samplers import TrainingSampler
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.utils import comm

from personsearch_kd.data.person_crops import IdentityBalancedSampler, person_crop_dicts
from personsearch_kd.data.query_pairs import QueryPairMapper, query_gallery_pairs
from personsearch_kd.distillation.teachers import TEACHER_REGISTRY


def image_train_loader(
    dataset, mapper, total_batch_size: int, aspect_ratio_grouping: bool, num_workers: int, seed
):
    """
    detectron2's train loader as the yacs Trainer builds it: its TrainingSampler is seeded with
    SEED (``seed``; the -1 of an unseeded config is a seed too, so the data order is fixed).
    """
    return build_detection_train_loader(
        dataset=dataset,
        mapper=mapper,
        sampler=TrainingSampler(len(dataset), seed=seed),
        total_batch_size=total_batch_size,
        aspect_ratio_grouping=aspect_ratio_grouping,
        num_workers=num_workers,
    )


def person_crop_train_loader(
    dataset_names, mapper, total_batch_size: int, instances_per_id: int, seed: int, num_workers
):
    """
    ``build_person_crop_train_loader`` with explicit arguments: the labeled persons of
    ``dataset_names`` cut by ``mapper`` (a PersonCropMapper) in identity-balanced P x K batches
    (K = ``instances_per_id``) of ``total_batch_size`` over all processes.
    """
    dicts = get_detection_dataset_dicts(dataset_names, filter_empty=False)
    crops = person_crop_dicts(dicts)
    if not crops:
        raise ValueError(f"dataset {dataset_names!r}: no labeled person to crop")
    sampler = IdentityBalancedSampler(
        [c["person_id"] for c in crops],
        total_batch_size // comm.get_world_size(),
        instances_per_id,
        seed,
    )
    return build_detection_train_loader(
        crops,
        mapper=mapper,
        sampler=sampler,
        total_batch_size=total_batch_size,
        aspect_ratio_grouping=False,
        num_workers=num_workers,
    )


class QueryPairs(QueryPairMapper):
    """:class:`QueryPairMapper` around a given image mapper (a PersonSearchDatasetMapper)."""

    def __init__(self, image_mapper):
        self.image_mapper = image_mapper


def query_pair_train_loader(dataset_names, image_mapper, total_batch_size: int, num_workers):
    """
    ``build_query_pair_train_loader`` with explicit arguments: every ordered pair of two images
    of one labeled person of ``dataset_names``, each image mapped by ``image_mapper``.
    """
    dicts = get_detection_dataset_dicts(dataset_names, filter_empty=False)
    pairs = [
        {"query": dicts[q], "gallery": dicts[g], "person_id": pid}
        for q, g, pid in query_gallery_pairs(dicts)
    ]
    if not pairs:
        raise ValueError(f"dataset {dataset_names!r}: no labeled person appears in two images")
    return build_detection_train_loader(
        pairs,
        mapper=QueryPairs(image_mapper),
        total_batch_size=total_batch_size,
        aspect_ratio_grouping=False,
        num_workers=num_workers,
    )


def _teacher(kind: str, name: str, config_file="", weights="", opts=(), student=None):
    """
    The registered teacher ``kind`` built exactly as MODEL.TEACHERS.<name> would be (its checks
    and error messages included), on the CPU: the Distiller moves teachers with the student.
    ``student``: the keys a LUT file is checked against.
    """
    cfg = CfgNode({"MODEL": CfgNode({"DEVICE": "cpu"})})
    if student is not None:
        cfg.MODEL.OIM = CfgNode(
            {"NUM_IDS": int(student["num_ids"]), "EMBED_DIM": int(student["embed_dim"])}
        )
        names = student["dataset_names"]
        cfg.DATASETS = CfgNode({"TRAIN": (names,) if isinstance(names, str) else tuple(names)})
    spec = CfgNode(
        {"KIND": kind, "CONFIG_FILE": config_file, "WEIGHTS": weights, "OPTS": list(opts)}
    )
    return TEACHER_REGISTRY.get(kind)(cfg, name, spec)


def detector_teacher(name: str, config_file: str, weights: str, opts=()):
    """A frozen DetectorTeacher (KD_det): its yacs ``config_file`` with ``opts``, ``weights``."""
    return _teacher("DetectorTeacher", name, config_file, weights, opts)


def crop_reid_teacher(name: str, config_file: str, weights: str, opts=()):
    """A frozen CropReIDTeacher (DKD, FD): its yacs ``config_file`` with ``opts``, ``weights``."""
    return _teacher("CropReIDTeacher", name, config_file, weights, opts)


def lut_file_teacher(name: str, weights: str, dataset_names, num_ids: int, embed_dim: int):
    """A LUTFileTeacher (KD_reid): the LUT file ``weights``, checked against the student's."""
    student = {"dataset_names": dataset_names, "num_ids": num_ids, "embed_dim": embed_dim}
    return _teacher("LUTFileTeacher", name, weights=weights, student=student)


def hint_adapter(in_channels: int, out_channels: int) -> nn.Module:
    """KD_det's 1x1 conv from the student's hint map to the teacher's, initialised as HintLoss."""
    adapter = nn.Conv2d(in_channels, out_channels, 1)
    nn.init.normal_(adapter.weight, std=0.01)
    nn.init.zeros_(adapter.bias)
    return adapter


def sgd(
    params, lr: float, momentum: float, weight_decay: float, nesterov=False, clip_gradients=None
):
    """
    detectron2's ``build_optimizer``: SGD (foreach), with SOLVER.CLIP_GRADIENTS's clipping when
    ``clip_gradients`` is a dict with ``enabled`` true (``clip_type`` "value" / "norm",
    ``clip_value``, ``norm_type``).
    """
    clip = dict(clip_gradients or {})
    node = CfgNode(
        {
            "ENABLED": bool(clip.get("enabled", False)),
            "CLIP_TYPE": clip.get("clip_type", "value"),
            "CLIP_VALUE": float(clip.get("clip_value", 1.0)),
            "NORM_TYPE": float(clip.get("norm_type", 2.0)),
        }
    )
    optimizer = torch.optim.SGD(
        params,
        lr=lr,
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=weight_decay,
        foreach=True,
    )
    return maybe_add_gradient_clipping(CfgNode({"SOLVER": {"CLIP_GRADIENTS": node}}), optimizer)


def qeeps(*, backbone, qsse_stages, qsse_reduction: int = 16, **kwargs):
    """
    :class:`QEEPS` whose QSSE blocks (``SiameseQSSE``) are sized from its own ``backbone``, in
    the stages ``qsse_stages`` with bottleneck ratio ``qsse_reduction`` (MODEL.QEEPS); ``kwargs``:
    the other arguments of QEEPS (those of PersonSearchRCNN, ``qrpn``, ``qsim_iou``).
    """
    from personsearch_kd.modeling.qeeps import QEEPS, SiameseQSSE

    qsse = SiameseQSSE(backbone, list(qsse_stages), qsse_reduction)
    return QEEPS(backbone=backbone, qsse=qsse, **kwargs)
