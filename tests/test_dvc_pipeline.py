"""`dvc repro` for real, in a temporary copy of the repository, on a tiny synthetic set.

The stages run as DVC runs them (``python -m flows.<stage>`` subprocesses) against the session's
Prefect test server, so this is the path a user takes, minus only the data size.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import merged

REPO = Path(__file__).resolve().parents[1]
COPIED = ["flows", "tasks", "unet", "dvc.yaml", "params.yaml", ".gitignore", ".dvcignore", ".dvc/config",
          ".dvc/.gitignore", ".dvc/plots",
          ".dvc/plots.html"]
TINY = {
    "data": {"synthetic": {"n_patients": 6, "min_slices": 4, "max_slices": 6, "image_size": 32}},
    "prepare": {"image_size": 32, "split": {"val_fraction": 0.2, "test_fraction": 0.2}},
    "model": {"features": 4, "depth": 2},
    "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 4},
    "evaluate": {"overlay_patients": 1},
    "registry": {"champion_floor": 0.0},  # a 1-epoch model at 32 px: the champion rule itself is tested
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory, prefect_api) -> Path:
    root = tmp_path_factory.mktemp("repo")
    for name in COPIED:
        src, dst = REPO / name, root / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    params = merged(yaml.safe_load((root / "params.yaml").read_text()), TINY)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=root, check=True)
    return root


def dvc(repo: Path, *args: str, api: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_API_URL": api,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_repro_augment_then_nothing_to_do(repo, prefect_api):
    dvc(repo, "repro", "augment", api=prefect_api)
    manifest = pd.read_parquet(repo / "data/prepared/manifest.parquet")
    assert manifest["patient"].nunique() == 6
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert (repo / "data/raw/kaggle_3m/data.csv").exists()
    assert json.loads((repo / "data/prepared/summary.json").read_text())["image_size"] == 32
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert {"download", "prepare", "weightmaps", "augment"} <= set(lock["stages"])
    weights = json.loads((repo / "data/weightmaps/weightmaps.json").read_text())
    assert weights["slices"] == len(manifest) and weights["class_weights"]["foreground"] > 1
    augmented = json.loads((repo / "data/augmented/augment.json").read_text())
    folds = yaml.safe_load((repo / "params.yaml").read_text())["cv"]["folds"]
    # with cross-validation every patient trains some fold, so every patient gets its copies
    assert augmented["train_slices"] == (len(manifest) if folds else (manifest["split"] == "train").sum())
    assert (repo / "reports/augment_grid.png").stat().st_size > 10_000

    again = dvc(repo, "repro", "augment", api=prefect_api)
    assert "Running stage" not in again.stdout
    status = dvc(repo, "status", "augment", api=prefect_api)
    assert "up to date" in status.stdout


def test_a_param_change_reruns_only_what_depends_on_it(repo, prefect_api):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["prepare"]["image_size"] = 16
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = dvc(repo, "repro", "augment", api=prefect_api)
    assert "Running stage 'prepare'" in result.stdout and "Running stage 'augment'" in result.stdout
    assert "Running stage 'download'" not in result.stdout
    assert json.loads((repo / "data/prepared/summary.json").read_text())["image_size"] == 16


def test_push_and_pull_round_trip_through_the_default_local_remote(repo, prefect_api):
    dvc(repo, "repro", "augment", api=prefect_api)
    before = (repo / "data/prepared/manifest.parquet").read_bytes()
    dvc(repo, "push", api=prefect_api)
    assert any((repo / "dvc-storage").rglob("*")), "the default remote is the repo's dvc-storage/ folder"
    shutil.rmtree(repo / ".dvc/cache")
    shutil.rmtree(repo / "data")
    dvc(repo, "pull", "--with-deps", "augment", api=prefect_api)
    assert (repo / "data/prepared/manifest.parquet").read_bytes() == before
    assert "up to date" in dvc(repo, "status", "augment", api=prefect_api).stdout


def embedded(markdown: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r"\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)]


def stage_artifacts(since: datetime) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    keys = ["lgg-weightmaps", "lgg-augment", "lgg-train", "lgg-evaluate", "lgg-cv", "lgg-radiogenomics"]
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    return {a.key: a.data for a in sorted(found, key=lambda a: a.created) if a.created >= since}


def test_whole_pipeline_ends_with_a_champion_a_new_process_can_use(repo, prefect_api):
    started = datetime.now(UTC)
    ran = set(re.findall(r"Running stage '([a-z]+)'", dvc(repo, "repro", api=prefect_api).stdout))
    # every stage's report shows its pictures themselves (offline, no file server), byte for byte
    # (weightmaps and augment may have run in an earlier test; test_deployments checks theirs too)
    assert {"train", "evaluate", "cv", "radiogenomics"} <= ran
    reports = stage_artifacts(started)
    folds = yaml.safe_load((repo / "params.yaml").read_text())["cv"]["folds"]
    pictures = {"lgg-weightmaps": ["reports/weightmaps.png"], "lgg-augment": ["reports/augment_grid.png"],
                "lgg-train": ["metrics/train_curve.png"], "lgg-radiogenomics": ["reports/radiogenomics.png"],
                "lgg-evaluate": ["metrics/per_patient.png", *sorted(str(p.relative_to(repo)) for p in
                                                                    (repo / "reports/overlays").glob("*.png"))],
                "lgg-cv": [f"data/cv/fold-{k:02d}/train_curve.png" for k in range(folds)]}
    pictures = {key: paths for key, paths in pictures.items() if key.removeprefix("lgg-") in ran}
    assert set(reports) == set(pictures)
    for key, paths in pictures.items():
        assert embedded(reports[key]) == [(repo / path).read_bytes() for path in paths], key
    registry = json.loads((repo / "metrics/registry.json").read_text())
    assert registry["decision"] == "first" and registry["champion_version"] == registry["version"]
    assert "dsc_mean" in json.loads((repo / "metrics/eval.json").read_text())
    script = (
        "import sys, mlflow, numpy as np, tifffile, pathlib\n"
        "folder = sorted(pathlib.Path('data/raw/kaggle_3m').glob('TCGA_*'))[0]\n"
        "files = sorted((f for f in folder.glob('*.tif') if 'mask' not in f.name),"
        " key=lambda f: int(f.stem.split('_')[-1]))\n"
        "slices = np.stack([tifffile.imread(f) for f in files])\n"
        "mask = mlflow.pyfunc.load_model('models:/lgg-unet@champion').predict(slices)\n"
        "print(mask.dtype, mask.shape == slices.shape[:3], set(np.unique(mask)) <= {0, 1})\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=repo, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["uint8", "True", "True"]
    again = dvc(repo, "repro", api=prefect_api)
    assert "Running stage" not in again.stdout
    assert "up to date" in dvc(repo, "status", api=prefect_api).stdout


def test_dvc_plots_show_draws_offline(repo, prefect_api, tmp_path):
    """The page `dvc plots show` writes loads nothing from the internet (hospital networks): the chart
    libraries are inlined by the project's template (.dvc/plots.html, named in .dvc/config)."""
    dvc(repo, "repro", "evaluate", api=prefect_api)
    dvc(repo, "plots", "show", "-o", str(tmp_path / "plots"), api=prefect_api)
    page = (tmp_path / "plots" / "index.html").read_text()
    assert not re.findall(r"<(?:script|link|img)[^>]+(?:src|href)=[\"']?(?:https?:)?//", page)  # nothing fetched
    for library in ("vega 5.20.2", "vega-lite 5.2.0", "vega-embed 6.18.2"):
        assert f"<!-- {library}" in page, library
    assert page.count("vegaEmbed(") >= 2  # the training curves and the per-patient bars
    assert '"val_dsc"' in page and '"TCGA_' in page  # their data, inlined too
    # and a browser that reaches no other host draws every chart (vega's marks, no error in their place)
    from browser import rendered

    dom = rendered((tmp_path / "plots" / "index.html").as_uri(), wait_ms=10000)
    drawn = re.findall(r'<(?:canvas|svg)[^>]*class="marks"', dom)
    assert len(drawn) == page.count("vegaEmbed(") and "Error" not in re.sub(r"<script.*?</script>", "", dom, flags=re.S)


