"""Shared fixtures: a tiny hand-made raw tree, and one Prefect test server for the session."""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

# Prefect keeps its state under PREFECT_HOME: give the test session its own, before prefect imports.
SESSION_PREFECT_HOME = Path(tempfile.mkdtemp(prefix="prefect-home-"))
os.environ["PREFECT_HOME"] = str(SESSION_PREFECT_HOME)
import flows  # noqa: E402,F401  (switches off Prefect's and DVC's analytics, for this process and its children)

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# every MLflow run of the test session goes to a throw-away store, never the repo's mlflow.db
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tempfile.mkdtemp(prefix='mlflow-')}/mlflow.db"

REPO = Path(__file__).resolve().parents[1]


def write_slice(folder: Path, n: int, image: np.ndarray, mask: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / f"{folder.name}_{n}.tif", image)
    tifffile.imwrite(folder / f"{folder.name}_{n}_mask.tif", mask)


def phantom_slice(size: int, tumour: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A disc of 'brain' with, optionally, a bright FLAIR square as tumour; RGB uint8 and 0/255 mask."""
    yy, xx = np.mgrid[:size, :size]
    head = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.4 * size) ** 2
    image = np.zeros((size, size, 3), np.uint8)
    image[head] = 90
    mask = np.zeros((size, size), np.uint8)
    if tumour:
        a, b = size // 3, size // 2
        mask[a:b, a:b] = 255
        image[a:b, a:b, 1] = 220
    noise = rng.integers(0, 10, image.shape, dtype=np.uint8)
    return np.where(image > 0, image + noise, 0).astype(np.uint8), mask


def make_raw_tree(root: Path, patients: int = 4, slices: int = 5, size: int = 32, seed: int = 0) -> Path:
    """``root`` as a Kaggle kaggle_3m folder with real patient names; middle slices hold tumour."""
    rng = np.random.default_rng(seed)
    names = (REPO / "unet/resources/lgg_patients.txt").read_text().split()[:patients]
    for name in names:
        for n in range(1, slices + 1):
            write_slice(root / name, n, *phantom_slice(size, 1 < n < slices, rng))
    ids = ["_".join(name.split("_")[:3]) for name in names]
    (root / "data.csv").write_text(
        "Patient,RNASeqCluster,gender\n" + "".join(f"{i},{k % 3 + 1},{'male' if k % 2 else 'female'}\n"
                                                   for k, i in enumerate(ids))
    )
    return root


def outputs_under(root: Path) -> dict:
    """Every path key of params.yaml (outputs and pictures) as its default under ``root``, so a test
    stage writes nothing into the repository (``repository_untouched`` checks it)."""
    from tasks.overrides import path_keys
    from unet.config import PipelineConfig

    defaults, found = PipelineConfig(), {}
    for key in sorted(path_keys(PipelineConfig)):
        *sections, name = key.split(".")
        value = functools.reduce(getattr, key.split("."), defaults)
        if isinstance(value, Path) and not value.is_absolute():  # data.path: None, no default to move
            node = found
            for section in sections:
                node = node.setdefault(section, {})
            node[name] = str(root / value)
    return found


def merged(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = merged(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def tiny_stage_params(root: Path, *, metrics_dir: str = "metrics", overlay_patients: int = 2, **train) -> dict:
    """params for the whole pipeline on a tiny 32 px set under ``root`` (features 4, depth 2, CPU);
    every output under ``root`` too."""
    return merged(outputs_under(root), {
        "data": {"raw_dir": str(root / "raw")},
        "prepare": {"image_size": 32, "out_dir": str(root / "prepared"), "nifti": False,
                    "split": {"val_fraction": 0.2, "test_fraction": 0.2, "seed": 1}},
        "weightmaps": {"out_dir": str(root / "weightmaps")},
        "augment": {"copies": 1, "out_dir": str(root / "augmented"), "preview": str(root / "grid.png")},
        "model": {"variant": "reference", "features": 4, "depth": 2},
        "train": {"epochs": 2, "batch_size": 4, "steps_per_epoch": 2, "device": "cpu", "lr": 1e-3,
                  "out_dir": str(root / "models"), "metrics_dir": str(root / metrics_dir), **train},
        "evaluate": {"out_dir": str(root / "metrics"), "predictions_dir": str(root / "predictions"),
                     "overlays_dir": str(root / "overlays"), "overlay_patients": overlay_patients},
        "registry": {"champion_floor": 0.0},  # a 2-epoch model at 32 px is a champion here: the rule's moves are tested
    })


# what the pipeline writes in the repository: the tests must leave all of it as it was
REPO_OUTPUTS = ["reports", "metrics", "models", "data", "dvc.lock", "params.yaml", "mlflow.db", "mlartifacts"]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    files = {}
    for name in REPO_OUTPUTS:
        path = root / name
        for file in ([path] if path.is_file() else path.rglob("*") if path.is_dir() else []):
            if file.is_file():
                stat = file.stat()
                files[str(file.relative_to(root))] = (stat.st_mtime_ns, stat.st_size)
    return files


@pytest.fixture(scope="session", autouse=True)
def repository_untouched():
    """Fails the session when a test wrote into the repository's outputs (a relative default path
    resolved against the working directory overwrote the demo's pictures once)."""
    before = snapshot(REPO)
    yield
    after = snapshot(REPO)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"the tests wrote into the repository: {', '.join(changed[:20])}; give them paths under tmp_path"


@pytest.fixture
def raw_tree(tmp_path: Path) -> Path:
    return make_raw_tree(tmp_path / "kaggle_3m")


@pytest.fixture(scope="session")
def prefect_api() -> str:
    """One real Prefect server for the whole session: the project's server (``tasks.project_server``)
    in the session's PREFECT_HOME, waited for however long a busy machine takes to start it (no
    start-up limit to miss); yields its API URL, which this process uses and subprocesses are given."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks import project_server

    server = project_server.ensure(SESSION_PREFECT_HOME, code_dir=REPO, keep=True, client=False)
    with temporary_settings(updates={PREFECT_API_URL: server.url}):
        yield server.url


@pytest.fixture(scope="session", autouse=True)
def project_server_stopped():
    """The session's Prefect server (the fixture's, or one a stage subprocess started) ends with it."""
    yield
    from tasks import project_server

    project_server.stop(SESSION_PREFECT_HOME)


# Tests that start a Prefect server, run stages or DVC, or spawn Python processes: `make test` runs
# them all; `pytest -m "not integration"` the fast rest (about a tenth of the time).
INTEGRATION_FIXTURES = {"prefect_api"}
INTEGRATION_MODULES = {"test_dvc_pipeline.py", "test_train_flow.py", "test_deployments.py", "test_cluster.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if INTEGRATION_FIXTURES & set(item.fixturenames) or item.path.name in INTEGRATION_MODULES:
            item.add_marker(pytest.mark.integration)
