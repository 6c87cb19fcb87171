"""A Python environment with only what the GPU machine brings, to rehearse the GPU check's wheels here.

    python benchmarks/gpu_sim_env.py DEST            # from the project's .venv
    bash benchmarks/gpu_wheels.sh --python-version 3.11 --dest DEST-wheels   # this machine's Python
    PYTHON=DEST/bin/python bash benchmarks/gpu_check.sh --device cpu --tiny --wheels DEST-wheels OUT

DEST becomes a fresh venv (no packages of its own, pip included) that sees, through one .pth file,
symlinks to exactly the distributions the GPU machine has preinstalled, taken from this venv:
torch, numpy, scipy, scikit-image, tifffile, pandas, pyarrow, matplotlib and tqdm, with their
own dependencies. pydantic, PyYAML, nibabel, pytest (and prefect, mlflow, dvc, kaggle) are not
there, as on that machine, so the check must bring them from the wheels folder.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import re
import shutil
import subprocess
import sys
from pathlib import Path

PREINSTALLED = ("torch", "numpy", "scipy", "scikit-image", "tifffile", "pandas", "pyarrow", "matplotlib", "tqdm")


def _name(requirement: str) -> str:
    return re.split(r"[ ;<>=!~\[(]", requirement.strip(), maxsplit=1)[0]


def closure(names: tuple[str, ...]) -> dict[str, metadata.Distribution]:
    """The distributions ``names`` need here, without extras or markers that do not apply."""
    from packaging.requirements import Requirement

    found: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        key = name.lower().replace("-", "_")
        if key in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found[key] = dist
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return found


def top_level(dist: metadata.Distribution) -> set[str]:
    """The first path parts a distribution installs into site-packages (packages, modules, dist-info)."""
    parts = set()
    for file in dist.files or []:
        first = file.parts[0]
        if first not in ("..", "__pycache__") and not first.endswith(".pth"):
            parts.add(first)
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dest", type=Path)
    args = parser.parse_args()
    dest = args.dest.resolve()
    if dest.exists():
        shutil.rmtree(dest)
    base = Path(getattr(sys, "_base_executable", sys.executable))
    subprocess.run([str(base), "-m", "venv", str(dest)], check=True)
    site = Path(metadata.distribution("torch").locate_file(""))
    links = dest / "preinstalled"
    links.mkdir()
    dists = closure(PREINSTALLED)
    for dist in dists.values():
        for part in top_level(dist):
            if (site / part).exists() and not (links / part).exists():
                (links / part).symlink_to(site / part)
    (next(dest.glob("lib/python*/site-packages")) / "preinstalled.pth").write_text(str(links) + "\n")
    print(f"{dest}: {len(dists)} distributions ({', '.join(sorted(dists))})")


if __name__ == "__main__":
    main()
