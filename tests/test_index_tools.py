# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""Index once, search many times: tools/index_gallery.py and tools/search.py end to end."""

import json
import os
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("detectron2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from personsearch_kd.engine import PersonSearchPredictor  # noqa: E402
from personsearch_kd.search import GalleryIndex, GalleryIndexError  # noqa: E402

from helpers import REPO_ROOT, cli_error, load_tool, set_seed, tiny_cfg  # noqa: E402

FRAMES = os.path.join(REPO_ROOT, "datasets", "mot15-ps-sample", "PETS09-S2L1", "img1")
FPS = 7.0


@pytest.fixture
def gallery(tmp_path):
    """A video of 5 sample frames (MJPG, 7 fps), a folder of 2 more frames, an untrained model."""
    names = sorted(os.listdir(FRAMES))
    first = cv2.imread(os.path.join(FRAMES, names[0]))
    size = (first.shape[1] // 4, first.shape[0] // 4)
    video = str(tmp_path / "cam1.avi")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), FPS, size)
    for name in names[:5]:
        writer.write(cv2.resize(cv2.imread(os.path.join(FRAMES, name)), size))
    writer.release()
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in names[5:7]:
        shutil.copy(os.path.join(FRAMES, name), folder / name)
    set_seed(0)
    cfg = tiny_cfg(18, **{"TEST.DETECTIONS_PER_IMAGE": 4})
    cfg.TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH = 0.0
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("model")
    config_file = tmp_path / "model.yaml"
    config_file.write_text(cfg.dump())
    opts = ["MODEL.WEIGHTS", str(tmp_path / "model.pth")]
    return {"video": video, "folder": str(folder), "config": str(config_file), "opts": opts}


def _index(gallery, output, *extra):
    load_tool("index_gallery").main(
        ["--config-file", gallery["config"], "--input", gallery["video"], gallery["folder"],
         "--every", "2", "--camera", "cam1", "--output", output, *extra, *gallery["opts"]]
    )  # fmt: skip


