# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""TEST.PERSON_SEARCH.PRECISION: a reduced precision only where the device computes it natively."""

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("detectron2")

from detectron2.modeling import build_model  # noqa: E402

from personsearch_kd.modeling import precision  # noqa: E402
from personsearch_kd.modeling.precision import native_precisions, resolve_precision  # noqa: E402

from personsearch_kd.engine.command_line import run_cli  # noqa: E402

from helpers import REPO_ROOT, cli_error, load_tool, tiny_cfg  # noqa: E402


@pytest.fixture
def avx2_cpu(monkeypatch):
    """The check of an AVX2-only CPU (no AVX-512, so no AVX-512 BF16), forced on any machine."""
    monkeypatch.setattr(precision, "cpu_capability", lambda: "AVX2")


def test_an_avx2_cpu_refuses_bf16_in_one_line_naming_its_capability(avx2_cpu):
    assert native_precisions("cpu") == ("fp32",)
    for emulated in ("bf16", "fp16"):
        with pytest.raises(ValueError) as error:
            resolve_precision(emulated, "cpu")
        message = str(error.value)
        assert "\n" not in message
        assert f"PRECISION='{emulated}'" in message and "capability is AVX2" in message
        assert "use fp32, or auto" in message
    assert resolve_precision("auto", "cpu") == resolve_precision("fp32", "cpu") == "fp32"


def test_the_config_refuses_bf16_at_build_and_auto_runs_fp32_there(avx2_cpu):
    with pytest.raises(ValueError, match="capability is AVX2"):
        build_model(tiny_cfg(18, **{"TEST.PERSON_SEARCH.PRECISION": "bf16"}))
    model = build_model(tiny_cfg(18, **{"TEST.PERSON_SEARCH.PRECISION": "auto"})).eval()
    assert model.resolved_precision() == "fp32"
    image = torch.randint(0, 256, (3, 96, 128)).float()
    with torch.no_grad():
        (output,) = model([{"image": image, "query_boxes": [[10.0, 10.0, 40.0, 80.0]]}])
    assert output["instances"].reid_feats.dtype == torch.float32


def test_a_cpu_with_avx512_bf16_runs_auto_in_bf16(native_bf16):
    assert native_precisions("cpu") == ("fp32", "bf16")
    assert resolve_precision("auto", "cpu") == resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="PRECISION='fp16'"):  # AMX-FP16 is not there
        resolve_precision("fp16", "cpu")
    model = build_model(tiny_cfg(18, **{"TEST.PERSON_SEARCH.PRECISION": "auto"}))
    assert model.resolved_precision() == "bf16"
    assert model.inference_autocast().fast_dtype == torch.bfloat16


def test_an_avx512_cpu_without_its_bf16_instructions_refuses_bf16(monkeypatch):
    # AVX-512 alone (e.g. Skylake): oneDNN still emulates bf16.
    monkeypatch.setattr(precision, "cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(precision, "_cpu_has", lambda feature: False)
    with pytest.raises(ValueError, match="capability is AVX512.*AVX-512 BF16 or AMX"):
        resolve_precision("bf16", "cpu")
    assert resolve_precision("auto", "cpu") == "fp32"


def test_an_unknown_precision_names_the_choices():
    with pytest.raises(ValueError, match=r"PRECISION='int4': expected one of \['auto', 'bf16'"):
        resolve_precision("int4", "cpu")


def test_forcing_aten_to_avx2_makes_the_benchmark_refuse_bf16_in_one_line(tmp_path):
    # The real capability check, lowered as on an AVX2 machine (ATEN_CPU_CAPABILITY).
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(tiny_cfg(18).dump())
    env = dict(os.environ, ATEN_CPU_CAPABILITY="avx2", PYTHONPATH=REPO_ROOT)
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "tools", "benchmark_inference.py"),
         "--config-files", str(config_file), "--precision", "fp32", "bf16", "--iters", "1"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "capability is AVX2" in lines[0], result.stderr


def test_index_gallery_answers_an_emulated_precision_in_one_line(avx2_cpu, tmp_path, capsys):
    config_file, weights = tmp_path / "tiny.yaml", tmp_path / "w.pth"
    config_file.write_text(tiny_cfg(18).dump())
    weights.write_bytes(b"\0" * 16)  # checked to exist; the precision fails before it is read
    main = load_tool("index_gallery").main
    line = cli_error(
        capsys,
        lambda args: run_cli(main, args),
        ["--config-file", str(config_file), "--input", os.path.join(REPO_ROOT, "docs", "images"),
         "--output", str(tmp_path / "index"), "MODEL.WEIGHTS", str(weights),
         "TEST.PERSON_SEARCH.PRECISION", "bf16"],
    )  # fmt: skip
    assert "TEST.PERSON_SEARCH.PRECISION='bf16': cpu would emulate bf16" in line
    assert "capability is AVX2" in line
