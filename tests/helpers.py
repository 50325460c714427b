# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""Small configs and synthetic person-search images shared by the detectron2 tests."""

import importlib.util
import json
import os
import sys

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import BoxMode, Boxes, Instances

from personsearch_kd import PersonSearchDatasetMapper, add_personsearch_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO_ROOT, "configs")

NUM_IDS = 6
# Persons of the synthetic images of the crop-network tests (the tiny_sets fixture), by image.
PERSONS = [[0, 1, -1], [1, 0], [2, 0, 1], [2, 1]]


def tiny_cfg(depth: int = 18, **overrides):
    """A from-scratch config sized for unit tests on CPU (short side 128, 32 ROIs per image)."""
    cfg = get_cfg()
    add_personsearch_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIGS, "scratch", f"oim_R_{depth}_C4_scratch.yaml"))
    cfg.merge_from_list(
        [
            "MODEL.DEVICE",
            "cpu",
            "DATALOADER.NUM_WORKERS",
            0,
            "MODEL.OIM.NUM_IDS",
            NUM_IDS,
            "MODEL.OIM.QUEUE_SIZE",
            16,
            "MODEL.RPN.PRE_NMS_TOPK_TRAIN",
            400,
            "MODEL.RPN.POST_NMS_TOPK_TRAIN",
            100,
            "MODEL.RPN.PRE_NMS_TOPK_TEST",
            200,
            "MODEL.RPN.POST_NMS_TOPK_TEST",
            50,
            "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
            32,
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
            0.0,
            "INPUT.MIN_SIZE_TRAIN",
            (128,),
            "INPUT.MAX_SIZE_TRAIN",
            200,
            "INPUT.MIN_SIZE_TEST",
            128,
            "INPUT.MAX_SIZE_TEST",
            200,
        ]
    )
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    return cfg


def det_teacher(tmp_path, depth=50, norm="BN", **overrides):
    """
    A DET teacher (the KD_det teacher's kind) as a config file and a checkpoint in ``tmp_path``,
    untrained: the tests need its shapes only.

    Returns:
        (config file, checkpoint) paths, for MODEL.TEACHER.CONFIG_FILE / WEIGHTS.
    """
    set_seed(1)
    cfg = tiny_cfg(
        depth,
        **{
            "MODEL.META_ARCHITECTURE": "GeneralizedRCNN",
            "MODEL.ROI_HEADS.NAME": "PersonDetectorROIHeads",
            "MODEL.RESNETS.NORM": norm,
        },
        **overrides,
    )
    config_file = tmp_path / f"det_R_{depth}.yaml"
    config_file.write_text(cfg.dump())
    model = build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save(f"det_R_{depth}")
    return str(config_file), str(tmp_path / f"det_R_{depth}.pth")


def synthetic_record(directory, seed: int, pids, height: int = 128, width: int = 176):
    """
    Write a person-search image to ``directory`` and return its detectron2 dataset dict: a noisy
    background with one coloured upright rectangle per person, its colour a function of its id
    (so ids are learnable); XYXY_ABS boxes, ``person_id`` per annotation (-1 = unlabeled).
    """
    rng = np.random.RandomState(seed)
    image = rng.randint(0, 60, size=(height, width, 3)).astype(np.uint8)
    annotations = []
    for i, pid in enumerate(pids):
        w, h = 24, 56
        x0 = 8 + i * (w + 12) + rng.randint(0, 6)
        y0 = rng.randint(4, height - h - 4)
        colour = [(37 * (pid + 2)) % 256, (91 * (pid + 2)) % 256, 200] if pid >= 0 else [120] * 3
        image[y0 : y0 + h, x0 : x0 + w] = colour
        annotations.append(
            {
                "bbox": [float(x0), float(y0), float(x0 + w), float(y0 + h)],
                "bbox_mode": BoxMode.XYXY_ABS,
                "category_id": 0,
                "person_id": int(pid),
            }
        )
    file_name = os.path.join(str(directory), f"synthetic_{seed}.png")
    cv2.imwrite(file_name, image)
    return {
        "file_name": file_name,
        "height": height,
        "width": width,
        "image_id": seed,
        "annotations": annotations,
    }


def model_inputs(cfg, records, is_train: bool = True):
    """Map dataset dicts through our dataset mapper, as the data loader would."""
    mapper = PersonSearchDatasetMapper(cfg, is_train)
    return [mapper(record) for record in records]


def set_seed(seed: int = 0):
    torch.manual_seed(seed)
    np.random.seed(seed)


