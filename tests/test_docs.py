# Copyright (c) personsearch_kd contributors. Licensed under the Apache License 2.0.
"""
The user-facing documents (README.md, docs/*.md) report results by question, not by the work
period that produced them: no work-log labels ("session 17", "stop 3", "issue 12", "lost with
its machine", "new machine"; git keeps the log), and docs/results.md stays a report one can read
through (at most RESULTS_MAX_LINES lines). One test per file, so each file passes or fails alone.
"""

import glob
import os
import re

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(
    os.path.relpath(p, REPO_ROOT) for p in glob.glob(os.path.join(REPO_ROOT, "docs", "*.md"))
)
RESULTS_MAX_LINES = 550

# Each pattern names a kind of work-log label; matched case-insensitively.
WORK_LOG_LABELS = {
    "work period": r"\bsessions? \d+",  # "session 17", "sessions 25–28"
    "work-period anchor": r"\bsession-\d+",  # "#...-session-22": a link to a dated heading
    "stop": r"\bstop \d+",
    "issue number": r"\bissue #?\d+",
    "lost run": r"\blost with\b|\(lost\b",
    "machine history": r"\bnew machine\b",
}
_LABEL_RE = re.compile("|".join(f"(?:{p})" for p in WORK_LOG_LABELS.values()), re.IGNORECASE)


def work_log_labels(text):
    """Each work-log label in ``text`` as (line number, the label, the line)."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for match in _LABEL_RE.finditer(line):
            found.append((number, match.group(0), line.strip()))
    return found


@pytest.mark.parametrize(
    "text, labels",
    [
        ("in session 17 we ran", ["session 17"]),
        ("Sessions 25–28 and sessions 3", ["Sessions 25", "sessions 3"]),
        ("[x](results.md#does-it-session-22)", ["session-22"]),
        ("stopped at stop 3", ["stop 3"]),
        ("the DKD issue 17, issue #4", ["issue 17", "issue #4"]),
        ("checkpoints lost with its machine (lost at 94 %)", ["lost with", "(lost"]),
        ("on a New machine", ["New machine"]),
        ("3 seeds; training sessions of the OIM sync; the issue of the step; 2000 iterations", []),
    ],
)
def test_work_log_labels_are_found(text, labels):
    assert [label for _, label, _ in work_log_labels(text)] == labels


@pytest.mark.parametrize("doc", DOCS)
def test_no_work_log_labels(doc):
    with open(os.path.join(REPO_ROOT, doc), encoding="utf-8") as f:
        found = work_log_labels(f.read())
    listing = "\n".join(f"  {doc}:{n}: {label!r} in: {line[:100]}" for n, label, line in found)
    assert not found, f"{doc} has {len(found)} work-log label(s) (git keeps the log):\n{listing}"


def test_results_report_is_short():
    with open(os.path.join(REPO_ROOT, "docs", "results.md"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) <= RESULTS_MAX_LINES, (
        f"docs/results.md has {len(lines)} lines (at most {RESULTS_MAX_LINES}): a report by "
        "question, not a log; move superseded runs out rather than adding sections"
    )
