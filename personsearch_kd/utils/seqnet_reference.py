# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
SeqNet (Li & Miao, AAAI 2021; github.com/serend1p1ty/SeqNet), the codebase person-search users
compare with, built from a checkout the user gives by path, for the speed benchmarks to time
side by side with ours in one process. Nothing of SeqNet is copied here: its own modules are
imported from that checkout (tested against commit edec285c).
"""

import importlib
import sys

import torch

__all__ = ["build_seqnet", "seqnet_gallery_inputs", "seqnet_training_inputs"]

# SeqNet's label of an unlabeled person (its CUHK-SYSU loader); labeled persons are pid + 1.
SEQNET_UNLABELED = 5555


def build_seqnet(
    root: str,
    height: int,
    width: int,
    score_thresh=None,
    detections: int = 300,
    device: str = "cpu",
):
    """
    SeqNet with its default settings (ResNet-50; proposals 12000/2000 in training, 6000/300 at
    test; 128 ROIs per image; LUT 5532, queue 5000; at most 300 detections), random weights:
    speed does not depend on them, and SeqNet's own builder would download ImageNet weights.

    Args:
        root: a checkout of serend1p1ty/SeqNet.
        height, width: the image size; SeqNet's resize is set to keep it.
        score_thresh: the box score under which detections are dropped at test time; None keeps
            SeqNet's default 0.5 (with random weights 0 keeps as many as ``detections``).
        detections: at most this many detections per image (SeqNet's default 300).
    """
    if root not in sys.path:
        sys.path.insert(0, root)
    defaults = importlib.import_module("defaults")
    resnet = importlib.import_module("models.resnet")
    seqnet = importlib.import_module("models.seqnet")
    cfg = defaults.get_default_cfg()
    cfg.INPUT.MIN_SIZE, cfg.INPUT.MAX_SIZE = min(height, width), max(height, width)
    if score_thresh is not None:
        cfg.MODEL.ROI_HEAD.SCORE_THRESH_TEST = score_thresh
    cfg.MODEL.ROI_HEAD.DETECTIONS_PER_IMAGE_TEST = detections
    build_resnet = resnet.build_resnet
    seqnet.build_resnet = lambda name, pretrained: build_resnet(name, pretrained=False)
    try:
        model = seqnet.SeqNet(cfg)
    finally:
        seqnet.build_resnet = build_resnet
    return model.to(device).eval()


def seqnet_gallery_inputs(images: torch.Tensor, device: str):
    """(B, 3, H, W) uint8 images -> SeqNet's input: a list of float images in [0, 1]."""
    return [image.float().div(255).to(device) for image in images]


def seqnet_training_inputs(batch, device: str):
    """
    Our training inputs (dicts with a (3, H, W) uint8 "image" and "instances" with gt_boxes and
    gt_pids, -1 for unlabeled) -> SeqNet's: float images in [0, 1] and targets {"boxes" (N, 4),
    "labels" (N,): pid + 1, or 5555 for unlabeled}.
    """
    images, targets = [], []
    for x in batch:
        pids = x["instances"].gt_pids
        labels = torch.where(pids >= 0, pids + 1, torch.full_like(pids, SEQNET_UNLABELED))
        images.append(x["image"].float().div(255).to(device))
        boxes = x["instances"].gt_boxes.tensor
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return images, targets
