"""The code keeps one shape: ``ruff check`` (ruff.toml: imports sorted, pyflakes, pycodestyle, bugbear,
pyupgrade) passes on the whole tree. ``make format`` fixes what it can."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    ruff = Path(sys.executable).with_name("ruff")
    result = subprocess.run([str(ruff), "check", "--no-cache", "--output-format", "concise", "."], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"ruff check found (make format fixes what it can):\n{result.stdout}{result.stderr}"
