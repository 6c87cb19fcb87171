"""The lgg-unet pyfunc model, logged as code: MLflow copies this file into the model.

Loading the model runs this file, which needs ``mlflow``, ``numpy`` and the installed ``unet``
library, nothing of this repository's ``flows`` or ``tasks``: a registered model loads from any
folder on a machine with ``pip install lgg-unet``. Raw slices (N, H, W, 3) uint8 in, a 0/1 mask
(N, H, W) uint8 out, through ``unet.predict.segmenter.Segmenter`` (the checkpoint's own
preprocessing, the network, the way back to the input grid, threshold and largest component).
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np


class LggUnetModel(mlflow.pyfunc.PythonModel):
    """Raw slices (N, H, W, 3) uint8 in, a 0/1 mask (N, H, W) uint8 out."""

    def load_context(self, context) -> None:
        import torch

        from unet.predict.segmenter import Segmenter

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.segmenter = Segmenter.from_checkpoint(Path(context.artifacts["checkpoint"]), device=device)

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from unet.errors import InputError
        from unet.predict.segmenter import as_slices

        # an ndarray hint: MLflow checks the input against the signature (shape), not the hint
        try:
            return self.segmenter.segment(as_slices(model_input))
        except InputError as exc:  # the server answers 400 with the message, not 500
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None


mlflow.models.set_model(LggUnetModel())
