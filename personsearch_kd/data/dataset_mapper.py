# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
import torch

from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils

from ..layers.oim_loss import UNLABELED_PID

__all__ = ["PersonSearchDatasetMapper"]


class PersonSearchDatasetMapper(DatasetMapper):
    """
    :class:`DatasetMapper` that also carries identities: each annotation of a dataset dict must
    have ``person_id`` (int in [0, num_ids), or -1 for an unlabeled person), which becomes the
    ``gt_pids`` (R,) int64 field of ``dataset_dict["instances"]``, aligned with ``gt_boxes``.
    """

    @configurable
    def __init__(self, is_train: bool, *, num_ids: int, **kwargs):
        """
        Args:
            num_ids: number of labeled identities (MODEL.OIM.NUM_IDS); larger ids are an error.
            is_train, kwargs: see :class:`DatasetMapper`.
        """
        super().__init__(is_train, **kwargs)
        self.num_ids = num_ids

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        ret["num_ids"] = cfg.MODEL.OIM.NUM_IDS
        return ret

    def _person_ids(self, dataset_dict) -> torch.Tensor:
        pids = []
        for i, anno in enumerate(dataset_dict["annotations"]):
            pid = anno.get("person_id")
            if not isinstance(pid, int) or not UNLABELED_PID <= pid < self.num_ids:
                raise ValueError(
                    f"{dataset_dict.get('file_name')}: annotation {i} has person_id={pid!r}; "
                    f"expected an int in [0, {self.num_ids}) (MODEL.OIM.NUM_IDS) or "
                    f"{UNLABELED_PID} for an unlabeled person"
                )
            pids.append(pid)
        return torch.tensor(pids, dtype=torch.int64)

    def _transform_annotations(self, dataset_dict, transforms, image_shape):
        pids = self._person_ids(dataset_dict)
        if any(anno.get("iscrowd", 0) for anno in dataset_dict["annotations"]):
            raise ValueError(
                f"{dataset_dict.get('file_name')}: person search annotations cannot be iscrowd"
            )
        annos = [
            utils.transform_instance_annotations(obj, transforms, image_shape)
            for obj in dataset_dict.pop("annotations")
        ]
        instances = utils.annotations_to_instances(annos, image_shape)
        instances.gt_pids = pids
        # Boxes emptied by an augmentation (a crop) are gone from the image, with their ids.
        dataset_dict["instances"] = utils.filter_empty_instances(instances)
