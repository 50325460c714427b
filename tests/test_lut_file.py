# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""The KD_reid LUT file: round trip, validation, the student check, the computed LUT, comparing
tables (pure torch, and the compare_luts tool)."""

import re

import pytest
import torch
import torch.nn.functional as F

from personsearch_kd.layers import (
    check_lut_file,
    identity_means,
    load_lut_file,
    lut_agreement,
    lut_structure,
    save_lut_file,
)


def _save(path, rows=None, person_ids=(0, 1, 2), dataset=("toy_train",)):
    """Write a LUT file of the given rows (random ones by default), L2-normalised."""
    lut = F.normalize(torch.randn(3, 4) if rows is None else torch.tensor(rows), dim=1)
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


def test_structure_and_agreement_by_hand(tmp_path):
    r = 2**-0.5
    a = _save(tmp_path / "a.pth", [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], person_ids=[0, 1, 2])
    # Person 2 moved to the other diagonal; b stores its rows in another order (id_map decides).
    b = _save(tmp_path / "b.pth", [[1.0, -1.0], [1.0, 0.0], [0.0, 1.0]], person_ids=[2, 0, 1])
    # a's cosines between distinct rows: (0,1) 0, (0,2) r, (1,2) r.
    assert lut_structure(a["lut"]) == pytest.approx({"mean": 2 * r / 3, "std": 0.3651, "max": r},
                                                    abs=1e-4)  # fmt: skip
    agreement = lut_agreement(a, b)
    # Rows 0 and 1 equal, person 2's rows orthogonal: row cosine 2/3. b's cosines: 0, r, -r,
    # whose correlation with (0, r, r) is 0 (centred: (-2r/3, r/3, r/3) . (0, r, -r) = 0).
    assert agreement["ids"] == 3 and agreement["row_cosine"] == pytest.approx(2 / 3)
    assert agreement["structure_correlation"] == pytest.approx(0.0, abs=1e-6)
    # A rotated copy keeps the structure exactly, not the rows; a table agrees fully with itself.
    rotation = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
    turned = dict(a, lut=a["lut"] @ rotation)
    assert lut_agreement(a, turned)["structure_correlation"] == pytest.approx(1.0)
    assert lut_agreement(a, turned)["row_cosine"] == pytest.approx(0.0, abs=1e-6)
    assert lut_agreement(a, a) == pytest.approx({"ids": 3, "row_cosine": 1.0,
                                                 "structure_correlation": 1.0})  # fmt: skip
    # Fewer than 3 shared ids, or other widths, leave nothing to correlate.
    c = _save(tmp_path / "c.pth", [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], person_ids=[1, 2, 3])
    with pytest.raises(ValueError, match=r"at least 3 person ids, got dims 2 and 2 and 2 shared"):
        lut_agreement(a, c)
    wide = _save(tmp_path / "w.pth", [[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]], person_ids=[0, 1, 2])
    with pytest.raises(ValueError, match=r"got dims 2 and 3"):
        lut_agreement(a, wide)


def test_compare_luts_prints_each_table_and_the_first_against_the_others(tmp_path, capsys):
    from helpers import load_tool

    r = 2**-0.5
    _save(tmp_path / "a.pth", [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], person_ids=[0, 1, 2])
    _save(tmp_path / "b.pth", [[1.0, -1.0], [1.0, 0.0], [0.0, 1.0]], person_ids=[2, 0, 1])
    paths = [str(tmp_path / name) for name in ("a.pth", "b.pth")]
    agreements = load_tool("compare_luts", "dev").main([paths[0], paths[1], paths[0]])
    assert agreements[paths[1]]["row_cosine"] == pytest.approx(2 / 3)
    assert agreements[paths[0]]["structure_correlation"] == pytest.approx(1.0)
    out = capsys.readouterr().out
    assert f"| {paths[0]} | compute | 3 | {2 * r / 3:.3f} | 0.365 | {r:.3f} |" in out
    assert re.search(rf"\| {re.escape(paths[1])} \| 3 \| 0.667 \| -?0.000 \|", out)
    _save(tmp_path / "c.pth", [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], person_ids=[1, 2, 3])
    with pytest.raises(ValueError, match=r"a.pth against .*c.pth: lut_agreement: .* 2 shared"):
        load_tool("compare_luts", "dev").main([paths[0], str(tmp_path / "c.pth")])
