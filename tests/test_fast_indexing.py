# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Indexing footage faster: re-ID only for the detections an index keeps, the unchanged-frame
gate, the fast-path override file, the record of the path, tools/benchmark_indexing.py.
"""

import json
import os

import pytest

pytest.importorskip("detectron2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from personsearch_kd import load_config  # noqa: E402
from personsearch_kd.engine import PersonSearchPredictor  # noqa: E402
from personsearch_kd.search import GalleryIndex, index_gallery, indexing_config  # noqa: E402
from personsearch_kd.search.frame_gate import UnchangedFrameGate  # noqa: E402
from personsearch_kd.search.sources import GallerySource  # noqa: E402

from helpers import CONFIGS, REPO_ROOT, load_tool, set_seed, tiny_cfg  # noqa: E402

FRAMES = os.path.join(REPO_ROOT, "datasets", "mot15-ps-sample", "PETS09-S2L1", "img1")


@pytest.fixture
def footage(tmp_path):
    """
    A video whose frames are sample frames A A A B B (each repeated exactly), a folder with one
    image twice under two names, and an untrained tiny model keeping up to 20 detections, every
    one searched.
    """
    names = sorted(os.listdir(FRAMES))
    first, second = (cv2.imread(os.path.join(FRAMES, n)) for n in (names[0], names[4]))
    size = (first.shape[1] // 4, first.shape[0] // 4)
    frames = [cv2.resize(image, size) for image in (first, first, first, second, second)]
    video = str(tmp_path / "cam1.avi")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 7.0, size)
    for frame in frames:
        writer.write(frame)
    writer.release()
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg"):
        cv2.imwrite(str(folder / name), frames[0])
    set_seed(0)
    cfg = tiny_cfg(18, **{"TEST.DETECTIONS_PER_IMAGE": 20})
    cfg.TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH = 0.0  # an untrained model's scores are low
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("model")
    config_file = tmp_path / "model.yaml"
    config_file.write_text(cfg.dump())
    opts = ["MODEL.WEIGHTS", str(tmp_path / "model.pth")]
    return {"video": video, "folder": str(folder), "config": str(config_file), "opts": opts}


def _counting(predictor):
    """``predictor`` counting the images it runs and the rows its re-ID head embeds."""
    counts = {"images": 0, "embedded": 0}
    detect_batch = predictor.detect_batch

    def counted(images):
        counts["images"] += len(images)
        return detect_batch(images)

    def embedded(module, inputs, output):
        counts["embedded"] += len(inputs[0])

    predictor.detect_batch = counted
    predictor.model.roi_heads.reid_head.register_forward_hook(embedded)
    return counts


def _records(directory):
    """An index's arrays, its features among them."""
    index = GalleryIndex.load(directory)
    return dict(index.arrays(), feature=index.features())


def test_reid_embeds_only_the_detections_the_index_keeps_and_the_index_is_the_same(
    footage, tmp_path
):
    cfg = load_config(footage["config"], footage["opts"])
    plain = PersonSearchPredictor(cfg)
    scores = plain.detect_batch([cv2.imread(os.path.join(footage["folder"], "a.jpg"))])[0].scores
    # A threshold between the untrained model's scores: some detections kept, some not.
    keep = float(scores.median())
    opts = footage["opts"] + ["TEST.PERSON_SEARCH.SEARCH_SCORE_THRESH", str(keep)]
    cfg = load_config(footage["config"], opts)
    fast_cfg = indexing_config(cfg)
    assert fast_cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST == pytest.approx(keep) and cfg.is_frozen()
    indexes, counts = [], []
    for name, config in (("all", cfg), ("kept", fast_cfg)):
        predictor = PersonSearchPredictor(config)
        counts.append(_counting(predictor))
        inputs = [footage["video"], footage["folder"]]
        index_gallery(config, predictor, inputs, str(tmp_path / name))
        indexes.append(_records(str(tmp_path / name)))
    every, kept = indexes
    for key in ("source", "box", "det_score", "feature"):
        np.testing.assert_allclose(every[key], kept[key], atol=1e-5, err_msg=key)
    assert len(kept["box"]) > 0
    # The second res5 pass embedded exactly the kept detections (plus nothing for the rest).
    assert counts[1]["embedded"] == len(kept["box"]) < counts[0]["embedded"]