def test_index_a_video_and_a_folder_then_search_it(gallery, tmp_path):
    output = str(tmp_path / "index")
    _index(gallery, output)
    index = GalleryIndex.load(output)
    records = index.arrays()
    # Frames 0, 2, 4 of the video (every 2nd) at their times, then the 2 images.
    assert records["frame"].tolist() == [0, 2, 4, -1, -1]
    assert records["time"][:3].tolist() == pytest.approx([0.0, 2 / FPS, 4 / FPS])
    assert set(records["camera"].tolist()) == {"cam1"}
    assert len(index) == 5 * 4 and not os.path.exists(os.path.join(output, "shards"))

    # A query box that is one of the indexed detections finds itself first, with similarity 1.
    row = int(records["source"].tolist().index(3))
    image = records["path"][3]
    box = records["box"][row].tolist()
    matches = load_tool("search").main(
        ["--config-file", gallery["config"], "--index", output, "--query-image", image,
         "--query-box", *map(str, box), "--topk", "3", "--output", str(tmp_path / "m.jpg"),
         *gallery["opts"]]
    )  # fmt: skip
    assert matches[0]["path"] == image and matches[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert len(matches) == 3 and len({(m["path"], m["frame"]) for m in matches}) == 3
    picture = cv2.imread(str(tmp_path / "m.jpg"))
    assert picture is not None and picture.shape[1] > picture.shape[0]
    only_video = load_tool("search").main(
        ["--config-file", gallery["config"], "--index", output, "--query-image", image,
         "--time-range", "0", "1", "--json", *gallery["opts"]]
    )  # fmt: skip
    assert {m["frame"] for m in only_video} == {0, 2, 4}
    with pytest.raises(GalleryIndexError, match="'nprobe=4' do not apply to a Flat index"):
        load_tool("search").main(
            ["--config-file", gallery["config"], "--index", output, "--query-image", image,
             "--search-params", "nprobe=4", *gallery["opts"]]
        )  # fmt: skip

    # Queries of another model are refused.
    other = tiny_cfg(18)
    set_seed(1)
    DetectionCheckpointer(build_model(other), save_dir=str(tmp_path)).save("other")
    with pytest.raises(GalleryIndexError, match="built with model"):
        load_tool("search").main(
            ["--config-file", gallery["config"], "--index", output, "--query-image", image,
             "MODEL.WEIGHTS", str(tmp_path / "other.pth")]
        )  # fmt: skip


def test_an_interrupted_indexing_resumes_without_redoing_finished_images(
    gallery, tmp_path, monkeypatch
):
    calls = {"n": 0}
    original = PersonSearchPredictor.detect_batch

    def counting(self, images):
        calls["n"] += len(images)
        if calls["n"] == 3 and calls.get("fail", True):
            raise KeyboardInterrupt  # the user stops the run during the third image
        return original(self, images)

    monkeypatch.setattr(PersonSearchPredictor, "detect_batch", counting)
    output = str(tmp_path / "index")
    with pytest.raises(KeyboardInterrupt):
        _index(gallery, output, "--save-every", "1")
    calls.update(n=0, fail=False)
    _index(gallery, output, "--save-every", "1")
    assert calls["n"] == 3  # the two finished sources were not processed again
    resumed = GalleryIndex.load(output)
    calls.update(n=0)
    _index(gallery, str(tmp_path / "fresh"))
    fresh = GalleryIndex.load(str(tmp_path / "fresh"))
    for key in ("path", "frame", "source"):
        assert resumed.arrays()[key].tolist() == fresh.arrays()[key].tolist()
    assert np.allclose(resumed.arrays()["box"], fresh.arrays()["box"], atol=1e-4)
    # Indexing again adds nothing.
    calls.update(n=0)
    _index(gallery, output)
    assert calls["n"] == 0 and len(GalleryIndex.load(output)) == len(fresh)
    assert json.loads(open(os.path.join(output, "index.json")).read())["num_sources"] == 5


def test_an_approximate_index_measures_its_recall_once_built_and_search_reports_it(
    gallery, tmp_path, capsys
):
    output = str(tmp_path / "ivf")
    _index(gallery, output, "GALLERY_INDEX.FACTORY", "IVF2,Flat", "GALLERY_INDEX.TRAIN_SIZE",
           "10", "GALLERY_INDEX.SEARCH_PARAMS", "nprobe=1", "GALLERY_INDEX.LATENCY_BUDGET_MS",
           "1000.0")  # fmt: skip
    header = json.loads(open(os.path.join(output, "index.json")).read())
    check = header["recall_check"]
    assert check["rows"] == 20 and check["queries"] == 20 and check["target"] == 0.95
    assert check["reached"] and check["recall_at_10"] >= 0.95
    assert check["ground_truth"] == "exact features"  # the shards' own features
    assert header["search_params"] == check["search_params"] in ("nprobe=1", "nprobe=2")
    records = GalleryIndex.load(output).arrays()
    load_tool("search").main(
        ["--config-file", gallery["config"], "--index", output, "--query-image",
         records["path"][3], "--topk", "2", *gallery["opts"]]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert f"IVF2,Flat index of 20 boxes: recall@10 {check['recall_at_10']:.3f}" in out


def test_batched_indexing_gives_the_same_index_as_one_image_at_a_time(gallery, tmp_path):
    one, batched = str(tmp_path / "one"), str(tmp_path / "batched")
    _index(gallery, one)
    _index(gallery, batched, "--batch-size", "3")  # 5 sources: batches of 3 and 2
    single, several = GalleryIndex.load(one), GalleryIndex.load(batched)
    for key in ("path", "frame", "source"):
        assert several.arrays()[key].tolist() == single.arrays()[key].tolist()
    assert np.allclose(several.arrays()["box"], single.arrays()["box"], atol=1e-3)
    assert np.allclose(several.features(), single.features(), atol=1e-4)


def test_prefetch_yields_in_order_and_raises_the_readers_error_in_place():
    from personsearch_kd.search import prefetch

    def numbers():
        yield from range(5)
        raise ValueError("frame 5 cannot be decoded")

    got = []
    with pytest.raises(ValueError, match="frame 5"):
        for n in prefetch(numbers(), depth=2):
            got.append(n)
    assert got == [0, 1, 2, 3, 4]
    early = prefetch(iter(range(100)), depth=2)
    assert next(early) == 0
    early.close()  # the reader stops instead of blocking on a full buffer


def test_two_processes_index_the_same_gallery_as_one(gallery, tmp_path):
    """detectron2's launcher (gloo on CPU): each process indexes every other source, then merge."""
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    _index(gallery, one)
    command = [sys.executable, os.path.join(REPO_ROOT, "tools", "index_gallery.py"),
               "--config-file", gallery["config"], "--input", gallery["video"], gallery["folder"],
               "--every", "2", "--camera", "cam1", "--output", two, "--num-gpus", "2",
               *gallery["opts"]]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "shared by 2 processes" in result.stdout + result.stderr
    assert not os.path.exists(os.path.join(two, "shards"))

    def by_source(index):
        records = index.arrays()
        rows = {}
        for path, frame in zip(records["path"], records["frame"]):
            rows[(str(path), int(frame))] = index.source_rows(str(path), int(frame))
        return rows

    single, double = by_source(GalleryIndex.load(one)), by_source(GalleryIndex.load(two))
    assert sorted(single) == sorted(double) and len(single) == 5
    for key, (features, boxes, scores) in single.items():
        assert np.allclose(double[key][0], features, atol=1e-4), key
        assert np.allclose(double[key][1], boxes, atol=1e-3), key
        assert np.allclose(double[key][2], scores, atol=1e-4), key


def test_the_tools_answer_bad_input_in_one_line(gallery, tmp_path, capsys):
    image = os.path.join(FRAMES, sorted(os.listdir(FRAMES))[0])
    outside = ["--config-file", gallery["config"], "--index", str(tmp_path), "--query-image",
               image, "--query-box", "10", "10", "9000", "100", *gallery["opts"]]  # fmt: skip
    assert "x1 <= 768" in cli_error(capsys, load_tool("search").main, outside)
    never = ["--config-file", gallery["config"], "--input", gallery["folder"], "--every", "0",
             "--output", str(tmp_path / "index"), *gallery["opts"]]  # fmt: skip
    assert "--every must be at least 1" in cli_error(capsys, load_tool("index_gallery").main, never)
