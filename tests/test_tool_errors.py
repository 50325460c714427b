# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
Every user tool answers bad input (a missing file, a bad box, a bad option, a bad config key, a
malformed data file) with one line ``error: <what>, <where>, <what was expected>`` on stderr and
exit status 2, without a traceback; ``--debug`` or PERSONSEARCH_DEBUG=1 shows the traceback.
The tools run in this process through ``run_cli`` (what their ``__main__`` runs), two of them as
scripts too; every case fails before a model is built, so the file stays fast.
"""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

pytest.importorskip("detectron2")

from personsearch_kd.engine.command_line import (  # noqa: E402
    DEBUG_ENV,
    input_error_message,
    run_cli,
)

from helpers import REPO_ROOT, cli_error, load_tool, tiny_cfg  # noqa: E402

SAMPLE = os.path.join(REPO_ROOT, "datasets", "mot15-ps-sample")
# Every script of tools/ that a user runs, and the function its __main__ hands to run_cli.
TOOLS = {
    "train_net": "invoke_main",
    "lazyconfig_train_net": "invoke_main",
    "index_gallery": "main",
    "search": "main",
    "search_demo": "main",
    "export_lut": "main",
    "evaluate_pairs": "main",
    "evaluate_two_step": "main",
    "benchmark_index": "main",
    "benchmark_inference": "main",
    "benchmark_indexing": "main",
    "make_mot_sample": "main",
    "serve": "main",
    "benchmark_serve": "main",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny config, a 48x64 query image, a gallery folder, a non-image, a corrupt index."""
    root = tmp_path_factory.mktemp("tool_errors")
    paths = {"dir": str(root), "missing": str(root / "missing")}
    paths["config"] = str(root / "tiny.yaml")
    with open(paths["config"], "w") as f:
        f.write(tiny_cfg().dump())
    paths["image"] = str(root / "query.jpg")
    cv2.imwrite(paths["image"], np.full((64, 48, 3), 90, np.uint8))
    paths["gallery"] = str(root / "gallery")
    os.makedirs(paths["gallery"])
    cv2.imwrite(os.path.join(paths["gallery"], "a.jpg"), np.full((64, 48, 3), 90, np.uint8))
    paths["not_image"] = str(root / "not_an_image.jpg")
    with open(paths["not_image"], "w") as f:
        f.write("not an image")
    paths["weights"] = str(root / "weights.pth")  # a file: tools check it exists, then stop
    with open(paths["weights"], "wb") as f:
        f.write(b"\0" * 16)
    paths["bad_index"] = str(root / "bad_index")
    os.makedirs(paths["bad_index"])
    with open(os.path.join(paths["bad_index"], "index.json"), "w") as f:
        f.write("{not json")
    paths["bad_sample"] = str(root / "bad_sample")
    os.makedirs(paths["bad_sample"])
    with open(os.path.join(paths["bad_sample"], "split.json"), "w") as f:
        f.write('{"sequences": {"SEQ": {}}, "queries": {"per_id": 2}}')
    os.makedirs(os.path.join(paths["bad_sample"], "SEQ", "gt"))
    with open(os.path.join(paths["bad_sample"], "SEQ", "seqinfo.ini"), "w") as f:
        f.write("[Sequence]\nname=SEQ\nimDir=img1\nimWidth=48\nimHeight=64\nimExt=.jpg\n")
    open(os.path.join(paths["bad_sample"], "SEQ", "gt", "gt.txt"), "w").close()  # empty
    return paths


def _box(x0, y0, x1, y1):
    return ["--query-box", str(x0), str(y0), str(x1), str(y1)]


