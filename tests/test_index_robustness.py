# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Indexing real folders: unreadable and truncated files and broken videos are skipped and reported
(skipped.json) while the run goes on, boxes with no area inside their image are not indexed, and
an error saves what was processed. A stub predictor stands in for the model, so each test takes
about a second.
"""

import json
import logging
import os
import shutil

import cv2
import numpy as np
import pytest

pytest.importorskip("detectron2")

import torch  # noqa: E402

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402

from personsearch_kd.engine.command_line import run_cli  # noqa: E402
from personsearch_kd.search import (  # noqa: E402
    GalleryIndex,
    index_gallery,
    read_source_image,
    read_sources,
)
from personsearch_kd.search.indexing import read_skip_report  # noqa: E402
from personsearch_kd.search.sources import SkippedSource  # noqa: E402

from helpers import REPO_ROOT, cli_error, load_tool, tiny_cfg  # noqa: E402

FRAMES = os.path.join(REPO_ROOT, "datasets", "mot15-ps-sample", "PETS09-S2L1", "img1")
GOOD = [f"frame_{i}.jpg" for i in range(5)] + ["frame_5.png"]
VIDEO_FRAMES = 3


def _sample_jpeg(i: int = 0) -> bytes:
    with open(os.path.join(FRAMES, sorted(os.listdir(FRAMES))[i]), "rb") as f:
        return f.read()


def _write_video(path, frames: int, fourcc: str = "MJPG"):
    size = (192, 144)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), 7.0, size)
    for i in range(frames):
        writer.write(cv2.resize(cv2.imdecode(np.frombuffer(_sample_jpeg(i), np.uint8), 1), size))
    writer.release()


@pytest.fixture
def folder(tmp_path):
    """
    8 images, 6 good (5 JPEG, 1 PNG), ``broken.jpg`` (text) and ``cut.jpg`` (a real JPEG cut in
    half), and ``cam.avi`` (3 frames). In reading order: broken, cam #0-2, cut, frame_0-5.
    """
    path = tmp_path / "photos"
    path.mkdir()
    for i, name in enumerate(GOOD):
        image = cv2.imdecode(np.frombuffer(_sample_jpeg(i), np.uint8), cv2.IMREAD_COLOR)
        cv2.imwrite(str(path / name), image)
    (path / "broken.jpg").write_text("not an image")
    data = _sample_jpeg(6)
    (path / "cut.jpg").write_bytes(data[: len(data) // 2])
    _write_video(str(path / "cam.avi"), VIDEO_FRAMES)
    return str(path)


class StubPredictor:
    """
    ``detect_batch`` as PersonSearchPredictor's: per image the boxes ``boxes(height, width)``
    with score 0.9 and a unit feature drawn from the image's pixels; raises at image ``fail_at``.
    """

    def __init__(self, dim, boxes=lambda height, width: [[10.0, 10.0, 40.0, 90.0]], fail_at=0):
        self.dim, self.boxes, self.fail_at = dim, boxes, fail_at
        self.images = 0

    def detect_batch(self, images):
        results = []
        for image in images:
            self.images += 1
            if self.images == self.fail_at:
                raise RuntimeError("the model failed")
            height, width = image.shape[:2]
            boxes = torch.tensor(self.boxes(height, width), dtype=torch.float32)
            rng = np.random.default_rng(int(image.sum()))
            features = torch.from_numpy(rng.standard_normal((len(boxes), self.dim))).float()
            instances = Instances((height, width))
            instances.pred_boxes = Boxes(boxes)
            instances.scores = torch.full((len(boxes),), 0.9)
            instances.reid_feats = torch.nn.functional.normalize(features, dim=1)
            results.append(instances)
        return results


@pytest.fixture
def cfg(tmp_path):
    cfg = tiny_cfg(18)
    cfg.MODEL.WEIGHTS = str(tmp_path / "weights.pth")  # only its bytes' digest is used
    with open(cfg.MODEL.WEIGHTS, "wb") as f:
        f.write(b"stub weights")
    return cfg


@pytest.fixture
def log():
    """The messages of the indexing logger (INFO and up) while the test runs."""
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("personsearch_kd.search.indexing")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)
    logger.setLevel(level)


def _sources(index):
    records = index.arrays()
    return sorted((os.path.basename(p), int(f)) for p, f in zip(records["path"], records["frame"]))


def _report(output):
    return sorted((os.path.basename(e["path"]), e["frame"]) for e in read_skip_report(output))


GOOD_SOURCES = sorted([(n, -1) for n in GOOD] + [("cam.avi", f) for f in range(VIDEO_FRAMES)])


def test_broken_files_are_skipped_and_reported_and_the_good_ones_indexed(
    folder, cfg, tmp_path, log
):
    output = str(tmp_path / "index")
    predictor = StubPredictor(cfg.MODEL.OIM.EMBED_DIM)
    index = index_gallery(cfg, predictor, [folder], output, save_every=2)
    assert _sources(index) == GOOD_SOURCES and len(index) == len(GOOD_SOURCES)
    assert _sources(GalleryIndex.load(output)) == GOOD_SOURCES
    with open(os.path.join(output, "skipped.json")) as f:
        report = {os.path.basename(e["path"]): e for e in json.load(f)}
    assert sorted(report) == ["broken.jpg", "cut.jpg"]
    assert [report[n]["frame"] for n in report] == [None, None]
    assert "cannot decode" in report["broken.jpg"]["reason"]
    assert "truncated JPEG" in report["cut.jpg"]["reason"]
    assert any("skipped" in m and "broken.jpg" in m for m in log)
    assert log[-1].endswith(
        f"2 sources skipped, listed in {output}/skipped.json; Flat index of 9 boxes: exact search"
    )
    assert "0 boxes with no area" in log[-1]

    # Run again: nothing is processed twice, the report keeps its two entries once each.
    again = StubPredictor(cfg.MODEL.OIM.EMBED_DIM)
    index = index_gallery(cfg, again, [folder], output)
    assert again.images == 0 and _sources(index) == GOOD_SOURCES
    assert _report(output) == [("broken.jpg", None), ("cut.jpg", None)]

    # A run on other inputs keeps those entries and adds its own.
    other = tmp_path / "other"
    other.mkdir()
    (other / "empty.png").write_bytes(b"")
    index_gallery(cfg, again, [str(other)], output)
    assert _report(output) == [("broken.jpg", None), ("cut.jpg", None), ("empty.png", None)]
    assert read_skip_report(output)[-1]["reason"] == "empty file"
    assert "3 sources skipped" in log[-1]

    # A repaired file read again leaves the report and enters the index.
    with open(os.path.join(folder, "cut.jpg"), "wb") as f:
        f.write(_sample_jpeg(6))
    index = index_gallery(cfg, again, [folder], output)
    assert again.images == 1 and ("cut.jpg", -1) in _sources(index)
    assert _report(output) == [("broken.jpg", None), ("empty.png", None)]


def test_boxes_with_no_area_inside_the_image_are_not_indexed(folder, cfg, tmp_path, log):
    def boxes(height, width):
        return [
            [10.0, 10.0, 40.0, 90.0],  # inside
            [16.2, 0.0, 16.2, 480.0],  # zero width
            [width + 10.0, 10.0, width + 50.0, 60.0],  # right of the image
            [width - 10.0, 5.0, width + 20.0, 50.0],  # half outside: clipped
            [5.0, 30.0, 25.0, 20.0],  # negative height
        ]

    output = str(tmp_path / "index")
    predictor = StubPredictor(cfg.MODEL.OIM.EMBED_DIM, boxes)
    index = index_gallery(cfg, predictor, [folder], output)
    records = index.arrays()
    assert len(index) == 2 * len(GOOD_SOURCES) and index.num_sources == len(GOOD_SOURCES)
    for source, (path, frame) in enumerate(zip(records["path"], records["frame"])):
        width = read_source_image(str(path), int(frame)).shape[1]
        rows = records["box"][records["source"] == source]
        assert rows.tolist() == [[10, 10, 40, 90], [width - 10, 5, width, 50]]
    assert f"{3 * len(GOOD_SOURCES)} boxes with no area inside their image not indexed" in log[-1]


def test_an_error_keeps_the_images_processed_before_it(folder, cfg, tmp_path):
    output = str(tmp_path / "index")
    failing = StubPredictor(cfg.MODEL.OIM.EMBED_DIM, fail_at=4)  # at frame_0, after cam #0-2
    with pytest.raises(RuntimeError, match="the model failed"):
        index_gallery(cfg, failing, [folder], output, save_every=2)
    shard = os.path.join(output, "shards", "0-of-1")
    # The third image came after the last periodic save (at 2): saved on the way out.
    assert _sources(GalleryIndex.load(shard)) == [("cam.avi", f) for f in range(VIDEO_FRAMES)]
    assert _report(shard) == [("broken.jpg", None), ("cut.jpg", None)]

    resumed = StubPredictor(cfg.MODEL.OIM.EMBED_DIM)
    index = index_gallery(cfg, resumed, [folder], output, save_every=2)
    assert resumed.images == len(GOOD_SOURCES) - VIDEO_FRAMES
    assert _sources(index) == GOOD_SOURCES and len(index) == len(GOOD_SOURCES)
    assert _report(output) == [("broken.jpg", None), ("cut.jpg", None)]
    assert not os.path.exists(os.path.join(output, "shards"))


def test_the_reader_reports_what_it_cannot_read_and_goes_on(tmp_path):
    jpeg = _sample_jpeg()
    scan = jpeg.rfind(b"\xff\xda")
    thumbnail = cv2.imencode(".jpg", np.full((8, 8, 3), 50, np.uint8))[1].tobytes()
    exif = b"Exif\0\0" + thumbnail  # an EXIF thumbnail ends with its own end-of-image marker
    with_thumbnail = jpeg[:2] + b"\xff\xe1" + (len(exif) + 2).to_bytes(2, "big") + exif + jpeg[2:]
    png = cv2.imencode(".png", np.full((20, 30, 3), 90, np.uint8))[1].tobytes()
    bmp = cv2.imencode(".bmp", np.full((20, 30, 3), 90, np.uint8))[1].tobytes()
    files = {
        "padded.jpg": jpeg + b"\0" * 16,  # bytes after the end marker: complete
        "thumb.jpg": with_thumbnail,
        "thumb_cut.jpg": with_thumbnail[: len(thumbnail) + scan + 200],
        "late_cut.jpg": jpeg[:-100],
        "cut.png": png[:-12],
        "cut.bmp": bmp[:-40],
        "ok.png": png,
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "text.mp4").write_text("not a video")
    _write_video(str(tmp_path / "short.avi"), 6)
    video = (tmp_path / "short.avi").read_bytes()
    (tmp_path / "short.avi").write_bytes(video[: len(video) // 2])
    paths = [str(tmp_path / n) for n in [*files, "text.mp4", "short.avi"]]

    read = list(read_sources(paths, 1, lambda path, frame: True))
    skipped = {
        (os.path.basename(s.path), s.frame): s.reason for s in read if isinstance(s, SkippedSource)
    }
    good = [(os.path.basename(s.path), s.frame) for s in read if not isinstance(s, SkippedSource)]
    frames = [f for name, f in good if name == "short.avi"]
    assert good[:3] == [("padded.jpg", -1), ("thumb.jpg", -1), ("ok.png", -1)]
    assert 0 < len(frames) < 6 and frames == list(range(len(frames)))
    whole = ["thumb_cut.jpg", "late_cut.jpg", "cut.png", "cut.bmp", "text.mp4"]
    assert sorted(skipped) == sorted([(n, None) for n in whole] + [("short.avi", len(frames))])
    assert "truncated JPEG" in skipped[("thumb_cut.jpg", None)]
    assert "truncated JPEG" in skipped[("late_cut.jpg", None)]
    assert "truncated PNG" in skipped[("cut.png", None)]
    assert "truncated BMP" in skipped[("cut.bmp", None)]
    assert "cannot open" in skipped[("text.mp4", None)]
    assert "video has 6 frames" in skipped[("short.avi", len(frames))]
    with pytest.raises(FileNotFoundError, match="late_cut.jpg: truncated JPEG"):
        read_source_image(str(tmp_path / "late_cut.jpg"))


def test_the_tool_goes_on_past_broken_files_and_answers_bad_input_in_one_line(
    folder, tmp_path, capsys
):
    cfg = tiny_cfg(18, **{"TEST.DETECTIONS_PER_IMAGE": 2})
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("model")
    config = tmp_path / "model.yaml"
    config.write_text(cfg.dump())
    small = tmp_path / "small"
    small.mkdir()
    for name in ("frame_0.jpg", "broken.jpg", "cut.jpg"):
        shutil.copy(os.path.join(folder, name), small / name)
    main = load_tool("index_gallery").main
    output = str(tmp_path / "index")
    argv = ["--config-file", str(config), "--output", output,
            "MODEL.WEIGHTS", str(tmp_path / "model.pth")]  # fmt: skip
    run_cli(main, ["--input", str(small), *argv])
    assert _sources(GalleryIndex.load(output)) == [("frame_0.jpg", -1)]
    assert _report(output) == [("broken.jpg", None), ("cut.jpg", None)]
    missing = str(small / "missing.jpg")
    line = cli_error(capsys, lambda args: run_cli(main, args), ["--input", missing, *argv])
    assert f"{missing}: no such gallery file" in line