def test_the_readme_s_dvc_exp_show_line_keeps_the_test_and_cv_figures(repo, prefect_api):
    """DVC names a metric found in two files by its file (``metrics/eval.json:dsc_mean``): the README's
    line must keep those columns, not drop them."""
    import shlex

    line = next(line for line in (REPO / "README.md").read_text().splitlines() if line.startswith("dvc exp show --"))
    dvc(repo, "repro", api=prefect_api)
    header = dvc(repo, *shlex.split(line)[1:], "--csv", api=prefect_api).stdout.splitlines()[0].split(",")
    for column in ("Experiment", "best_val_dsc", "metrics/eval.json:dsc_mean", "metrics/eval.json:dsc_median",
                   "metrics/cv.json:dsc_mean", "train.epochs", "train.lr", "prepare.image_size"):
        assert column in header, (column, header)
    assert len(header) <= 12, header  # readable: nothing else kept


def test_a_params_typo_stops_dvc_before_any_output_is_removed(repo, prefect_api):
    """The check stage runs first when params.yaml changed: one line, and every stage's outputs stay."""
    dvc(repo, "repro", api=prefect_api)
    before = {path: path.stat().st_mtime_ns for path in (repo / "models/best.pt", repo / "metrics/train.json")}
    text = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(text.replace("train:\n", "train:\n  epoch: 3\n", 1))
    try:
        env = {**os.environ, "PREFECT_API_URL": prefect_api,
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        result = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=repo, env=env, capture_output=True,
                                text=True, timeout=300)
    finally:
        (repo / "params.yaml").write_text(text)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "train.epoch: unknown key" in output and "Running stage 'train'" not in output
    assert "Traceback" not in output
    assert {path: path.stat().st_mtime_ns for path in before} == before



