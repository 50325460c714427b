# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
import importlib.util


def pytest_terminal_summary(terminalreporter):
    """One line saying how many tests were skipped because detectron2 is not importable."""
    if importlib.util.find_spec("detectron2") is not None:
        return
    skipped = [
        r for r in terminalreporter.stats.get("skipped", []) if "detectron2" in str(r.longrepr)
    ]
    terminalreporter.write_line(
        f"detectron2 is not importable: {len(skipped)} test file(s) that need it were SKIPPED "
        "whole (install it from its repository, see README 'Install', to run them)"
    )
