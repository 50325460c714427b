# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""tests/conftest.py: without detectron2, CI (CI=true) fails; elsewhere the skips are counted."""

import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs pytest in a fresh interpreter where detectron2 cannot be found (a None entry in
# sys.modules makes importlib.util.find_spec return None and any import of it fail).
_PYTEST_WITHOUT_DETECTRON2 = (
    "import sys; sys.modules['detectron2'] = None; import pytest; "
    "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', *sys.argv[1:]]))"
)


def _run(test_files, ci):
    env = dict(os.environ)
    env.pop("CI", None)
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-c", _PYTEST_WITHOUT_DETECTRON2, *test_files],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_ci_without_detectron2_fails_instead_of_skipping():
    result = _run(["tests/test_oim_loss.py"], ci=True)
    assert result.returncode == 4, result.stdout + result.stderr  # pytest's usage error
    assert "CI=true but detectron2 is not importable" in result.stdout + result.stderr


def test_without_ci_missing_detectron2_skips_and_says_how_many():
    result = _run(["tests/test_kd_losses.py", "tests/test_model.py"], ci=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout
    assert "1 test file(s) that need it were SKIPPED" in result.stdout


def _run_browser_test_without_chromium(ci):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable))  # no chromium on this PATH
    env.pop("CI", None)
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_app_browser.py"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_ci_without_chromium_fails_the_browser_test_instead_of_skipping_it():
    result = _run_browser_test_without_chromium(ci=True)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "CI: chromium and chromedriver are needed" in result.stdout + result.stderr
    result = _run_browser_test_without_chromium(ci=False)
    assert "1 skipped" in result.stdout, result.stdout + result.stderr  # the whole module