def test_unchanged_video_frames_take_the_detections_of_the_last_frame_run(footage, tmp_path):
    inputs = [footage["video"], footage["folder"]]
    results, counts = [], []
    for share in (0.0, 0.01):
        opts = footage["opts"] + ["GALLERY_INDEX.UNCHANGED_FRAME_SHARE", str(share)]
        cfg = indexing_config(load_config(footage["config"], opts))
        predictor = PersonSearchPredictor(cfg)
        counts.append(_counting(predictor))
        output = str(tmp_path / f"gate{share}")
        index_gallery(cfg, predictor, inputs, output, batch_size=2)
        results.append(_records(output))
    # Off: all 5 frames and both images run. On: frames 0 and 3 of A A A B B, and the images
    # (identical, but images are never gated).
    assert counts[0]["images"] == 7 and counts[1]["images"] == 4
    off, on = results
    assert on["frame"].tolist() == off["frame"].tolist() == [0, 1, 2, 3, 4, -1, -1]
    for key in ("box", "det_score", "feature"):
        by_source = [on[key][on["source"] == s] for s in range(7)]
        for frame, reference in ((1, 0), (2, 0), (4, 3)):
            np.testing.assert_array_equal(by_source[frame], by_source[reference])
        # The frames the model ran on are indexed as without the gate.
        for source in (0, 3, 5, 6):
            np.testing.assert_allclose(
                by_source[source], off[key][off["source"] == source], atol=1e-5
            )


def test_the_gate_compares_with_the_last_frame_run_so_a_slow_change_gets_through():
    gate = UnchangedFrameGate(0.005)  # thumbnails 128 px wide: these frames' own size
    # An 8 x 8 white square moving 2 px per frame on black: each step changes 32 of 8192 pixels
    # (0.39 %, under 0.5 %), two steps 64 (0.78 %): a gate comparing neighbours would never run
    # the model again.
    frames = []
    for step in range(5):
        frame = np.zeros((64, 128, 3), np.uint8)
        frame[20:28, 2 * step : 2 * step + 8] = 255
        frames.append(frame)
    decisions = [gate.unchanged(GallerySource("v.avi", i, 0.0, f)) for i, f in enumerate(frames)]
    assert decisions == [False, True, False, True, False]
    # A uniform change of brightness within 16 grey levels (light, exposure) is no change.
    brighter = np.clip(frames[4].astype(int) + 10, 0, 255).astype(np.uint8)
    assert gate.unchanged(GallerySource("v.avi", 5, 0.0, brighter))
    assert not gate.unchanged(GallerySource("photo.jpg", -1, float("nan"), frames[0]))
    assert not gate.unchanged(GallerySource("other.avi", 0, 0.0, frames[0]))  # its own video
    off = UnchangedFrameGate(0.0)
    assert not any(off.unchanged(GallerySource("v.avi", i, 0.0, frames[0])) for i in range(2))
    for bad in (-1, 2):
        with pytest.raises(ValueError, match=f"GALLERY_INDEX.UNCHANGED_FRAME_SHARE={bad}"):
            UnchangedFrameGate(bad)


def test_the_fast_path_file_indexes_a_searchable_index_that_records_its_path(footage, tmp_path):
    output = str(tmp_path / "index")
    fast = os.path.join(CONFIGS, "index_fast.yaml")
    tool = load_tool("index_gallery")
    tool.main(
        ["--config-file", footage["config"], "--override", fast, "--input", footage["video"],
         "--output", output, *footage["opts"], "TEST.PERSON_SEARCH.IMS_PER_BATCH", "2",
         "TEST.PERSON_SEARCH.INT8_CALIBRATION_IMAGES", "2"]
    )  # fmt: skip
    (run,) = json.load(open(os.path.join(output, "inference_path.json")))
    path = run["path"]
    assert run["sources_added"] == 5
    # int8 after 2 frames: the first forward of 2 calibrated, the others ran in int8.
    assert path["precision"] == "int8" and path["int8_calibration_images"] == 2
    assert path["rpn_min_objectness"] == 0.1 and path["rpn_nms_thresh"] == 0.5
    assert path["reid_on_proposals"] is True and path["images_per_forward"] == 2
    assert path["rpn_post_nms_topk"] == load_config(footage["config"], overrides=[fast]).MODEL.RPN.POST_NMS_TOPK_TEST  # fmt: skip # noqa: E501
    # SEARCH_SCORE_THRESH 0 keeps every detection: the detector's threshold stays the config's.
    assert path["detection_score_thresh"] == tiny_cfg(18).MODEL.ROI_HEADS.SCORE_THRESH_TEST
    # A later run on the default path adds its images and its own record.
    tool.main(
        ["--config-file", footage["config"], "--input", footage["folder"], "--output", output,
         *footage["opts"]]
    )  # fmt: skip
    runs = json.load(open(os.path.join(output, "inference_path.json")))
    assert [r["sources_added"] for r in runs] == [5, 2]
    assert runs[1]["path"]["precision"] == "fp32" and not runs[1]["path"]["reid_on_proposals"]
    assert runs[1]["path"]["int8_calibration_images"] is None
    # The same tools search it (the fingerprint leaves the test-time budget out).
    index = GalleryIndex.load(output)
    records = index.arrays()
    box = records["box"][0].tolist()
    matches = load_tool("search").main(
        ["--config-file", footage["config"], "--index", output, "--query-image",
         os.path.join(footage["folder"], "a.jpg"), "--query-box", *map(str, box), "--topk", "3",
         *footage["opts"]]
    )  # fmt: skip
    assert len(matches) == 3


