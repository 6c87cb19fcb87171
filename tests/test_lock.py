"""The committed dvc.lock is what the committed code and params produce.

A fresh clone has no data and no cache, so ``dvc status`` lists every output as missing; it must
not list a changed command, a changed params value or a changed code dep: that would mean the
committed outputs (metrics, pictures, dvc.lock) were made by other code than the clone's, and
every stage would rerun for nothing. Python caches are not deps (``.dvcignore``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CODE = ("flows/", "tasks/", "unet/", "params.yaml")


def stale(status: dict) -> list[str]:
    """What ``dvc status --json`` says changed in code, params or commands (not in data)."""
    found = []
    for stage, changes in status.items():
        for change in changes:
            if change == "changed command":
                found.append(f"{stage}: its command")
            elif isinstance(change, dict):
                for path, what in change.get("changed deps", {}).items():
                    if path.startswith(CODE):
                        found.append(f"{stage}: {path} {what}")
    return found


def test_the_checker_sees_what_a_stale_lock_looks_like():
    status = {"train": [{"changed deps": {"data/prepared": "deleted", "unet/train": "modified",
                                          "params.yaml": {"train.epochs": "modified"}}},
                        {"changed outs": {"models/best.pt": "not in cache"}}, "changed command"]}
    assert stale(status) == ["train: unet/train modified", "train: params.yaml {'train.epochs': 'modified'}",
                             "train: its command"]
    assert stale({"train": [{"changed outs": {"models/best.pt": "not in cache"}}]}) == []


@pytest.mark.integration
def test_the_committed_lock_matches_the_code_and_params():
    result = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    found = stale(json.loads(result.stdout or "{}"))
    assert not found, ("dvc.lock was not made by this code and these params; run `dvc repro` (make demo) and "
                       "commit dvc.lock with the outputs it tracks in git:\n  " + "\n  ".join(found))


def test_python_caches_are_not_deps():
    ignored = (REPO / ".dvcignore").read_text().split()
    assert "__pycache__/" in ignored and "*.pyc" in ignored
