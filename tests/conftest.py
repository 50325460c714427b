# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
import importlib.util
import os

import pytest


def _detectron2_missing() -> bool:
    return importlib.util.find_spec("detectron2") is None


def _running_in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_configure(config):
    """Under CI (CI=true) every test must run: a missing detectron2 fails the run at once."""
    if _running_in_ci() and _detectron2_missing():
        raise pytest.UsageError(
            "CI=true but detectron2 is not importable: the model, dataset and distillation tests "
            "would be skipped. Install it first (.ci/run does, from ../shared/third_party)."
        )


def pytest_terminal_summary(terminalreporter):
    """One line saying how many tests were skipped because detectron2 is not importable."""
    if not _detectron2_missing():
        return
    skipped = [
        r for r in terminalreporter.stats.get("skipped", []) if "detectron2" in str(r.longrepr)
    ]
    terminalreporter.write_line(
        f"detectron2 is not importable: {len(skipped)} test file(s) that need it were SKIPPED "
        "whole (install it from its repository, see README 'Install', to run them)"
    )
