"""A model from the MLflow registry as ``lgg-predict`` takes it: ``models:/NAME@ALIAS``,
``models:/NAME/VERSION`` or ``runs:/RUN_ID/NAME``.

The library imports no MLflow: the ``mlflow`` command of this environment downloads the logged model
(``mlflow artifacts download``), and the checkpoints it carries are read as any other. The store is
``MLFLOW_TRACKING_URI``, else this checkout's own ``mlflow.db`` (where the stages register), so the
command works from any folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from unet.errors import EnvironmentMismatch, InputError

MODEL_URI = re.compile(r"^(models|runs):/[^\s]+$")
CHECKOUT_STORE = Path(__file__).resolve().parents[2] / "mlflow.db"  # an editable install: the checkout's store
DOWNLOAD_TIMEOUT_S = 600


@dataclass(frozen=True)
class RegisteredModel:
    """What a logged model holds: one checkpoint (the train stage's) or the fold models of an ensemble
    (the cv stage's) with its post-processing rule."""

    uri: str
    checkpoints: list[Path]
    largest_component: bool | None = None  # an ensemble's rule (ensemble.json); a checkpoint carries its own


def is_model_uri(text: str | os.PathLike) -> bool:
    return bool(MODEL_URI.match(str(text)))


def tracking_store(environ: Mapping[str, str] = os.environ) -> str:
    """``MLFLOW_TRACKING_URI``, else this checkout's ``mlflow.db`` when there is one."""
    if uri := environ.get("MLFLOW_TRACKING_URI"):
        return uri
    if CHECKOUT_STORE.is_file():
        return f"sqlite:///{CHECKOUT_STORE}"
    raise InputError("a models:/ or runs:/ model needs its MLflow store: export MLFLOW_TRACKING_URI "
                     "(sqlite:////path/to/the/checkout/mlflow.db, or the tracking server's http://host:port)")


def mlflow_command() -> str:
    """The ``mlflow`` script of the interpreter that runs this (the project's venv), else the one on PATH."""
    beside = Path(sys.executable).with_name("mlflow")
    found = str(beside) if beside.is_file() else shutil.which("mlflow")
    if not found:
        raise EnvironmentMismatch("a models:/ model needs the mlflow command; install the project (make install)")
    return found


def fetch(uri: str, into: Path, environ: Mapping[str, str] = os.environ) -> RegisteredModel:
    """Download the logged model ``uri`` into ``into`` and find its checkpoints."""
    store = tracking_store(environ)
    command = [mlflow_command(), "artifacts", "download", "--artifact-uri", uri, "--dst-path", str(into)]
    result = subprocess.run(command, env={**environ, "MLFLOW_TRACKING_URI": store}, capture_output=True, text=True,
                            timeout=DOWNLOAD_TIMEOUT_S)
    if result.returncode:
        said = [line for line in result.stderr.splitlines() if line.strip()]
        why = said[-1].removeprefix("mlflow.exceptions.MlflowException: ") if said else f"exit {result.returncode}"
        raise InputError(f"--model {uri}: MLflow store {store} cannot give it ({why}); list the versions with "
                         "mlflow.MlflowClient().search_model_versions()")
    return read_logged_model(uri, Path(into))


def read_logged_model(uri: str, folder: Path) -> RegisteredModel:
    """The checkpoints of a downloaded pyfunc as its ``MLmodel`` names them (``tasks/mlflow_model.py``:
    ``checkpoint``; or ``fold-NN`` and the ``ensemble`` rule, which MLflow files under numbered folders
    when their names collide)."""
    try:
        spec = yaml.safe_load((folder / "MLmodel").read_text())
        named = {name: folder / entry["path"] for name, entry in spec["flavors"]["python_function"]["artifacts"].items()}
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        named = {}
    checkpoints = [named[k] for k in sorted(named) if k == "checkpoint" or re.fullmatch(r"fold-\d+", k)]
    if not checkpoints or not all(p.is_file() for p in checkpoints):
        raise InputError(f"--model {uri}: not an lgg-unet model (its MLmodel names no checkpoint or fold-NN "
                         "artifact); give one the train or cv stage registered")
    rule = json.loads(named["ensemble"].read_text())["largest_component"] if "ensemble" in named else None
    return RegisteredModel(uri, checkpoints, rule)
