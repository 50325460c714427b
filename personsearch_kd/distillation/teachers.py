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
from detectron2.config import CfgNode, configurable, get_cfg
from detectron2.modeling import GeneralizedRCNN, build_model
from detectron2.modeling.proposal_generator import RPN
from detectron2.structures import Boxes, ImageList
from detectron2.utils.registry import Registry

from ..config import add_personsearch_config
from ..layers.lut_file import check_lut_file, load_lut_file
from ..modeling.predictions import box_head_predictions, rpn_predictions
from ..modeling.record import StudentRecord

__all__ = ["TEACHER_REGISTRY", "DetectorTeacher", "LUTFileTeacher", "build_teachers"]

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


@TEACHER_REGISTRY.register()
class DetectorTeacher(Teacher):
    """
    A frozen detector (KD_det): any detectron2 :class:`GeneralizedRCNN` with an RPN, C4 or FPN,
    e.g. our DET person detector, built from its own CONFIG_FILE (its own pixel mean/std and input
    format) with OPTS applied, MODEL.DEVICE following the student's, and WEIGHTS loaded with
    DetectionCheckpointer (a checkpoint that lacks teacher parameters is an error).
    """

    @configurable
    def __init__(self, *, model: GeneralizedRCNN, name: str):
        super().__init__()
        self.model = model
        self.name = name
        self.student_input_format = model.input_format  # until prepare_student says otherwise
        self.freeze()

    @classmethod
    def from_config(cls, cfg, name: str, spec: CfgNode):
        key = f"MODEL.TEACHERS.{name}"
        config_file, weights = spec.CONFIG_FILE, spec.WEIGHTS
        if not os.path.isfile(config_file):
            raise FileNotFoundError(
                f"{key}.CONFIG_FILE={config_file!r}: expected the teacher detector's config file"
            )
        teacher_cfg = get_cfg()
        add_personsearch_config(teacher_cfg)
        teacher_cfg.merge_from_file(config_file)
        teacher_cfg.merge_from_list(list(spec.OPTS))
        teacher_cfg.MODEL.DEVICE = cfg.MODEL.DEVICE
        model = build_model(teacher_cfg)
        if not isinstance(model, GeneralizedRCNN) or not isinstance(model.proposal_generator, RPN):
            raise ValueError(
                f"{key}.CONFIG_FILE={config_file!r} builds {type(model).__name__} with "
                f"{type(model.proposal_generator).__name__}; expected a GeneralizedRCNN with an RPN"
            )
        # URLs (detectron2://, https://) are fetched by the checkpointer.
        if "://" not in weights and not os.path.isfile(weights):
            raise FileNotFoundError(
                f"{key}.WEIGHTS={weights!r}: expected the trained teacher's checkpoint"
            )
        _StrictCheckpointer(model, f"{key}.WEIGHTS={weights!r}", config_file).load(weights)
        return {"model": model, "name": name}

    def prepare_student(self, student: nn.Module) -> None:
        formats = {student.input_format, self.model.input_format}
        if len(formats) > 1 and formats != {"RGB", "BGR"}:
            raise ValueError(
                f"MODEL.TEACHERS.{self.name}: cannot convert the student's INPUT.FORMAT "
                f"{student.input_format} to the teacher's {self.model.input_format}"
            )
        self.student_input_format = student.input_format

    def outputs(self, record: StudentRecord) -> "DetectorTeacherOutputs":
        return DetectorTeacherOutputs(self, record)

    def images(self, batched_inputs: List[Dict]) -> ImageList:
        """The student's images normalised the teacher's way (its INPUT.FORMAT, pixel mean/std)."""
        return _teacher_images(self.model, self.student_input_format, batched_inputs)


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


def _teacher_images(
    model: GeneralizedRCNN, student_format: str, batched_inputs: List[Dict]
) -> ImageList:
    """The student's input images (in ``student_format``) as the teacher normalises them."""
    if model.input_format == student_format:
        return model.preprocess_image(batched_inputs)
    # RGB <-> BGR (checked when the student was built): flip the channels.
    return model.preprocess_image([{"image": x["image"].flip(0)} for x in batched_inputs])


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
