# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""A small gallery index of the shipped sample (two cameras, a video, images) for the app tests."""

import os

import cv2
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from personsearch_kd import load_config
from personsearch_kd.engine import PersonSearchPredictor
from personsearch_kd.search import index_gallery

from helpers import REPO_ROOT, set_seed, tiny_cfg

FRAMES = os.path.join(REPO_ROOT, "datasets", "mot15-ps-sample", "PETS09-S2L1", "img1")
FPS = 7.0


def build_app_gallery(root) -> dict:
    """
    An untrained tiny model (its config file and weights) and an index in ``root``/index of a
    video of 4 sample frames (camera "cam1", 7 fps) and 3 other frames as images ("cam2").

    Returns:
        {"config", "opts", "cfg", "index", "video", "images"}.
    """
    root = str(root)
    names = sorted(os.listdir(FRAMES))
    first = cv2.imread(os.path.join(FRAMES, names[0]))
    size = (first.shape[1] // 3, first.shape[0] // 3)
    video = os.path.join(root, "cam1.avi")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), FPS, size)
    for name in names[:4]:
        writer.write(cv2.resize(cv2.imread(os.path.join(FRAMES, name)), size))
    writer.release()
    folder = os.path.join(root, "photos")
    os.makedirs(folder, exist_ok=True)
    images = []
    for name in names[4:7]:
        images.append(os.path.join(folder, name))
        cv2.imwrite(images[-1], cv2.resize(cv2.imread(os.path.join(FRAMES, name)), size))
    set_seed(0)
    cfg = tiny_cfg(18, **{"TEST.DETECTIONS_PER_IMAGE": 5})
    cfg.TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH = 0.0
    DetectionCheckpointer(build_model(cfg), save_dir=root).save("model")
    config = os.path.join(root, "model.yaml")
    with open(config, "w") as f:
        f.write(cfg.dump())
    opts = ["MODEL.WEIGHTS", os.path.join(root, "model.pth")]
    cfg = load_config(config, opts)
    predictor = PersonSearchPredictor(cfg)
    index = os.path.join(root, "index")
    index_gallery(cfg, predictor, [video], index, camera="cam1")
    index_gallery(cfg, predictor, [folder], index, camera="cam2")
    return {"config": config, "opts": opts, "cfg": cfg, "index": index, "video": video,
            "images": images}  # fmt: skip
