# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""dev/summarize_seeds.py on hand-written run directories: the numbers, and the refusals."""

import json
import os
import statistics
import subprocess
import sys

import pytest
import yaml

TOOL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dev",
                    "summarize_seeds.py")  # fmt: skip


def make_run(root, name, seed, evaluations, lam=0.1, max_iter=2000, teacher="t.pth"):
    """A train_net.py-like OUTPUT_DIR: config.yaml and metrics.json with training records between
    evaluations; evaluations: [(iteration, mAP, top1, det_AP, det_recall)], stored as detectron2
    does (EVAL_PERIOD's at the 0-based iteration - 1, the final one at MAX_ITER)."""
    run = root / name
    run.mkdir()
    config = {
        "SEED": seed, "OUTPUT_DIR": str(run), "SOLVER": {"MAX_ITER": max_iter, "BASE_LR": 0.01},
        "MODEL": {"OIM": {"LOSS_WEIGHT": lam}, "TEACHERS": {"reid": {"WEIGHTS": teacher}}},
    }  # fmt: skip
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    records = []
    for iteration, mAP, top1, ap, recall in evaluations:
        records.append({"iteration": iteration - 1, "total_loss": 1.0})
        records.append({
            "iteration": iteration if iteration == max_iter else iteration - 1,
            "person_search/mAP": mAP, "person_search/top1": top1,
            "person_search/det_AP": ap, "person_search/det_recall": recall,
        })  # fmt: skip
    (run / "metrics.json").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return str(run)


def summarize(*args):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True)


def rows(stdout):
    lines = [line for line in stdout.splitlines() if line.startswith("| ") and "---" not in line]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_final_evaluations_and_sample_std_per_group_with_the_paired_baseline_difference(tmp_path):
    control = [
        make_run(tmp_path, "c0", 0, [(1000, 10.0, 20.0, 50.0, 60.0),
                                     (2000, 30.0, 60.0, 80.0, 90.0)]),
        make_run(tmp_path, "c1", 1, [(2000, 34.0, 62.0, 84.0, 91.0)]),
        make_run(tmp_path, "c2", 2, [(2000, 35.0, 64.0, 85.0, 92.0)]),
    ]  # fmt: skip
    student = [
        make_run(tmp_path, "s0", 0, [(2000, 40.0, 70.0, 80.0, 90.0)], lam=1.0),
        make_run(tmp_path, "s1", 1, [(2000, 42.0, 72.0, 82.0, 91.0)], lam=1.0),
    ]
    result = summarize("--group", "control", *control, "--group", "KD", *student,
                       "--baseline", "control")  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = rows(result.stdout)
    assert table[0] == ["model", "seed", "iteration", "mAP", "top-1", "det AP", "det recall",
                        "Δ mAP vs control, paired by seed"]  # fmt: skip
    # The last evaluation of each run, not the one at iteration 1000.
    assert table[1][:7] == ["control", "0", "2000", "30.00", "60.00", "80.00", "90.00"]
    mean, std = statistics.mean([30, 34, 35]), statistics.stdev([30, 34, 35])
    assert table[4][:4] == ["**control, mean ± std**", "0, 1, 2", "", f"{mean:.2f} ± {std:.2f}"]
    assert table[4][7] == "–"
    # KD ran seeds 0 and 1 only: compared with the control's seeds 0 and 1 (40 - 30, 42 - 34), not
    # with the control's 3-seed mean.
    assert table[7][3] == "41.00 ± 1.41" and table[7][7] == "+9.00 (0: +10.00, 1: +8.00)"


def test_unseeded_runs_are_compared_by_their_means_marked_unpaired(tmp_path):
    control = [make_run(tmp_path, f"c{i}", -1, [(2000, v, 60.0, 80.0, 90.0)])
               for i, v in enumerate([30.0, 34.0])]  # fmt: skip
    student = [make_run(tmp_path, "s", 3, [(2000, 40.0, 70.0, 80.0, 90.0)], lam=1.0)]
    result = summarize("--group", "control", *control, "--group", "KD", *student,
                       "--baseline", "control")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert rows(result.stdout)[-1][7] == "+8.00 unpaired"


def test_runs_of_different_settings_are_not_averaged_unless_the_key_is_named(tmp_path):
    a = make_run(tmp_path, "a", 0, [(2000, 30.0, 60.0, 80.0, 90.0)], teacher="t0.pth")
    b = make_run(tmp_path, "b", 1, [(2000, 34.0, 62.0, 84.0, 91.0)], teacher="t1.pth")
    refused = summarize("--group", "x", a, b)
    assert refused.returncode != 0
    assert "differ in MODEL.TEACHERS.reid.WEIGHTS ('t0.pth' vs 't1.pth')" in refused.stderr
    assert "--vary MODEL.TEACHERS.reid.WEIGHTS" in refused.stderr
    allowed = summarize("--group", "x", a, b, "--vary", "MODEL.TEACHERS.reid.WEIGHTS")
    assert allowed.returncode == 0, allowed.stderr
    assert rows(allowed.stdout)[3][3] == "32.00 ± 2.83"


def test_an_earlier_evaluation_of_unfinished_runs_with_iteration(tmp_path):
    done = make_run(tmp_path, "done", 0, [(1000, 10.0, 20.0, 50.0, 60.0),
                                          (2000, 30.0, 60.0, 80.0, 90.0)])  # fmt: skip
    running = make_run(tmp_path, "running", 1, [(1000, 14.0, 22.0, 54.0, 62.0)])
    result = summarize("--group", "x", done, running, "--iteration", "1000")
    assert result.returncode == 0, result.stderr
    table = rows(result.stdout)
    assert [row[:4] for row in table[1:3]] == [
        ["x", "0", "999", "10.00"], ["x", "1", "999", "14.00"]
    ]  # fmt: skip
    assert table[3][3] == "12.00 ± 2.83"
    missing = summarize("--group", "x", done, running, "--iteration", "1500")
    assert missing.returncode != 0
    assert "no evaluation at iteration 1500 (evaluated at [999, 2000])" in missing.stderr


@pytest.mark.parametrize(
    "case, message",
    [
        ("unfinished", "last evaluation at iteration 999, SOLVER.MAX_ITER is 2000"),
        ("same_seed", "a SEED appears twice ([0, 0])"),
        ("no_evaluation", "no evaluation recorded"),
        ("not_a_run", "config.yaml: missing"),
    ],
)
def test_bad_runs_are_refused_naming_the_file_or_group(tmp_path, case, message):
    ok = make_run(tmp_path, "ok", 0, [(2000, 30.0, 60.0, 80.0, 90.0)])
    if case == "unfinished":
        other = make_run(tmp_path, "bad", 1, [(1000, 10.0, 20.0, 50.0, 60.0)])
    elif case == "same_seed":
        other = make_run(tmp_path, "bad", 0, [(2000, 31.0, 60.0, 80.0, 90.0)])
    elif case == "no_evaluation":
        other = make_run(tmp_path, "bad", 1, [])
    else:
        other = str(tmp_path / "empty")
        os.mkdir(other)
    result = summarize("--group", "x", ok, other)
    assert result.returncode != 0 and message in result.stderr
    if case in ("unfinished", "no_evaluation", "not_a_run"):
        assert os.path.join(other, "") in result.stderr  # the file is named
