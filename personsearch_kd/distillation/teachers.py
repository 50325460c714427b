# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Teachers, for training only: each built from its own files under MODEL.TEACHERS.<name>, frozen.
A teacher kind (:data:`TEACHER_REGISTRY`) implements ``from_config(cfg, name, spec)``,
``prepare_student(student)`` (once, when the student is built) and ``outputs(record)`` (each
step: what the distillation losses read, computed lazily and without gradients).
"""

import os
from functools import cached_property
from typing import Dict, List

import torch
from torch import nn

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, configurable
from detectron2.modeling import GeneralizedRCNN, build_model
from detectron2.modeling.proposal_generator import RPN
from detectron2.structures import Boxes, ImageList
from detectron2.utils.registry import Registry

from ..config import load_config
from ..layers.lut_file import check_lut_file, load_lut_file
from ..modeling.crop_reid import CropReIDNet
from .predictions import box_head_predictions, rpn_predictions
from ..modeling.record import CropRecord, StudentRecord
from ..modeling.reid_head import ReIDOutputs

__all__ = [
    "TEACHER_REGISTRY",
    "CropReIDTeacher",
    "DetectorTeacher",
    "LUTFileTeacher",
    "build_teachers",
]

TEACHER_REGISTRY = Registry("TEACHER")
TEACHER_REGISTRY.__doc__ = """
Teacher kinds, named by MODEL.TEACHERS.<name>.KIND; built with ``(cfg, name, spec)``, ``spec``
being the teacher's config node (KIND, CONFIG_FILE, WEIGHTS, OPTS).
"""

_SPEC_KEYS = ("KIND", "CONFIG_FILE", "WEIGHTS", "OPTS")


class Teacher(nn.Module):
    """Base of the teacher kinds: frozen, in eval mode; by default nothing to prepare or output."""

    def freeze(self) -> "Teacher":
        self.eval()
        self.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> "Teacher":
        # A teacher never leaves eval mode (BatchNorm statistics, dropout).
        return super().train(False)

    def prepare_student(self, student: nn.Module) -> None:
        """Called once by the student it teaches, at the end of its construction."""

    def outputs(self, record: StudentRecord):
        """What this teacher gives for the student's current step; None when nothing."""
        return None


def _build_frozen_model(cfg, name: str, spec: CfgNode, expected: str, check) -> nn.Module:
    """
    Build MODEL.TEACHERS.<name>'s model from its own CONFIG_FILE with OPTS applied and
    MODEL.DEVICE following the student's, check it (``check(model)`` is True when it is of the
    ``expected`` kind) and load its WEIGHTS, failing if they lack any of its parameters.
    """
    key = f"MODEL.TEACHERS.{name}"
    config_file, weights = spec.CONFIG_FILE, spec.WEIGHTS
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"{key}.CONFIG_FILE={config_file!r}: expected {expected}'s config")
    teacher_cfg = load_config(config_file, spec.OPTS, freeze=False)
    teacher_cfg.MODEL.DEVICE = cfg.MODEL.DEVICE
    model = build_model(teacher_cfg)
    if not check(model):
        raise ValueError(
            f"{key}.CONFIG_FILE={config_file!r} builds {type(model).__name__}; expected {expected}"
        )
    # URLs (detectron2://, https://) are fetched by the checkpointer.
    if "://" not in weights and not os.path.isfile(weights):
        raise FileNotFoundError(
            f"{key}.WEIGHTS={weights!r}: expected the trained teacher's checkpoint"
        )
    _StrictCheckpointer(model, f"{key}.WEIGHTS={weights!r}", config_file).load(weights)
    return model


class _ImageTeacher(Teacher):
    """A teacher network that sees the student's input images, converted to its INPUT.FORMAT."""

    def __init__(self, model: nn.Module, name: str):
        super().__init__()
        self.model = model
        self.name = name
        self.student_input_format = model.input_format  # until prepare_student says otherwise
        self.freeze()

    def prepare_student(self, student: nn.Module) -> None:
        formats = {student.input_format, self.model.input_format}
        if len(formats) > 1 and formats != {"RGB", "BGR"}:
            raise ValueError(
                f"MODEL.TEACHERS.{self.name}: cannot convert the student's INPUT.FORMAT "
                f"{student.input_format} to the teacher's {self.model.input_format}"
            )
        self.student_input_format = student.input_format

    def teacher_image(self, image: torch.Tensor) -> torch.Tensor:
        """A student input image (C, H, W) in the teacher's channel order (RGB <-> BGR flip)."""
        return image if self.student_input_format == self.model.input_format else image.flip(0)


