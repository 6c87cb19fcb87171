"""The way back after ``dvc exp apply`` (README, "Back from `dvc exp apply`"), in a real DVC repository.

A two-stage pipeline in this project's style: a param each, a cached folder (``data/augmented``), a
cached ``persist: true`` model, git-kept metrics, curve and overlays (``cache: false``). Its outputs
name the machine that made them, as torch's bytes do, so a dvc.lock committed elsewhere names
objects this cache lacks. The README's own lines run; the stages log every run, so a stage that
would rerun is seen.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_dvc_pipeline import dvc

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
NO_PREFECT = ""  # for test_dvc_pipeline's helper: these stages talk to no Prefect server
STAGE = """\
import os, sys
from pathlib import Path

def write(path, text):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)

stage, value = sys.argv[1:]
machine = os.environ["MACHINE"]  # torch's floats differ between CPUs: so do these bytes
with open(os.environ["RUNS"], "a") as log:
    log.write(f"{stage}\\n")
if stage == "augment":
    write("data/augmented/copies.txt", f"elastic copies, seed {value}, on {machine}\\n")
else:
    write("models/best.pt", f"{value} epochs on {Path('data/augmented/copies.txt').read_text()} on {machine}\\n")
    write("metrics/train.json", f'{{"epochs": {value}}}\\n')
    write("metrics/train_history.csv", "epoch,val_dsc\\n" + "".join(f"{e},0.{e}\\n" for e in range(int(value))))
    write(f"reports/overlays/patient-{value}.png", f"the best patient of {value} epochs\\n")
"""
DVC_YAML = """\
stages:
  augment:
    cmd: python stage.py augment ${augment.seed}
    deps: [stage.py]
    params: [augment]
    outs:
      - data/augmented
  train:
    cmd: python stage.py train ${train.epochs}
    deps: [stage.py, data/augmented]
    params: [train]
    outs:
      - models/best.pt:
          persist: true
      - reports/overlays:
          cache: false
    metrics:
      - metrics/train.json:
          cache: false
    plots:
      - metrics/train_history.csv:
          cache: false
          persist: true
"""
KEPT = ["params.yaml", "dvc.lock", "data", "models", "metrics", "reports"]


def readme_way_back() -> str:
    text = (REPO / "README.md").read_text()
    found = re.search(r"^### Back from `dvc exp apply`\n.*?^```bash\n(.*?)^```", text, re.M | re.S)
    assert found, "README.md: no ```bash block under '### Back from `dvc exp apply`'"
    return found.group(1)


def with_venv() -> dict[str, str]:
    """This environment with this Python's bin first on PATH: ``dvc`` and ``python`` are the venv's."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def shell(repo: Path, script: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", "-ec", script], cwd=repo, env=with_venv(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 or not check, f"{script}\nfailed:\n{result.stdout}\n{result.stderr}"
    return result


def state(repo: Path) -> dict[str, bytes]:
    files = {}
    for name in KEPT:
        path = repo / name
        for file in [path] if path.is_file() else sorted(path.rglob("*")):
            if file.is_file():
                files[str(file.relative_to(repo))] = file.read_bytes()
    return files


@pytest.fixture(scope="module")
def committed(tmp_path_factory) -> Path:
    """The project as its author committed it: dvc.lock, metrics and pictures from the author's machine."""
    repo = tmp_path_factory.mktemp("committed")
    (repo / "stage.py").write_text(STAGE)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    (repo / "params.yaml").write_text("augment:\n  seed: 0\ntrain:\n  epochs: 2\n")
    (repo / ".gitignore").write_text("/data/\n/models/\n")
    shell(repo, "git init -q && git config user.name t && git config user.email t@t")
    runs = repo.parent / f"{repo.name}.runs"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MACHINE", "the-authors")
        env.setenv("RUNS", str(runs))
        dvc(repo, "init", "-q", api=NO_PREFECT)
        dvc(repo, "repro", api=NO_PREFECT)
    shell(repo, "git add -A && git commit -qm 'the pipeline and its results'")
    return repo


def naive_attempt(repo: Path) -> None:
    """What the issue's user did first: git checkout + dvc checkout; it may fail, what it leaves is the start."""
    shell(repo, "git checkout . && dvc checkout", check=False)


# (your machine, what you did after dvc exp apply before the README's lines); in each, the experiment
# also writes an overlay your run has not (another best patient), which git checkout leaves behind
CASES = {
    "your run is the committed one": ("the-authors", None),
    "your run made other bytes": ("yours", None),
    "other bytes, git checkout + dvc checkout tried first": ("yours", naive_attempt),
}


@pytest.mark.parametrize("machine, before", CASES.values(), ids=CASES.keys())
def test_the_readme_way_back_restores_your_run_from_the_cache(committed, tmp_path, monkeypatch, machine, before):
    """Your run, an experiment (--temp, as the Prefect UI runs it), dvc exp apply, the README's lines: your
    run's files again, byte for byte, and nothing to rerun."""
    repo = tmp_path / "repo"
    monkeypatch.setenv("MACHINE", machine)
    monkeypatch.setenv("RUNS", str(tmp_path / "runs"))
    if machine == "the-authors":  # the author's own workspace: cache, outputs and all
        shutil.copytree(committed, repo)
    else:  # a fresh clone: the committed dvc.lock, an empty cache; make demo here makes other bytes
        shell(tmp_path, f"git clone -q {committed} repo && cd repo && git config user.name t && "
                        "git config user.email t@t")
        dvc(repo, "repro", api=NO_PREFECT)
    yours = state(repo)
    dvc(repo, "exp", "run", "--temp", "-n", "longer", "-S", "train.epochs=3", api=NO_PREFECT)
    dvc(repo, "exp", "apply", "longer", api=NO_PREFECT)
    assert state(repo)["models/best.pt"].startswith(b"3 epochs")
    if before:
        before(repo)
    runs = (tmp_path / "runs").read_text()

    shell(repo, readme_way_back())

    assert state(repo) == yours, "the README's way back left other files than your run's"
    assert "Data and pipelines are up to date." in dvc(repo, "status", api=NO_PREFECT).stdout
    assert "Running stage" not in dvc(repo, "repro", api=NO_PREFECT).stdout
    assert (tmp_path / "runs").read_text() == runs, "a stage ran again"