# (tool, kind of bad input, argv from the files fixture, text the error line must hold)
CASES = [
    # train_net.py
    ("train_net", "missing file", lambda f: ["--config-file", f["missing"] + ".yaml"],
     "--config-file {missing}.yaml: no such file"),
    ("train_net", "bad option", lambda f: ["--config-file", f["config"], "--num-gpus", "two"],
     "argument --num-gpus: invalid int value: 'two'"),
    ("train_net", "bad config key",
     lambda f: ["--config-file", f["config"], "--eval-only", "MODEL.NO_SUCH_KEY", "1"],
     "config key MODEL.NO_SUCH_KEY does not exist (in the config file or its KEY VALUE options; "
     "expected a key of"),
    ("train_net", "bad config value",
     lambda f: ["--config-file", f["config"], "--eval-only", "SOLVER.MAX_ITER", "many"],
     "config key SOLVER.MAX_ITER: 'many' is a str (in the config file or its KEY VALUE options; "
     "expected type int"),
    ("train_net", "odd KEY VALUE list", lambda f: ["--config-file", f["config"], "MODEL.DEVICE"],
     "KEY VALUE options ['MODEL.DEVICE']: odd length (expected pairs"),
    # lazyconfig_train_net.py
    ("lazyconfig_train_net", "missing file", lambda f: ["--config-file", f["missing"] + ".py"],
     "--config-file '{missing}.py': expected a LazyConfig .py file"),
    ("lazyconfig_train_net", "bad option", lambda f: ["--config-file"],
     "argument --config-file: expected one argument"),
    # index_gallery.py
    ("index_gallery", "missing file",
     lambda f: ["--config-file", f["missing"] + ".yaml", "--input", f["gallery"], "--output", "o"],
     "--config-file {missing}.yaml: no such file (expected a config .yaml file)"),
    ("index_gallery", "missing checkpoint",
     lambda f: ["--config-file", f["config"], "--input", f["gallery"], "--output",
                f["dir"] + "/index", "MODEL.WEIGHTS", f["missing"] + ".pth"],
     "MODEL.WEIGHTS {missing}.pth: no such file (set by {config} or its KEY VALUE options; "
     "expected a detectron2 checkpoint"),
    ("index_gallery", "missing input",
     lambda f: ["--config-file", f["config"], "--input", f["missing"], "--output",
                f["dir"] + "/index"],
     "{missing}: no such gallery file"),
    ("index_gallery", "bad option",
     lambda f: ["--config-file", f["config"], "--input", "x", "--output", "o", "--every", "0"],
     "--every must be at least 1"),
    ("index_gallery", "missing override",
     lambda f: ["--config-file", f["config"], "--override", f["missing"] + ".yaml", "--input",
                f["gallery"], "--output", "o"],
     "--override {missing}.yaml: no such file (expected a config .yaml file of keys)"),
    # serve.py
    ("serve", "missing index",
     lambda f: ["--config-file", f["config"], "--index", f["missing"]],
     "--index {missing}: no such folder (expected a gallery index folder made by "
     "tools/index_gallery.py)"),
    ("serve", "corrupt index",
     lambda f: ["--config-file", f["config"], "--index", f["bad_index"], "MODEL.WEIGHTS",
                f["weights"]],
     "{bad_index}/records.npz: missing; not a gallery index"),
    ("serve", "bad port", lambda f: ["--config-file", f["config"], "--index", f["dir"], "--port",
                                     "70000"], "--port 70000: expected 1 to 65535"),
    # search.py
    ("search", "missing index",
     lambda f: ["--config-file", f["config"], "--index", f["missing"], "--query-image",
                f["image"]],
     "--index {missing}: no such folder (expected a gallery index folder made by "
     "tools/index_gallery.py)"),
    ("search", "corrupt index",
     lambda f: ["--config-file", f["config"], "--index", f["bad_index"], "--query-image",
                f["image"], "MODEL.WEIGHTS", f["weights"]],
     "{bad_index}/records.npz: missing; not a gallery index"),
    ("search", "missing image",
     lambda f: ["--config-file", f["config"], "--index", f["gallery"], "--query-image",
                f["missing"] + ".jpg"],
     "--query-image {missing}.jpg: no such file (expected an image file)"),
    ("search", "unreadable image",
     lambda f: ["--config-file", f["config"], "--index", f["gallery"], "--query-image",
                f["not_image"]],
     "--query-image {not_image}: cannot be read (expected a JPEG/PNG image)"),
    ("search", "bad box",
     lambda f: ["--config-file", f["config"], "--index", f["gallery"], "--query-image",
                f["image"], *_box(10, 10, 60, 30)],
     "--query-box [10.0, 10.0, 60.0, 30.0]: expected 0 <= x0 < x1 <= 48 and 0 <= y0 < y1 <= 64 "
     "(pixels of {image})"),
    ("search", "bad option",
     lambda f: ["--config-file", f["config"], "--index", "i", "--query-image", "q", "--topk", "x"],
     "argument --topk: invalid int value: 'x'"),
    # search_demo.py
    ("search_demo", "missing image",
     lambda f: ["--config-file", f["config"], "--gallery", f["gallery"], "--query-image",
                f["missing"] + ".jpg", *_box(0, 0, 10, 10)],
     "--query-image {missing}.jpg: no such file (expected an image file)"),
    ("search_demo", "unreadable image",
     lambda f: ["--config-file", f["config"], "--gallery", f["gallery"], "--query-image",
                f["not_image"], *_box(0, 0, 10, 10)],
     "--query-image {not_image}: cannot be read (UnidentifiedImageError; expected a JPEG/PNG"),
    ("search_demo", "missing gallery",
     lambda f: ["--config-file", f["config"], "--gallery", f["missing"], "--query-image",
                f["image"], *_box(0, 0, 10, 10)],
     "--gallery {missing}: no such folder (expected a folder of images)"),
    ("search_demo", "bad box",
     lambda f: ["--config-file", f["config"], "--gallery", f["gallery"], "--query-image",
                f["image"], *_box(20, 10, 5, 30)],
     "--query-box [20.0, 10.0, 5.0, 30.0]: expected 0 <= x0 < x1 <= 48"),
    ("search_demo", "missing checkpoint",
     lambda f: ["--config-file", f["config"], "--gallery", f["gallery"], "--query-image",
                f["image"], *_box(0, 0, 10, 10), "--opts", "MODEL.WEIGHTS", f["missing"]],
     "MODEL.WEIGHTS {missing}: no such file"),
    ("search_demo", "bad option",
     lambda f: ["--config-file", f["config"], "--gallery", "g", "--query-image", "q",
                "--query-box", "1", "2", "3"],
     "argument --query-box: expected 4 arguments"),
    # export_lut.py
    ("export_lut", "missing checkpoint",
     lambda f: ["--config-file", f["config"], "--from-checkpoint", "--weights",
                f["missing"] + ".pth", "--output", f["dir"] + "/lut.pth"],
     "--weights {missing}.pth: no such file (expected a detectron2 checkpoint file)"),
    ("export_lut", "missing file",
     lambda f: ["--config-file", f["missing"] + ".yaml", "--random", "--output", "lut.pth"],
     "--config-file {missing}.yaml: no such file (expected a config .yaml file)"),
    ("export_lut", "bad config key",
     lambda f: ["--config-file", f["config"], "--random", "--output", f["dir"] + "/lut.pth",
                "MODEL.NO_SUCH_KEY", "1"],
     "config key MODEL.NO_SUCH_KEY does not exist"),
    ("export_lut", "bad option",
     lambda f: ["--config-file", f["config"], "--random", "--compute", "--output", "lut.pth"],
     "argument --compute: not allowed with argument --random"),
    # evaluate_pairs.py
    ("evaluate_pairs", "missing checkpoint",
     lambda f: ["--config-file", f["config"], "--weights", f["missing"] + ".pth"],
     "--weights {missing}.pth: no such file (expected a detectron2 checkpoint file)"),
    ("evaluate_pairs", "missing prefilter",
     lambda f: ["--config-file", f["config"], "--weights", f["weights"], "--top-n", "2",
                "--prefilter-config", f["missing"] + ".yaml", "--prefilter-weights",
                f["weights"]],
     "--prefilter-config {missing}.yaml: no such file (expected a config .yaml file)"),
    ("evaluate_pairs", "bad option",
     lambda f: ["--config-file", f["config"], "--weights", f["weights"], "--score", "best"],
     "argument --score: invalid choice: 'best'"),
    # evaluate_two_step.py
    ("evaluate_two_step", "missing checkpoint",
     lambda f: ["--detector-config", f["config"], "--detector-weights", f["weights"],
                "--reid-config", f["config"], "--reid-weights", f["missing"] + ".pth"],
     "--reid-weights {missing}.pth: no such file (expected a detectron2 checkpoint file)"),
    ("evaluate_two_step", "bad option", lambda f: ["--detector-config", f["config"]],
     "the following arguments are required: --detector-weights, --reid-config, --reid-weights"),
    # benchmark_index.py
    ("benchmark_index", "missing index", lambda f: ["--index", f["missing"]],
     "--index {missing}: no such folder (expected a gallery index folder"),
    ("benchmark_index", "corrupt index", lambda f: ["--index", f["bad_index"]],
     "{bad_index}/records.npz: missing; not a gallery index"),
    ("benchmark_index", "bad option", lambda f: ["--sizes", "0"],
     "--sizes [0]: expected integers >= 1"),
    # benchmark_inference.py
    ("benchmark_inference", "missing file", lambda f: ["--config-files", f["missing"] + ".yaml"],
     "--config-files {missing}.yaml: no such file (expected config .yaml files)"),
    ("benchmark_inference", "bad option",
     lambda f: ["--config-files", f["config"], "--precision", "fp7"],
     "argument --precision: invalid choice: 'fp7'"),
    # benchmark_indexing.py
    ("benchmark_indexing", "missing override",
     lambda f: ["--config-file", f["config"], "--input", f["gallery"],
                "--setting", "fast " + f["missing"] + ".yaml"],
     "--setting fast {missing}.yaml: no such file (expected an override .yaml)"),
    ("benchmark_indexing", "missing checkpoint",
     lambda f: ["--config-file", f["config"], "--input", f["gallery"], "--setting", "default",
                "MODEL.WEIGHTS", f["missing"] + ".pth"],
     "MODEL.WEIGHTS {missing}.pth: no such file"),
    ("benchmark_indexing", "bad setting",
     lambda f: ["--config-file", f["config"], "--input", f["gallery"],
                "--setting", "fast TEST.PERSON_SEARCH.PRECISION"],
     "--setting fast: ['TEST.PERSON_SEARCH.PRECISION']: expected KEY VALUE pairs"),
    ("benchmark_indexing", "two settings of one name",
     lambda f: ["--config-file", f["config"], "--input", f["gallery"], "--setting", "a",
                "--setting", "a"],
     "--setting: every setting needs its own NAME"),
    # benchmark_serve.py
    ("benchmark_serve", "no server", lambda f: ["--url", "http://127.0.0.1:9", "--seconds", "1"],
     "--url http://127.0.0.1:9: no web app answers there"),
    ("benchmark_serve", "bad option", lambda f: ["--clients", "0"],
     "--clients must be at least 1 and --seconds positive"),
    ("benchmark_serve", "missing process", lambda f: ["--server-pid", "999999999"],
     "--server-pid 999999999: no such process"),
    # make_mot_sample.py
    ("make_mot_sample", "missing folder", lambda f: ["--src", f["missing"], "--dst", "d"],
     "--src {missing}: no split.json (expected a MOTChallenge person-search folder)"),
    ("make_mot_sample", "malformed data",
     lambda f: ["--src", f["bad_sample"], "--dst", f["dir"] + "/copy"],
     "{bad_sample}/SEQ/gt/gt.txt: empty: no ground-truth row (expected comma-separated rows"),
    ("make_mot_sample", "bad option",
     lambda f: ["--src", SAMPLE, "--dst", f["dir"] + "/copy", "--quality", "0"],
     "--quality 0: expected a JPEG quality in [1, 100]"),
]  # fmt: skip