def write_mot_fixture(root, frames=8, tracks=((1, 2, 3), (1, 2))):
    """
    Two small MOTChallenge sequences under ``root`` ("SEQ-A" in MOT15 rows, "SEQ-B" in MOT17
    rows with one non-pedestrian row) and a split spec: frames 1-4 train, 5-8 test.

    Returns:
        path of split.json.
    """
    spec = {"sequences": {}, "queries": {"per_id": 2}}
    for seq, ids, mot17 in (("SEQ-A", tracks[0], False), ("SEQ-B", tracks[1], True)):
        seq_dir = os.path.join(str(root), seq)
        os.makedirs(os.path.join(seq_dir, "img1"))
        os.makedirs(os.path.join(seq_dir, "gt"))
        with open(os.path.join(seq_dir, "seqinfo.ini"), "w") as f:
            f.write(f"[Sequence]\nname={seq}\nimDir=img1\nimWidth=176\nimHeight=128\nimExt=.jpg\n")
        rows = []
        for frame in range(1, frames + 1):
            cv2.imwrite(
                os.path.join(seq_dir, "img1", f"{frame:06d}.jpg"),
                np.full((128, 176, 3), 40 * frame % 255, np.uint8),
            )
            for k, track in enumerate(ids):
                x, y = 1 + 40 * k + frame, 10 + frame  # 1-based top-left
                tail = "1,1,1.0" if mot17 else "1,-1,-1,-1"
                rows.append(f"{frame},{track},{x},{y},24,56,{tail}")
            if mot17:
                rows.append(f"{frame},99,100,10,30,30,1,3,1.0")  # a car: not a person
        with open(os.path.join(seq_dir, "gt", "gt.txt"), "w") as f:
            f.write("\n".join(rows) + "\n")
        spec["sequences"][seq] = {
            "train_frames": [1, frames // 2],
            "test_frames": [frames // 2 + 1, frames],
            "train_ids": list(ids[:-1]),
            "query_ids": list(ids[-1:]),
        }
    path = os.path.join(str(root), "split.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    return path


def end_distributed_worker():
    """
    Wait for every rank, tear the process groups down, then end the worker process at once.

    Ending through interpreter finalization is what aborts: live C++ threads (gloo workers, the
    autograd engine) still hold Python objects and call back into a dying interpreter, so a
    rank can die with "terminate called without an active exception" (SIGABRT) after its work
    is done (pytorch/pytorch#190489; destroying the groups first made it rarer, not gone).
    ``os._exit(0)`` skips finalization; ranks that fail raise before reaching this, so
    detectron2's launch still reports them.
    """
    import torch.distributed as dist

    from detectron2.utils import comm

    if comm.get_world_size() < 2:
        raise RuntimeError("end_distributed_worker ends its process: call it in launched workers")
    comm.synchronize()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def load_tool(name: str, folder: str = "tools"):
    """Import ``<folder>/<name>.py`` (tools/ and dev/ hold scripts, not a package) as a module."""
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(REPO_ROOT, folder, f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cli_error(capsys, main, argv) -> str:
    """
    The answer of a tool's ``main(argv)`` to bad input: it must exit with status 2 and write one
    line, ``error: ...``, to stderr. Returns that line.
    """
    capsys.readouterr()  # what ran before
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


class OracleModel(nn.Module):
    """
    Returns the ground truth of ``records`` as detections (score 0.99) with a one-hot feature per
    identity (unlabeled persons: the last dimension), and the query boxes with their identity's:
    an evaluator scores it 100%. ``wrong_queries`` gives each query the next identity's feature.
    """

    def __init__(self, records, dim=16, wrong_queries=False):
        super().__init__()
        self.gt = {r["image_id"]: r["annotations"] for r in records if "query_boxes" not in r}
        self.dim = dim
        self.wrong_queries = wrong_queries

    def _onehot(self, pid):
        feat = torch.zeros(self.dim)
        feat[pid if pid >= 0 else self.dim - 1] = 1.0
        return feat

    def forward(self, inputs):
        outputs = []
        for inp in inputs:
            inst = Instances((inp["height"], inp["width"]))
            if "query_boxes" in inp:
                pid = inp["query_pid"] + (1 if self.wrong_queries else 0)
                inst.pred_boxes = Boxes(torch.tensor(inp["query_boxes"]))
                inst.scores = torch.ones(1)
                inst.reid_feats = self._onehot(pid)[None]
            else:
                annos = self.gt[inp["image_id"]]
                inst.pred_boxes = Boxes(torch.tensor([a["bbox"] for a in annos]))
                inst.scores = torch.full((len(annos),), 0.99)
                inst.reid_feats = torch.stack([self._onehot(a["person_id"]) for a in annos])
            outputs.append({"instances": inst})
        return outputs