def test_benchmark_indexing_rows_per_setting_with_stage_shares(footage):
    fast = os.path.join(CONFIGS, "index_fast.yaml")
    rows = load_tool("benchmark_indexing").main(
        ["--config-file", footage["config"], "--input", footage["video"], footage["folder"],
         "--rounds", "1", "--baseline-all-detections", "--setting", "default",
         "--setting", f"fast {fast} GALLERY_INDEX.UNCHANGED_FRAME_SHARE 0.01", *footage["opts"]]
    )  # fmt: skip
    assert [r["name"] for r in rows] == ["all detections embedded", "default", "fast"]
    assert rows[0]["speedup"] == 1.0
    for row in rows:
        assert row["frames"] == 7 and row["frames_per_s"] > 0 and len(row["seconds"]) == 1
        assert sum(row["shares"].values()) == pytest.approx(1.0, abs=0.02)
        assert row["shares"]["backbone"] > 0 and row["shares"]["res5 detection"] > 0
    # Re-ID on the proposals needs no second res5 pass.
    assert rows[2]["shares"]["res5 re-ID"] == 0 < rows[1]["shares"]["res5 re-ID"]


def test_channels_last_detects_and_embeds_as_the_plain_model(footage):
    plain = PersonSearchPredictor(load_config(footage["config"], footage["opts"]))
    opts = footage["opts"] + ["TEST.PERSON_SEARCH.CHANNELS_LAST", "True"]
    fast = PersonSearchPredictor(load_config(footage["config"], opts))
    assert fast.model.state_dict().keys() == plain.model.state_dict().keys()
    conv = fast.model.backbone.stem.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    images = [cv2.imread(os.path.join(footage["folder"], "a.jpg"))] * 2
    for _ in range(2):
        expected, found = plain.detect_batch(images)[0], fast.detect_batch(images)[0]
        assert len(found) == len(expected) > 0
        for name in ("pred_boxes", "scores", "reid_feats"):
            a, b = (getattr(x, name) for x in (expected, found))
            a, b = (x.tensor if name == "pred_boxes" else x for x in (a, b))
            assert torch.allclose(a, b, atol=1e-3), name


def _proposals(predictor, image):
    """The RPN's proposals (Instances) for ``image`` in one detection run of ``predictor``."""
    found = []
    handle = predictor.model.proposal_generator.register_forward_hook(
        lambda module, inputs, output: found.append(output[0][0])
    )
    detections = predictor.detect_batch([image])[0]
    handle.remove()
    return found[0], detections


def test_the_objectness_floor_keeps_the_proposals_above_it_at_test_time_only(footage):
    image = cv2.imread(os.path.join(footage["folder"], "a.jpg"))
    plain = PersonSearchPredictor(load_config(footage["config"], footage["opts"]))
    everything, _ = _proposals(plain, image)
    probability = torch.sigmoid(everything.objectness_logits)
    floor = float(probability.median())  # the untrained model's: about half are dropped
    opts = footage["opts"] + ["MODEL.RPN.MIN_OBJECTNESS_TEST", str(floor)]
    cfg = load_config(footage["config"], opts)
    floored = PersonSearchPredictor(cfg)
    kept, detections = _proposals(floored, image)
    expected = int((probability >= floor).sum())
    assert 0 < len(kept) == expected < len(everything)
    # The proposals sort by objectness: the floor keeps a prefix, boxes unchanged.
    assert torch.equal(kept.proposal_boxes.tensor, everything.proposal_boxes.tensor[:expected])
    assert len(detections) > 0 and detections.reid_feats.shape[0] == len(detections)
    # A floor above every proposal: no proposals, no detections, no error.
    opts = footage["opts"] + ["MODEL.RPN.MIN_OBJECTNESS_TEST", "0.9999"]
    cfg = load_config(footage["config"], opts)
    assert len(PersonSearchPredictor(cfg).detect_batch([image])[0]) == 0
    # Training's proposals are not floored: the same RPN outputs, in training mode and with the
    # test-time budget, give every proposal.
    rpn, arguments = floored.model.proposal_generator, []
    predict = rpn.predict_proposals
    rpn.predict_proposals = lambda *args: arguments.append(args) or predict(*args)
    floored.detect_batch([image])
    rpn.pre_nms_topk = {True: rpn.pre_nms_topk[False], False: rpn.pre_nms_topk[False]}
    rpn.post_nms_topk = {True: rpn.post_nms_topk[False], False: rpn.post_nms_topk[False]}
    rpn.train()
    assert len(predict(*arguments[0])[0]) == len(everything)


def test_the_objectness_floor_must_be_a_probability(footage):
    opts = footage["opts"] + ["MODEL.RPN.MIN_OBJECTNESS_TEST", "1.0"]
    with pytest.raises(ValueError, match="MODEL.RPN.MIN_OBJECTNESS_TEST=1.0: expected"):
        PersonSearchPredictor(load_config(footage["config"], opts))