def _tool_main(tool):
    return getattr(load_tool(tool), TOOLS[tool])


def test_every_user_tool_is_covered():
    scripts = {n[:-3] for n in os.listdir(os.path.join(REPO_ROOT, "tools")) if n.endswith(".py")}
    assert scripts == set(TOOLS)
    for tool in TOOLS:
        assert {case[0] for case in CASES} >= {tool}
        text = open(os.path.join(REPO_ROOT, "tools", f"{tool}.py")).read()
        assert f"run_cli({TOOLS[tool]})" in text, tool


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}: {c[1]}" for c in CASES])
def test_bad_input_is_one_error_line_and_status_2(files, capsys, case):
    tool, _, argv, expected = case
    main = _tool_main(tool)
    line = cli_error(capsys, lambda args: run_cli(main, args), argv(files))
    assert expected.format(**files) in line, line


def test_a_malformed_split_json_in_a_tool_names_the_file(files, capsys, tmp_path):
    """The data loaders' AnnotationError reaches the user as the error line (per_id, gt.txt)."""
    src = tmp_path / "src"
    src.mkdir()
    with open(os.path.join(SAMPLE, "split.json")) as f:
        text = f.read()
    (src / "split.json").write_text(text.replace('"per_id": 2', '"per_id": 100000000'))
    from personsearch_kd.data.datasets.mot import load_mot_person_search

    with pytest.raises(ValueError) as error:
        load_mot_person_search(SAMPLE, str(src / "split.json"), "test")
    line = input_error_message(error.value)
    assert line.startswith(f"{src}/split.json: queries.per_id 100000000: ") and "expected" in line


