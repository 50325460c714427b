# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Training data of re-ID networks on person crops (the DKD teacher): one sample per labeled
ground-truth box of a person-search training set, identity-balanced P x K batches, and a mapper
that cuts the crop with ISA jitter, flips it and erases a random rectangle.
"""

from typing import Dict, Iterator, List

import numpy as np
import torch
from torch.utils.data.sampler import Sampler
from torchvision.transforms import RandomErasing

from detectron2.config import configurable
from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts
from detectron2.data import detection_utils as utils
from detectron2.structures import BoxMode
from detectron2.utils import comm

from ..layers.crops import crop_boxes, isa_box, parse_view, view_boxes

__all__ = [
    "person_crop_dicts",
    "IdentityBalancedSampler",
    "PersonCropMapper",
    "build_person_crop_train_loader",
]


def person_crop_dicts(dataset_dicts: List[Dict]) -> List[Dict]:
    """
    One dict per labeled person box (``person_id`` >= 0) of the images of ``dataset_dicts``
    (queries are skipped): the image fields plus ``bbox`` (XYXY_ABS) and ``person_id``.
    """
    crops = []
    for record in dataset_dicts:
        if "query_boxes" in record:
            continue
        for anno in record.get("annotations", []):
            if anno["person_id"] < 0:
                continue
            box = BoxMode.convert(anno["bbox"], anno["bbox_mode"], BoxMode.XYXY_ABS)
            crops.append(
                {
                    "file_name": record["file_name"],
                    "height": record["height"],
                    "width": record["width"],
                    "image_id": record["image_id"],
                    "bbox": [float(v) for v in box],
                    "person_id": int(anno["person_id"]),
                }
            )
    return crops


class IdentityBalancedSampler(Sampler):
    """
    An infinite stream of indices in batches of P identities x K samples each (the P x K batches
    of batch-hard triplet training): the identities of a batch are distinct while there are
    enough, an identity with fewer than K samples repeats some. Each process draws its own
    stream (seed + rank).
    """

    def __init__(self, person_ids: List[int], batch_size: int, instances_per_id: int, seed: int):
        """
        Args:
            person_ids: the identity of each dataset index.
            batch_size: samples per batch on this process, a multiple of ``instances_per_id``.
            instances_per_id: K.
            seed: the random seed (a fixed one when negative).
        """
        if batch_size % instances_per_id:
            raise ValueError(
                f"IdentityBalancedSampler: the batch of {batch_size} per process (SOLVER."
                f"IMS_PER_BATCH / processes) is not a multiple of K = {instances_per_id} "
                "(DATALOADER.REID_INSTANCES_PER_ID)"
            )
        self._by_id = {}
        for index, pid in enumerate(person_ids):
            self._by_id.setdefault(pid, []).append(index)
        if len(self._by_id) < 2:
            raise ValueError(f"IdentityBalancedSampler: needs 2 identities, got {len(self._by_id)}")
        self._ids_per_batch = batch_size // instances_per_id
        self._k = instances_per_id
        self._seed = max(seed, 0) + comm.get_rank()

    def __iter__(self) -> Iterator[int]:
        rng = np.random.RandomState(self._seed)
        ids = sorted(self._by_id)
        while True:
            replace = len(ids) < self._ids_per_batch
            for pid in rng.choice(ids, self._ids_per_batch, replace=replace):
                indices = self._by_id[pid]
                yield from rng.choice(indices, self._k, replace=len(indices) < self._k).tolist()


class PersonCropMapper:
    """
    A crop sample -> ``{"image": (3, H, W) float 0-255 in INPUT.FORMAT, "person_id": int}``: the
    box with ISA jitter (INPUT.REID_CROP.EXPAND alpha, SHIFT Delta_p), the rows of its view
    (INPUT.REID_CROP.VIEW) cut at INPUT.REID_CROP.SIZE by :func:`crop_boxes` (as at inference),
    flipped with probability 1/2, and a random rectangle erased with probability
    INPUT.REID_CROP.ERASE_PROB (Zhong et al.'s random erasing).
    """

    @configurable
    def __init__(
        self,
        *,
        image_format: str,
        size,
        alpha: float,
        shift: float,
        erase_prob: float,
        view=(0.0, 1.0),
    ):
        self.image_format = image_format
        self.size = tuple(size)
        self.view = tuple(view)
        self.alpha = alpha
        self.shift = shift
        self.erase = RandomErasing(p=erase_prob, value=0) if erase_prob > 0 else None

    @classmethod
    def from_config(cls, cfg):
        crop = cfg.INPUT.REID_CROP
        return {
            "image_format": cfg.INPUT.FORMAT,
            "size": crop.SIZE,
            "alpha": crop.EXPAND,
            "shift": crop.SHIFT,
            "erase_prob": crop.ERASE_PROB,
            "view": parse_view(crop.VIEW),
        }

    def __call__(self, sample: Dict) -> Dict:
        image = utils.read_image(sample["file_name"], format=self.image_format)
        utils.check_image_size(sample, image)
        # numpy's global state: detectron2 seeds it per data-loader worker.
        rng = np.random.RandomState(np.random.randint(2**31))
        box, _ = isa_box(sample["bbox"], self.alpha, self.shift, self.size, image.shape[:2], rng)
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
        crop = crop_boxes(tensor, view_boxes(torch.as_tensor(box[None]), self.view), self.size)[0]
        if rng.rand() < 0.5:
            crop = crop.flip(-1)
        if self.erase is not None:
            crop = self.erase(crop)
        return {"image": crop, "person_id": sample["person_id"], "file_name": sample["file_name"]}


def build_person_crop_train_loader(cfg):
    """Crops of the labeled persons of DATASETS.TRAIN in P x K batches of SOLVER.IMS_PER_BATCH."""
    dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
    crops = person_crop_dicts(dicts)
    if not crops:
        raise ValueError(f"DATASETS.TRAIN {list(cfg.DATASETS.TRAIN)}: no labeled person to crop")
    sampler = IdentityBalancedSampler(
        [c["person_id"] for c in crops],
        cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size(),
        cfg.DATALOADER.REID_INSTANCES_PER_ID,
        cfg.SEED,
    )
    return build_detection_train_loader(
        crops,
        mapper=PersonCropMapper(cfg),
        sampler=sampler,
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=False,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
