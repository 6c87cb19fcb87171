"""The cross-validation's fold models as one pyfunc, logged as code (copied into the model).

Same contract as the single model (``tasks/pyfunc_model.py``): one patient's raw slices
(N, H, W, 3) uint8 in, a 0/1 mask (N, H, W) uint8 out. Inside: every fold model's probabilities
on the input's grid, their mean, the threshold and, where the out-of-fold predictions scored better
with it (the cv stage's ``ensemble.json``), the largest 3-D component
(``unet.predict.ensemble.EnsembleSegmenter``). Needs only mlflow, numpy and the installed ``unet``.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np


class LggUnetEnsemble(mlflow.pyfunc.PythonModel):
    """Raw slices (N, H, W, 3) uint8 in, a 0/1 mask (N, H, W) uint8 out, from the mean of the folds."""

    def load_context(self, context) -> None:
        import torch

        from unet.predict.ensemble import EnsembleSegmenter

        device = "cuda" if torch.cuda.is_available() else "cpu"
        folds = sorted(name for name in context.artifacts if name.startswith("fold-"))
        rule = context.artifacts.get("ensemble")  # decided on the out-of-fold predictions (the cv stage)
        keep = json.loads(Path(rule).read_text())["largest_component"] if rule else None
        self.ensemble = EnsembleSegmenter.from_checkpoints([Path(context.artifacts[f]) for f in folds], device=device,
                                                           largest_component=keep)

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from unet.errors import InputError
        from unet.predict.segmenter import as_slices

        try:
            return self.ensemble.segment(as_slices(model_input))
        except InputError as exc:  # the server answers 400 with the message, not 500
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None


mlflow.models.set_model(LggUnetEnsemble())
