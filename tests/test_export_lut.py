# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""tools/export_lut.py: --from-checkpoint copies the buffer, --compute averages teacher features."""

import os

import pytest

pytest.importorskip("detectron2")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.engine import launch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from helpers import (  # noqa: E402
    NUM_IDS,
    cli_error,
    end_distributed_worker,
    load_tool,
    model_inputs,
    set_seed,
    synthetic_record,
    tiny_cfg,
)
from personsearch_kd.layers import load_lut_file  # noqa: E402

# Labeled ids 0..3 (id 1 on three boxes over two images), plus unlabeled persons.
IMAGE_PIDS = [[0, 1, -1], [1, 2], [3, -1, 1]]


@pytest.fixture
def teacher(tmp_path):
    """A tiny registered training set, and an R18 teacher config + checkpoint trained on it."""
    name = f"lut_teacher_train_{os.getpid()}_{tmp_path.name}"
    records = [synthetic_record(tmp_path, i, pids) for i, pids in enumerate(IMAGE_PIDS)]
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(thing_classes=["person"])
    set_seed(0)
    cfg = tiny_cfg(18, **{"DATASETS.TRAIN": f"('{name}',)"})
    model = build_model(cfg)
    # A trained-looking table: random unit rows (a fresh LUT is all zeros).
    model.roi_heads.oim_loss.lut.copy_(F.normalize(torch.randn(NUM_IDS, 256), dim=1))
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("teacher")
    config_file = tmp_path / "teacher.yaml"
    config_file.write_text(cfg.dump())
    yield {
        "cfg": cfg,
        "model": model,
        "records": records,
        "config": str(config_file),
        "weights": str(tmp_path / "teacher.pth"),
    }
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _export(teacher, output, *flags):
    load_tool("export_lut").main(
        ["--config-file", teacher["config"], "--weights", teacher["weights"]]
        + ["--output", str(output), *flags]
    )
    return load_lut_file(str(output))


def test_from_checkpoint_copies_the_lut_buffer(teacher, tmp_path):
    content = _export(teacher, tmp_path / "lut.pth", "--from-checkpoint")
    assert torch.equal(content["lut"], teacher["model"].roi_heads.oim_loss.lut)
    assert content["id_map"] == {pid: pid for pid in range(NUM_IDS)}
    assert content["dataset"] == list(teacher["cfg"].DATASETS.TRAIN)
    assert content["method"] == "from_checkpoint" and content["dim"] == 256
    assert content["teacher_weights"] == teacher["weights"]
    assert "OIMROIHeads" in content["teacher_config"]
    with pytest.raises(KeyError, match=r"no LUT buffer 'roi_heads.lut'.*oim_loss.lut"):
        _export(teacher, tmp_path / "bad.pth", "--from-checkpoint", "--lut-key", "roi_heads.lut")


