# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""The KD_reid LUT file: round trip, validation, the student check, the computed LUT (pure torch)."""

import pytest
import torch
import torch.nn.functional as F

from personsearch_kd.layers import check_lut_file, identity_means, load_lut_file, save_lut_file


def _save(path, lut=None, person_ids=(0, 1, 2), dataset=("toy_train",)):
    lut = F.normalize(torch.randn(3, 4), dim=1) if lut is None else lut
    return save_lut_file(
        str(path), lut, dataset, person_ids, "compute", "MODEL:\n  DEVICE: cpu\n", "teacher.pth"
    )


def test_round_trip_keeps_every_field(tmp_path):
    written = _save(tmp_path / "lut.pth", person_ids=(5, 3, 4))
    loaded = load_lut_file(str(tmp_path / "lut.pth"))
    assert torch.equal(loaded["lut"], written["lut"])
    assert loaded["id_map"] == {5: 0, 3: 1, 4: 2}
    assert loaded["dim"] == 4 and loaded["dataset"] == ["toy_train"]
    assert loaded["method"] == "compute" and loaded["teacher_weights"] == "teacher.pth"
    assert loaded["teacher_config"].startswith("MODEL:")


def test_bad_files_name_the_file_and_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_lut_file(str(tmp_path / "missing.pth"))
    torch.save(torch.zeros(3, 4), tmp_path / "bare.pth")
    with pytest.raises(ValueError, match=r"bare.pth.*expected a dict .* got Tensor"):
        load_lut_file(str(tmp_path / "bare.pth"))
    torch.save({"lut": torch.zeros(3, 4)}, tmp_path / "old.pth")
    with pytest.raises(ValueError, match=r"old.pth.*missing keys \['dim', 'dataset', 'id_map'"):
        load_lut_file(str(tmp_path / "old.pth"))
    content = _save(tmp_path / "lut.pth")
    torch.save(dict(content, id_map={0: 0, 1: 0, 2: 2}), tmp_path / "rows.pth")
    with pytest.raises(ValueError, match=r"rows.pth.*'id_map' must give each of the 3 rows"):
        load_lut_file(str(tmp_path / "rows.pth"))
    torch.save(dict(content, dim=8), tmp_path / "dim.pth")
    with pytest.raises(ValueError, match=r"dim.pth.*\[num_ids, dim=8\] tensor, got \(3, 4\)"):
        load_lut_file(str(tmp_path / "dim.pth"))


def test_student_check_names_each_difference(tmp_path):
    content = _save(tmp_path / "lut.pth", person_ids=(0, 1, 2))
    check_lut_file(content, "lut.pth", ["toy_train"], range(3), 4)  # fits
    with pytest.raises(ValueError, match=r"dataset: .*\['toy_train'\].*\['other_train'\]"):
        check_lut_file(content, "lut.pth", ["other_train"], range(3), 4)
    with pytest.raises(ValueError, match=r"dim: the file has 4, MODEL.OIM.EMBED_DIM is 256"):
        check_lut_file(content, "lut.pth", ["toy_train"], range(3), 256)
    with pytest.raises(ValueError, match=r"ids: 3 rows in the file, 5 in the student.*\[3, 4\]"):
        check_lut_file(content, "lut.pth", ["toy_train"], range(5), 4)
    with pytest.raises(ValueError, match=r"in other rows \[0, 2\]"):
        check_lut_file(content, "lut.pth", ["toy_train"], [2, 1, 0], 4)


def test_identity_means_by_hand():
    feats = torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 0.0], [0.0, -5.0]])
    pids = torch.tensor([7, 7, 9, 9])
    lut = identity_means(feats, pids, person_ids=[9, 7])
    # id 9: mean of (1, 0) and (0, -1) = (0.5, -0.5) -> (1, -1)/sqrt(2); id 7: (1, 1)/sqrt(2).
    r = 2**-0.5
    assert torch.allclose(lut, torch.tensor([[r, -r], [r, r]]))
    with pytest.raises(ValueError, match=r"no labeled box of person ids \[4\]"):
        identity_means(feats, pids, person_ids=[9, 7, 4])
