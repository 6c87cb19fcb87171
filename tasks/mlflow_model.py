"""The trained U-Net as an MLflow pyfunc model that segments raw slices.

Input: one patient's slices in order, as read from the Kaggle TIFFs: a uint8 array
``(N, H, W, 3)`` (the real set is 256x256; any size works, the model resizes inside). Output: a
uint8 ``(N, H, W)`` mask of 0/1 on the input's grid. Inside: the checkpoint's own preprocessing,
the network, the threshold and the largest 3-D component (``unet.predict.segmenter.Segmenter``)::

    model = mlflow.pyfunc.load_model("models:/lgg-unet@champion")
    mask = model.predict(slices)             # slices: np.uint8 (N, 256, 256, 3)

or served: ``mlflow models serve -m models:/lgg-unet@champion --env-manager local`` and a POST of
``{"inputs": <nested list>}`` to ``/invocations``. The class lives in the installed ``lgg-unet``
package, so loading needs that package (``--env-manager local``), and nothing of Prefect.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import Model, ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import Schema, TensorSpec

from unet.errors import InputError

MODEL_NAME = "model"  # the model's name in its run
SIGNATURE = ModelSignature(
    inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),  # (N, H, W, RGB): any N and size
    outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1))]),  # (N, H, W) 0/1
)
# what importing unet.predict.segmenter needs, pinned to the versions it was logged with
REQUIREMENTS = ("mlflow", "torch", "numpy", "scipy", "scikit-image", "pandas", "pyarrow", "pydantic", "pyyaml",
                "tqdm", "nibabel", "tifffile", "cloudpickle")


class LggUnetModel(mlflow.pyfunc.PythonModel):
    """Raw slices (N, H, W, 3) uint8 in, a 0/1 mask (N, H, W) uint8 out."""

    def load_context(self, context) -> None:
        import torch

        from unet.predict.segmenter import Segmenter

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.segmenter = Segmenter.from_checkpoint(Path(context.artifacts["checkpoint"]), device=device)

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        # an ndarray hint: MLflow checks the input against the signature, not the hint
        return self.segmenter.segment(as_slices(model_input))


def as_slices(model_input) -> np.ndarray:
    """The input as uint8 (N, H, W, 3); integers within 0..255 are taken as they are, else an error."""
    images = np.asarray(model_input)
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.integer) or images.size and (images.min() < 0 or images.max() > 255):
            raise InputError(f"expected uint8 slices (0..255) as read from the TIFFs, got {images.dtype} values; "
                             "pass the raw slices, not normalised ones")
        images = images.astype(np.uint8)
    return images


def requirements() -> list[str]:
    """Pins for ``REQUIREMENTS`` (local version labels such as ``+cpu`` dropped, so a GPU build fits)."""
    return [f"{name}=={version(name).split('+')[0]}" for name in REQUIREMENTS]


def example_slices(manifest: pd.DataFrame, count: int = 4) -> np.ndarray:
    """``count`` consecutive raw slices around the largest tumour of a validation (else test) patient."""
    from unet.io.kaggle import read_image

    part = next((p for p in ("val", "test", "train") if (manifest["split"] == p).any()))
    rows = manifest[manifest["split"] == part]
    patient = rows.groupby("patient")["tumour_area"].sum().idxmax()
    rows = rows[rows["patient"] == patient].sort_values("index").reset_index(drop=True)
    start = min(max(int(rows["tumour_area"].idxmax()) - count // 2, 0), max(len(rows) - count, 0))
    return np.stack([read_image(Path(p)) for p in rows["image_path"].iloc[start:start + count]])


def log_model(run_id: str, checkpoint: Path, input_example: np.ndarray) -> ModelInfo:
    """Log the checkpoint as the run's pyfunc model.

    ``Model.log`` is what ``mlflow.pyfunc.log_model`` calls, with the run named explicitly
    instead of the thread's active run.
    """
    return Model.log(artifact_path=None, name=MODEL_NAME, flavor=mlflow.pyfunc, run_id=run_id,
                     python_model=LggUnetModel(), artifacts={"checkpoint": str(checkpoint)}, signature=SIGNATURE,
                     input_example=input_example, pip_requirements=requirements())