def test_a_fresh_clone_s_repro_changes_no_tracked_file(repo, prefect_api, monkeypatch):
    """What DVC and git keep is what the data, code and params decide: the same bytes when a fresh clone
    runs the whole pipeline again (run ids, times, speeds and workers go to MLflow and beside the
    outputs, never into them), so ``make demo`` leaves ``git status`` clean."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["threads"] = 1  # a fixed count: the automatic one follows the machine's load
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the default store, mlflow.db in the clone, which git ignores
    # from nothing, twice: the earlier tests' outputs (their folds, kept by key, trained at another thread
    # count) must not be the first run's
    subprocess.run(["git", "clean", "-fdqX"], cwd=repo, check=True)
    dvc(repo, "repro", api=prefect_api)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "the pipeline's outputs"], cwd=repo, check=True)
    # a fresh clone: nothing git ignores (data, models, the MLflow store, DVC's cache), every stage reruns
    subprocess.run(["git", "clean", "-fdqX"], cwd=repo, check=True)
    assert not (repo / "models").exists() and not (repo / "mlflow.db").exists()
    ran = re.findall(r"Running stage '([a-z]+)'", dvc(repo, "repro", api=prefect_api).stdout)
    assert {"train", "evaluate", "cv", "radiogenomics", "register"} <= set(ran)  # those that log to MLflow too
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, check=True)
    assert status.stdout == "", f"a rerun changed tracked files:\n{status.stdout}" + subprocess.run(
        ["git", "diff", "--", ".", ":!*.png"], cwd=repo, capture_output=True, text=True).stdout[:6000]
    # the run's facts are still there for whoever wants them: MLflow and the files beside the outputs
    assert json.loads((repo / "models/mlflow_run.json").read_text())["images_per_s"] > 0
    assert all(json.loads(p.read_text())[-1]["finished"] for p in (repo / "data/cv").glob("fold-*/attempts.json"))
