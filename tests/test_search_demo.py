# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""tools/search_demo.py on the shipped sample (datasets/mot15-ps-sample), untrained model."""

import os
import re
import shutil

import pytest

pytest.importorskip("detectron2")

import cv2  # noqa: E402
import torch  # noqa: E402

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.data.detection_utils import read_image  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from personsearch_kd.engine import PersonSearchPredictor  # noqa: E402

from helpers import REPO_ROOT, cli_error, load_tool, set_seed, tiny_cfg  # noqa: E402

SAMPLE = os.path.join(REPO_ROOT, "datasets", "mot15-ps-sample", "PETS09-S2L1", "img1")
QUERY_IMAGE = os.path.join(SAMPLE, "000401.jpg")


@pytest.fixture
def checkpoint_and_config(tmp_path):
    set_seed(0)
    cfg = tiny_cfg(18)
    model = build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model_random")
    cfg.MODEL.WEIGHTS = str(tmp_path / "model_random.pth")
    config_file = tmp_path / "demo.yaml"
    config_file.write_text(cfg.dump())
    return cfg, str(config_file)


def _query_box():
    # A person of frame 401 in gt.txt (columns frame, id, x, y, w, h; 1-based pixels).
    gt = os.path.join(SAMPLE, "..", "gt", "gt.txt")
    row = next(r.split(",") for r in open(gt) if r.startswith("401,"))
    x, y, w, h = (float(v) for v in row[2:6])
    return [x - 1, y - 1, x - 1 + w, y - 1 + h]


def test_demo_draws_the_topk_matches_of_the_gallery(tmp_path, checkpoint_and_config):
    cfg, config_file = checkpoint_and_config
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for name in ("000411.jpg", "000421.jpg", "000431.jpg", "000441.jpg"):
        shutil.copy(os.path.join(SAMPLE, name), gallery / name)
    output = tmp_path / "out" / "matches.jpg"
    matches = load_tool("search_demo").main(
        ["--config-file", config_file, "--query-image", QUERY_IMAGE, "--query-box"]
        + [str(v) for v in _query_box()]
        + ["--gallery", str(gallery), "--output", str(output), "--topk", "3"]
        + ["--score-thresh", "0.0"]
    )

    # One (the most similar) detection per image, the 3 best images, best first.
    assert len(matches) == 3 and len({m["name"] for m in matches}) == 3
    assert [m["score"] for m in matches] == sorted((m["score"] for m in matches), reverse=True)
    # The similarities are those of the predictor's own query embedding and detections.
    predictor = PersonSearchPredictor(cfg)
    query = predictor.embed_query(read_image(QUERY_IMAGE, format="BGR"), _query_box())
    assert query.norm().item() == pytest.approx(1.0, abs=1e-4)
    best = {}
    for name in sorted(os.listdir(gallery)):
        inst = predictor(read_image(str(gallery / name), format="BGR"))["instances"]
        best[str(gallery / name)] = (inst.reid_feats @ query).max().item()
    expected = sorted(best.items(), key=lambda kv: -kv[1])[:3]
    assert [m["name"] for m in matches] == [name for name, _ in expected]
    assert [m["score"] for m in matches] == pytest.approx([s for _, s in expected], abs=1e-5)

    # The picture: query panel + 3 match panels of 768x576 frames at height 256, 3 gaps of 8.
    picture = cv2.imread(str(output))
    assert picture.shape == (256 + 28, 4 * 341 + 3 * 8, 3)


def test_demo_rejects_a_query_box_outside_the_image(tmp_path, checkpoint_and_config, capsys):
    _, config_file = checkpoint_and_config
    argv = ["--config-file", config_file, "--query-image", QUERY_IMAGE, "--gallery", SAMPLE]
    argv += ["--query-box", "10", "10", "900", "100"]
    error = cli_error(capsys, load_tool("search_demo").main, argv)
    assert re.search(r"--query-box .* x1 <= 768", error)


def test_search_skips_images_without_a_detection_above_the_threshold(checkpoint_and_config):
    cfg, _ = checkpoint_and_config
    predictor = PersonSearchPredictor(cfg)
    image = read_image(QUERY_IMAGE, format="BGR")
    assert predictor.search(image, _query_box(), [("a", image)], score_thresh=1.01) == []
    assert torch.is_tensor(predictor.embed_query(image, _query_box()))
