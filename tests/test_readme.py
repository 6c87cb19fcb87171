"""The README is the map: its Layout names every package and module that exists and nothing that does not;
every picture and local link it shows resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
TOP_LEVEL = ("flows", "tasks", "unet")


def layout_block(text: str = README) -> str:
    return text.split("## Layout", 1)[1].split("```", 2)[1]


def layout_entries(block: str) -> dict[str, set[str]]:
    """Folder -> the file and folder names the Layout gives under it ("unet/io" -> {"atomic.py", ...})."""
    entries: dict[str, set[str]] = {}
    folder = None
    for line in block.splitlines():
        if match := re.match(r"^(flows|tasks|unet|benchmarks|tests)/\s", line):
            folder = match.group(1)
        elif match := re.match(r"^  ([a-z_]+\.py|[a-z_]+/)\s", line):
            name = match.group(1)
            if name.endswith("/"):
                folder = f"unet/{name.rstrip('/')}"
                entries.setdefault("unet", set()).add(name.rstrip("/"))
            else:
                folder = "unet"
                entries.setdefault("unet", set()).add(name)
                continue
        elif not line.startswith(" ") and line.strip():
            folder = None
        if folder:
            entries.setdefault(folder, set()).update(re.findall(r"(?<![/\w])([a-z_]+\.py)\b", line))
    return entries


def modules(folder: str) -> set[str]:
    path = REPO / folder
    found = {p.name for p in path.glob("*.py") if p.name != "__init__.py"}
    if folder == "unet":
        found |= {p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))}
    return found


def layout_problems(block: str) -> tuple[dict[str, list[str]], list[str]]:
    """(modules the Layout omits, by folder; paths it names that do not exist)."""
    entries = layout_entries(block)
    folders = [*TOP_LEVEL, *(f"unet/{p.name}" for p in (REPO / "unet").iterdir()
                             if p.is_dir() and (p / "__init__.py").is_file())]
    missing = {folder: sorted(modules(folder) - entries.get(folder, set())) for folder in folders}
    absent = sorted(f"{folder}/{name}" for folder, names in entries.items() for name in names
                    if not (REPO / folder / name).exists())
    return {k: v for k, v in missing.items() if v}, absent


def test_the_layout_names_every_module_of_the_code():
    missing, _ = layout_problems(layout_block())
    assert not missing, "README Layout omits these (add a word on each)"


def test_every_path_the_layout_names_exists():
    _, absent = layout_problems(layout_block())
    assert not absent, "README Layout names what is not there"


@pytest.mark.parametrize("target", sorted(set(re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", README))))
def test_every_picture_the_readme_shows_exists(target):
    assert (REPO / target).is_file(), f"README shows {target}, which is not in the repository"


def test_a_planted_omission_and_a_planted_ghost_are_caught():
    missing, absent = layout_problems(layout_block().replace("  split.py", "  splitx.py"))
    assert missing == {"unet": ["split.py"]} and absent == ["unet/splitx.py"]
