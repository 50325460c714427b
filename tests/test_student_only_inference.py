# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""Inference of a distilled student needs its checkpoint only: teacher and LUT files may be gone."""

import os

import pytest

pytest.importorskip("detectron2")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog, detection_utils  # noqa: E402
from detectron2.data import transforms as T  # noqa: E402
from detectron2.engine import default_argument_parser  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from personsearch_kd.data.datasets.records import query_record, set_metadata  # noqa: E402
from personsearch_kd import add_teacher  # noqa: E402
from personsearch_kd.engine import (  # noqa: E402
    PersonSearchPredictor,
    build_trained_student,
    train_or_evaluate,
)
from personsearch_kd.layers import save_lut_file  # noqa: E402

from helpers import NUM_IDS, det_teacher, load_tool, set_seed, synthetic_record, tiny_cfg  # noqa

QUERY_BOX = [10.0, 10.0, 40.0, 90.0]
KD_DET_LOSSES = ["HintLoss", "RPNDistillLoss", "RCNDistillLoss"]


def _kd_reid(tmp_path):
    """A KD_reid student config and the teacher files it names."""
    lut_file = tmp_path / "teacher_lut.pth"
    lut = F.normalize(torch.randn(NUM_IDS, 256), dim=1)
    cfg = tiny_cfg(18)
    save_lut_file(str(lut_file), lut, cfg.DATASETS.TRAIN, range(NUM_IDS), "compute", "", "t")
    cfg.merge_from_list(["MODEL.OIM.FREEZE_LUT", True])
    return add_teacher(cfg, "table", "LUTFileTeacher", str(lut_file)), [lut_file]


def _kd_det(tmp_path):
    """A KD_det student config and the teacher files it names."""
    config_file, weights = det_teacher(tmp_path, depth=18)
    cfg = tiny_cfg(18, **{"MODEL.DISTILLATION.LOSSES": KD_DET_LOSSES})
    return add_teacher(cfg, "detector", "DetectorTeacher", weights, config_file), [
        config_file,
        weights,
    ]


@pytest.fixture
def tiny_test_set(tmp_path):
    name = f"ps_student_only_test_{os.getpid()}"
    gallery = [synthetic_record(tmp_path, i, pids) for i, pids in enumerate([[0, -1], [0], [-1]])]
    query = query_record(gallery[1], QUERY_BOX, 0, 0)
    DatasetCatalog.register(name, lambda: gallery + [query])
    set_metadata(name, ("all",))
    yield name, gallery
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


@pytest.mark.parametrize("make_student", [_kd_reid, _kd_det], ids=["kd_reid", "kd_det"])
def test_eval_predictor_and_demo_without_teacher_files(tmp_path, tiny_test_set, make_student):
    dataset, gallery = tiny_test_set
    cfg, teacher_files = make_student(tmp_path)
    set_seed(0)
    trained = build_model(cfg)  # as training builds it: with its teacher
    DetectionCheckpointer(trained, save_dir=str(tmp_path)).save("student")
    cfg.merge_from_list(["MODEL.WEIGHTS", str(tmp_path / "student.pth")])
    cfg.merge_from_list(["DATASETS.TEST", f"('{dataset}',)", "OUTPUT_DIR", str(tmp_path / "out")])
    config_file = tmp_path / "student.yaml"
    config_file.write_text(cfg.dump())
    image = detection_utils.read_image(gallery[1]["file_name"], format="BGR")
    trained.eval()
    # The predictor's input: DefaultPredictor's channel order and test-time resize.
    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    ordered = image[:, :, ::-1] if cfg.INPUT.FORMAT == "RGB" else image
    resized = resize.get_transform(ordered).apply_image(ordered)
    with torch.no_grad():
        inputs = {
            "image": torch.as_tensor(resized.transpose(2, 0, 1).astype("float32")),
            "height": image.shape[0],
            "width": image.shape[1],
        }
        expected = trained([dict(inputs, query_boxes=[QUERY_BOX])])[0]["instances"].reid_feats[0]
    for path in teacher_files:
        os.remove(path)

    args = default_argument_parser().parse_args(
        ["--config-file", str(config_file), "--eval-only", "TEST.PERSON_SEARCH.VIS_QUERIES", "0"]
    )
    results = train_or_evaluate(args)
    assert (
        0 <= results["person_search"]["mAP"] <= 100
    )  # an untrained model: any value, but a result

    predictor = PersonSearchPredictor(cfg)
    assert torch.allclose(predictor.embed_query(image, QUERY_BOX), expected, atol=1e-5)

    # The one builder of trained models (every tool, --eval-only, the predictor): same student.
    student = build_trained_student(cfg, cfg.MODEL.WEIGHTS)
    assert not student.training
    with torch.no_grad():
        loaded = student([dict(inputs, query_boxes=[QUERY_BOX])])[0]["instances"].reid_feats[0]
    assert torch.allclose(loaded, expected, atol=1e-5)
    assert "reid_feats" in predictor(image)["instances"].get_fields()

    output = tmp_path / "matches.jpg"
    argv = (
        ["--config-file", str(config_file), "--query-image", gallery[1]["file_name"]]
        + ["--query-box", *map(str, QUERY_BOX), "--gallery", str(tmp_path), "--topk", "2"]
        + ["--score-thresh", "0.0", "--output", str(output)]
    )
    assert len(load_tool("search_demo").main(argv)) == 2
    assert output.is_file()