@TEACHER_REGISTRY.register()
class DetectorTeacher(_ImageTeacher):
    """
    A frozen detector (KD_det): any detectron2 :class:`GeneralizedRCNN` with an RPN, C4 or FPN,
    e.g. our DET person detector, built from its own CONFIG_FILE (its own pixel mean/std and input
    format) with OPTS applied, MODEL.DEVICE following the student's, and WEIGHTS loaded with
    DetectionCheckpointer (a checkpoint that lacks teacher parameters is an error).
    """

    @configurable
    def __init__(self, *, model: GeneralizedRCNN, name: str):
        super().__init__(model, name)

    @classmethod
    def from_config(cls, cfg, name: str, spec: CfgNode):
        def is_detector(model):
            return isinstance(model, GeneralizedRCNN) and isinstance(model.proposal_generator, RPN)

        model = _build_frozen_model(cfg, name, spec, "a GeneralizedRCNN with an RPN", is_detector)
        return {"model": model, "name": name}

    def outputs(self, record: StudentRecord) -> "DetectorTeacherOutputs":
        return DetectorTeacherOutputs(self, record)

    def images(self, batched_inputs: List[Dict]) -> ImageList:
        """The student's images normalised the teacher's way (its INPUT.FORMAT, pixel mean/std)."""
        return self.model.preprocess_image(
            [{"image": self.teacher_image(x["image"])} for x in batched_inputs]
        )


@TEACHER_REGISTRY.register()
class CropReIDTeacher(_ImageTeacher):
    """
    A frozen re-ID network on person crops (DKD's external re-ID model), a :class:`CropReIDNet`
    built from its own CONFIG_FILE and WEIGHTS. Each step it embeds the student's ground-truth
    boxes, cut from the student's input images exactly as it was trained (:meth:`CropReIDNet.cut`:
    its view of each box at its crop size); ``outputs(record).embed(boxes)`` embeds other boxes of
    those images (jittered ones).
    """

    @configurable
    def __init__(self, *, model: nn.Module, name: str):
        super().__init__(model, name)

    @classmethod
    def from_config(cls, cfg, name: str, spec: CfgNode):
        def is_crop_net(model):
            return isinstance(model, CropReIDNet)

        model = _build_frozen_model(cfg, name, spec, "a CropReIDNet", is_crop_net)
        return {"model": model, "name": name}

    def outputs(self, record: StudentRecord) -> "CropReIDTeacherOutputs":
        return CropReIDTeacherOutputs(self, record)


class CropReIDTeacherOutputs:
    """
    A crop re-ID teacher's outputs for one student step, without gradients: ``ground_truth`` is
    its :class:`ReIDOutputs` of every ground-truth box of the batch, in image order (the order of
    ``cat([gt.gt_boxes for gt in record.gt_instances])``), computed on first use; for a student
    on crops (a :class:`CropRecord`), of the student's crops, one row each, cut to its own view.
    """

    def __init__(self, teacher: CropReIDTeacher, record: StudentRecord):
        self.teacher = teacher
        self.record = record

    def embed(self, boxes: List[torch.Tensor]) -> ReIDOutputs:
        """
        Args:
            boxes: per image of the batch, (K_i, 4) XYXY boxes in the student's input pixels.
        Returns:
            the teacher's outputs, sum K_i rows in image order.
        """
        model = self.teacher.model
        crops = [
            model.cut(self.teacher.teacher_image(x["image"]).float().to(b.device), b)
            for x, b in zip(self.record.batched_inputs, boxes)
        ]
        with torch.no_grad():
            return model.embed(torch.cat(crops))

    def embed_crops(self, crops: torch.Tensor) -> ReIDOutputs:
        """
        Args:
            crops: (N, 3, H, W) whole-person crops of the student, in its INPUT.FORMAT.
        Returns:
            the teacher's outputs on its view of each (the top half for "Up1"), N rows.
        """
        model = self.teacher.model
        whole = crops.new_tensor([[0.0, 0.0, crops.shape[-1], crops.shape[-2]]])
        views = [model.cut(self.teacher.teacher_image(crop), whole) for crop in crops]
        with torch.no_grad():
            return model.embed(torch.cat(views))

    @cached_property
    def ground_truth(self) -> ReIDOutputs:
        if isinstance(self.record, CropRecord):
            return self.embed_crops(self.record.crops)
        return self.embed([gt.gt_boxes.tensor for gt in self.record.gt_instances])