@pytest.mark.parametrize("how", ["--debug", DEBUG_ENV])
def test_debug_shows_the_traceback(files, monkeypatch, how):
    main = _tool_main("index_gallery")
    argv = ["--config-file", files["config"], "--input", files["missing"], "--output", "o"]
    if how == "--debug":
        argv = ["--debug"] + argv
    else:
        monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(FileNotFoundError, match="no such gallery file"):
        run_cli(main, argv)


def test_bugs_keep_their_traceback():
    def buggy(argv):
        return None.attribute

    def asserting(argv):
        assert argv == ["x"], "an assertion of this project is a bug"

    with pytest.raises(AttributeError):
        run_cli(buggy, [])
    with pytest.raises(AssertionError):
        run_cli(asserting, [])
    with pytest.raises(TypeError):
        run_cli(lambda argv: len(5), [])
    assert run_cli(lambda argv: argv, ["a"]) == ["a"]


def _script(tool, argv, **env):
    return subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "tools", f"{tool}.py"), *argv],
        capture_output=True,
        text=True,
        timeout=300,
        # The environment's own deprecation warnings (torch.jit.script in detectron2) aside.
        env=dict(os.environ, PYTHONWARNINGS="ignore", **env),
    )


def test_scripts_print_no_traceback(files):
    """As a user runs them: the issue's examples, a bad box and a missing checkpoint."""
    box = _script(
        "search",
        ["--config-file", files["config"], "--index", files["gallery"], "--query-image",
         files["image"], *_box(0, 0, 100, 10)],
    )  # fmt: skip
    checkpoint = _script(
        "index_gallery",
        ["--config-file", files["config"], "--input", files["gallery"], "--output",
         files["dir"] + "/index", "MODEL.WEIGHTS", files["missing"] + ".pth"],
    )  # fmt: skip
    for run, expected in (
        (box, "error: --query-box [0.0, 0.0, 100.0, 10.0]: expected 0 <= x0 < x1 <= 48"),
        (checkpoint, f"error: MODEL.WEIGHTS {files['missing']}.pth: no such file"),
    ):
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
        assert run.stderr.splitlines() == [run.stderr.strip()], run.stderr
        assert run.stderr.startswith(expected), run.stderr
    debug = _script(
        "index_gallery",
        ["--config-file", files["config"], "--input", files["missing"], "--output", "o"],
        **{DEBUG_ENV: "1"},
    )
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    assert "FileNotFoundError" in debug.stderr.splitlines()[-1]
