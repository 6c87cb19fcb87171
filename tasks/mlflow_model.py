"""The trained U-Net as an MLflow pyfunc model that segments raw slices.

Input: one patient's slices in order, as read from the Kaggle TIFFs: a uint8 array
``(N, H, W, 3)`` (the real set is 256x256; any size works, the model resizes inside). Output: a
uint8 ``(N, H, W)`` mask of 0/1 on the input's grid. Inside: the checkpoint's own preprocessing,
the network, the threshold and the largest 3-D component (``unet.predict.segmenter.Segmenter``)::

    model = mlflow.pyfunc.load_model("models:/lgg-unet@champion")
    mask = model.predict(slices)             # slices: np.uint8 (N, 256, 256, 3)

or served: ``mlflow models serve -m models:/lgg-unet@champion --env-manager local`` and a POST of
``{"inputs": <nested list>}`` to ``/invocations``. The model is logged as code
(``tasks/pyfunc_model.py``, copied into the model), so loading needs the installed ``unet``
library (``--env-manager local``), nothing of Prefect and nothing of this checkout.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.models import Model, ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import Schema, TensorSpec

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
SIGNATURE = ModelSignature(
    # (N, H, W, RGB), any N and size. A server casts JSON numbers to uint8 before the model sees them
    # (0.5 becomes 0): the model refuses a volume whose values stay within 0..1 (unet.predict.segmenter)
    inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
    outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1))]),  # (N, H, W) 0/1
)
# what importing unet.predict.segmenter needs, pinned to the versions it was logged with
REQUIREMENTS = ("mlflow", "torch", "numpy", "scipy", "scikit-image", "pandas", "pyarrow", "pydantic", "pyyaml",
                "tqdm", "nibabel", "tifffile", "cloudpickle")


def requirements() -> list[str]:
    """Pins for ``REQUIREMENTS`` (local version labels such as ``+cpu`` dropped, so a GPU build fits)."""
    return [f"{name}=={version(name).split('+')[0]}" for name in REQUIREMENTS]


def example_slices(manifest: pd.DataFrame, count: int = 4) -> np.ndarray:
    """``count`` consecutive raw slices around the largest tumour of a validation (else test) patient."""
    from unet.io.kaggle import read_image

    part = next(p for p in ("val", "test", "train") if (manifest["split"] == p).any())
    rows = manifest[manifest["split"] == part]
    patient = rows.groupby("patient")["tumour_area"].sum().idxmax()
    rows = rows[rows["patient"] == patient].sort_values("index").reset_index(drop=True)
    start = min(max(int(rows["tumour_area"].idxmax()) - count // 2, 0), max(len(rows) - count, 0))
    return np.stack([read_image(Path(p)) for p in rows["image_path"].iloc[start:start + count]])


def log_ensemble(run_id: str, checkpoints: list[Path], input_example: np.ndarray, name: str,
                 rule: Path | None = None) -> ModelInfo:
    """The fold models as one pyfunc (``tasks/pyfunc_ensemble.py``), the same contract as ``log_model``'s;
    ``rule``: the ensemble's post-processing (the cv stage's ``ensemble.json``)."""
    artifacts = {f"fold-{k:02d}": str(path) for k, path in enumerate(checkpoints)}
    if rule is not None:
        artifacts["ensemble"] = str(rule)
    return _log_pyfunc(run_id, name, python_model=str(PYFUNC_CODE.with_name("pyfunc_ensemble.py")),
                       artifacts=artifacts, input_example=input_example)


def log_model(run_id: str, checkpoint: Path, input_example: np.ndarray, name: str = "lgg-unet") -> ModelInfo:
    """Log the checkpoint as the run's pyfunc model.

    ``Model.log`` is what ``mlflow.pyfunc.log_model`` calls, with the run named explicitly
    instead of the thread's active run.
    """
    return _log_pyfunc(run_id, name, python_model=str(PYFUNC_CODE), artifacts={"checkpoint": str(checkpoint)},
                       input_example=input_example)


def _log_pyfunc(run_id: str, name: str, **options) -> ModelInfo:
    """``Model.log`` into run ``run_id``'s experiment.

    MLflow 3.17 files a logged model under the thread's active run's experiment, else the active
    experiment, else Default (0), not under the run it names: the cv stage (no active run) put its
    ensemble in Default, and where an MLflow server had made Default (``make ui``: artifacts at
    ``mlflow-artifacts:/``) the sqlite-tracked stage could not write it at all.
    """
    mlflow.set_experiment(experiment_id=MlflowClient().get_run(run_id).info.experiment_id)
    return Model.log(artifact_path=None, name=name, flavor=mlflow.pyfunc, run_id=run_id, signature=SIGNATURE,
                     pip_requirements=requirements(), **options)


def __getattr__(name: str):
    """Models logged before the pyfunc became code pickled ``tasks.mlflow_model.LggUnetModel``:
    hand them the class (they load where this checkout is importable, e.g. from its root)."""
    if name == "LggUnetModel":
        from tasks.pyfunc_model import LggUnetModel

        return LggUnetModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