class DetectorTeacherOutputs:
    """
    A detector teacher's predictions for one student step, each computed on first use, without
    gradients: ``features`` (its backbone on the same images), ``rpn`` (its objectness logits and
    anchor deltas, laid out as :attr:`StudentRecord.rpn_logits` / ``rpn_deltas``) and ``boxes``
    (its box head's scores and deltas on the student's sampled ROIs).
    """

    def __init__(self, teacher: DetectorTeacher, record: StudentRecord):
        self.model = teacher.model
        self.teacher = teacher
        self.record = record

    @cached_property
    def features(self) -> Dict[str, torch.Tensor]:
        with torch.no_grad():
            images = self.teacher.images(self.record.batched_inputs)
            return self.model.backbone(images.tensor)

    @cached_property
    def rpn(self):
        with torch.no_grad():
            _, logits, deltas = rpn_predictions(self.model.proposal_generator, self.features)
        return logits, deltas

    @cached_property
    def boxes(self):
        rois: List[Boxes] = [r.proposal_boxes for r in self.record.rois]
        with torch.no_grad():
            return box_head_predictions(self.model.roi_heads, self.features, rois)


class _StrictCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that fails, instead of logging, on a checkpoint missing parameters."""

    def __init__(self, model: nn.Module, weights_key: str, config_file: str):
        super().__init__(model)
        self.weights_key = weights_key
        self.config_file = config_file

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        missing = incompatible.missing_keys
        if missing:
            raise ValueError(
                f"{self.weights_key} does not fit its CONFIG_FILE={self.config_file!r}: "
                f"{len(missing)} teacher parameters are not in it, e.g. {missing[:3]}"
            )
        return incompatible


@TEACHER_REGISTRY.register()
class LUTFileTeacher(Teacher):
    """
    A teacher's identity lookup table (KD_reid), from WEIGHTS, a LUT file of tools/export_lut.py.
    It is checked against the student (DATASETS.TRAIN, MODEL.OIM.NUM_IDS, MODEL.OIM.EMBED_DIM,
    each difference named) and copied into the student's OIM lookup table when the student is
    built; weights loaded later (MODEL.WEIGHTS, --resume) that contain a LUT take precedence, so
    a resumed run keeps its own table. Set MODEL.OIM.FREEZE_LUT to keep it fixed.
    """

    @configurable
    def __init__(self, *, lut: torch.Tensor, source: str):
        super().__init__()
        self.register_buffer("lut", lut)
        self.source = source
        self.freeze()

    @classmethod
    def from_config(cls, cfg, name: str, spec: CfgNode):
        path = spec.WEIGHTS
        content = load_lut_file(path)
        # The mapper keeps person ids in [0, NUM_IDS) and OIM uses the id as the row.
        check_lut_file(
            content, path, cfg.DATASETS.TRAIN, range(cfg.MODEL.OIM.NUM_IDS), cfg.MODEL.OIM.EMBED_DIM
        )
        return {"lut": content["lut"], "source": f"MODEL.TEACHERS.{name}.WEIGHTS={path!r}"}

    def prepare_student(self, student: nn.Module) -> None:
        oim = getattr(student.roi_heads, "oim_loss", None)
        if oim is None:
            raise ValueError(
                f"{self.source}: a LUTFileTeacher needs a student with the OIM loss "
                "('OIMReIDLoss' in MODEL.REID.LOSSES)"
            )
        oim.lut.copy_(self.lut)


def build_teachers(cfg) -> Dict[str, Teacher]:
    """The teachers of MODEL.TEACHERS, by name, built and frozen (an empty dict if none)."""
    teachers = {}
    for name, spec in cfg.MODEL.TEACHERS.items():
        key = f"MODEL.TEACHERS.{name}"
        if not isinstance(spec, CfgNode) or set(spec) - set(_SPEC_KEYS) or "KIND" not in spec:
            raise ValueError(
                f"{key}: expected a node with KIND and any of CONFIG_FILE, WEIGHTS, OPTS; got "
                f"{spec!r}"
            )
        spec = CfgNode({"CONFIG_FILE": "", "WEIGHTS": "", "OPTS": [], **spec})
        if spec.KIND not in TEACHER_REGISTRY:
            raise KeyError(
                f"{key}.KIND={spec.KIND!r}: not a registered teacher kind; registered: "
                f"{sorted(k for k, _ in TEACHER_REGISTRY)}"
            )
        teachers[name] = TEACHER_REGISTRY.get(spec.KIND)(cfg, name, spec)
    return teachers