def test_random_is_a_seeded_table_of_unit_rows_that_fits_the_student(teacher, tmp_path, capsys):
    from detectron2.config import CfgNode

    from personsearch_kd.distillation import build_teachers
    from personsearch_kd.layers import check_lut_file

    def random_table(seed, name):
        load_tool("export_lut").main(
            ["--config-file", teacher["config"], "--random", "--seed", str(seed), "--output",
             str(tmp_path / name)]
        )  # fmt: skip
        return load_lut_file(str(tmp_path / name))

    content = random_table(3, "random3.pth")
    lut = content["lut"]
    assert content["method"] == "random" and content["teacher_weights"] == "seed 3"
    assert lut.shape == (NUM_IDS, 256)
    assert torch.allclose(lut.norm(dim=1), torch.ones(NUM_IDS), atol=1e-6)
    assert torch.equal(random_table(3, "again.pth")["lut"], lut)  # the seed decides the table
    assert not torch.allclose(random_table(4, "random4.pth")["lut"], lut)
    # Far from any trained table and near-orthogonal rows: no identity knowledge in it.
    assert (lut @ lut.T - torch.eye(NUM_IDS)).abs().max() < 0.5
    cfg = teacher["cfg"]
    check_lut_file(content, "random3.pth", cfg.DATASETS.TRAIN, range(NUM_IDS), 256)
    # A KD_reid student takes it like any teacher's table.
    student = cfg.clone()
    student.defrost()
    student.MODEL.TEACHERS = CfgNode(
        {"table": {"KIND": "LUTFileTeacher", "WEIGHTS": str(tmp_path / "random3.pth")}}
    )
    assert torch.equal(build_teachers(student)["table"].lut, lut)
    # A teacher's checkpoint with --random, or none without it, is refused in one line.
    main = load_tool("export_lut").main
    given = ["--config-file", teacher["config"], "--weights", teacher["weights"]]
    bad = ["--output", str(tmp_path / "bad.pth")]
    assert "none with --random" in cli_error(capsys, main, given + bad + ["--random"])
    unweighted = ["--config-file", teacher["config"], "--from-checkpoint", *bad]
    assert "--weights: expected the teacher's checkpoint" in cli_error(capsys, main, unweighted)
    # A seed is refused where nothing is drawn, rather than silently ignored.
    seeded = given + bad + ["--from-checkpoint", "--seed", "3"]
    assert "--seed is for --random" in cli_error(capsys, main, seeded)
    assert not (tmp_path / "bad.pth").exists()


def _hand_computed_lut(teacher):
    """Each labeled box embedded alone in query mode, averaged per id by hand."""
    cfg, model = teacher["cfg"], teacher["model"].eval()
    per_id = {}
    for record in teacher["records"]:
        (inputs,) = model_inputs(cfg, [dict(record)], is_train=False)
        for anno in record["annotations"]:
            if anno["person_id"] < 0:
                continue
            with torch.no_grad():
                (out,) = model([dict(inputs, query_boxes=[anno["bbox"]])])
            feat = out["instances"].reid_feats[0]
            per_id.setdefault(anno["person_id"], []).append(feat / feat.norm())
    return torch.stack([F.normalize(torch.stack(per_id[p]).mean(0), dim=0) for p in range(4)])


def _export_worker(args, name, records):
    # Spawned processes start without the test's registrations.
    DatasetCatalog.register(name, lambda: records)
    load_tool("export_lut").export(args)
    end_distributed_worker()


def test_compute_equals_a_hand_computation_single_and_distributed(teacher, tmp_path):
    expected = _hand_computed_lut(teacher)
    content = _export(teacher, tmp_path / "lut.pth", "--compute")
    assert content["method"] == "compute"
    assert content["id_map"] == {0: 0, 1: 1, 2: 2, 3: 3}
    assert torch.allclose(content["lut"], expected, atol=1e-5)

    # Two gloo processes share the images out and gather the features on rank 0.
    args = (
        load_tool("export_lut")
        .build_parser()
        .parse_args(
            ["--config-file", teacher["config"], "--weights", teacher["weights"], "--compute"]
            + ["--output", str(tmp_path / "lut_2proc.pth")]
        )
    )
    name = teacher["cfg"].DATASETS.TRAIN[0]
    launch(
        _export_worker,
        num_gpus_per_machine=2,
        dist_url="auto",
        args=(args, name, teacher["records"]),
    )
    distributed = load_lut_file(str(tmp_path / "lut_2proc.pth"))
    assert torch.allclose(distributed["lut"], expected, atol=1e-5)


def test_dataset_flag_only_for_compute(teacher, tmp_path, capsys):
    main = load_tool("export_lut").main
    copied = ["--config-file", teacher["config"], "--weights", teacher["weights"], "--output",
              str(tmp_path / "lut.pth"), "--from-checkpoint", "--dataset", "x"]  # fmt: skip
    assert "--dataset is for --compute" in cli_error(capsys, main, copied)
    drawn = ["--config-file", teacher["config"], "--random", "--dataset", "x", "--output",
             str(tmp_path / "random.pth")]  # fmt: skip
    assert "--dataset is for --compute" in cli_error(capsys, main, drawn)
