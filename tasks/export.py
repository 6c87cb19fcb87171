"""The exports' MLflow edge (issue 15): ONNX and TorchScript beside the model, the card in the registry.

``log_exports(run_id, checkpoint, slices, out_dir)`` writes ``model.onnx``, ``model.torchscript.pt``
(``unet.export``), checks them against eager PyTorch on real preprocessed slices, writes the check
(``export_check.json``) and the model card (``MODEL_CARD.md``), and logs all four under ``export/``
of the run with the check's figures as metrics:

    export_onnx_max_abs_diff, export_torchscript_max_abs_diff     largest |p - eager| of the tumour probability
    export_onnx_mask_agreement, export_torchscript_mask_agreement fraction of voxels on the same side of the threshold
    export_max_abs_diff, export_mask_agreement                    the worse of the two formats
    export_check_passed (1 or 0), export_check_slices

``tasks.cards.describe_version`` makes the card the registry version's description.
``card_inputs(config)`` and ``prepared_slices(config)`` gather what the two need from the stages'
outputs. Everything names its run or version explicitly (no active run), as ``tasks.tracking`` does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from mlflow import MlflowClient

from tasks.cards import ARTIFACT_DIR, card_data
from tasks.tracking import log_metrics
from unet.cards.model import model_card, read_checkpoint_meta, read_metrics
from unet.config import PipelineConfig
from unet.export.check import ExportCheck, check_export, check_prepared
from unet.export.cli import CARD_NAME, CHECK_NAME, ONNX_NAME, TORCHSCRIPT_NAME
from unet.export.graphs import export_onnx, export_torchscript
from unet.io.layout import load_patient_arrays, read_manifest

log = logging.getLogger(__name__)

CHECK_SLICES = 32


def export_metrics(check: ExportCheck) -> dict[str, float]:
    """The check's figures as MLflow metrics (module doc); a format not checked is left out."""
    formats = {"onnx": (check.max_diff_onnx, check.mask_agreement_onnx),
               "torchscript": (check.max_diff_torchscript, check.mask_agreement_torchscript)}
    metrics: dict[str, float] = {}
    for name, (diff, agreement) in formats.items():
        if diff is not None and agreement is not None:
            metrics[f"export_{name}_max_abs_diff"] = diff
            metrics[f"export_{name}_mask_agreement"] = agreement
    diffs = [d for d, a in formats.values() if d is not None and a is not None]
    if diffs:
        metrics["export_max_abs_diff"] = max(diffs)
        metrics["export_mask_agreement"] = min(a for d, a in formats.values() if d is not None and a is not None)
    return {**metrics, "export_check_passed": float(check.passed()), "export_check_slices": float(check.slices)}


def log_exports(run_id: str, checkpoint: Path, slices: np.ndarray, out_dir: Path, *, preprocessed: bool = True,
                metrics: Mapping[str, Any] | None = None, cv: Mapping[str, Any] | None = None,
                data: Mapping[str, Any] | None = None, split: Mapping[str, Any] | None = None,
                model_id: str | None = None) -> dict[str, Any]:
    """Export ``checkpoint`` to ONNX and TorchScript under ``out_dir``, check both on ``slices``, write the
    model card, and log the four files under ``export/`` of run ``run_id`` with the check's metrics
    (also on the logged model ``model_id`` when given, so its page shows them).

    ``slices``: preprocessed slices, (S, H, W, 3) as the prepare stage stores them (``prepared_slices``)
    or (S, 3, H, W); raw (S, H, W, 3) uint8 slices with ``preprocessed=False``. ``metrics``, ``cv``,
    ``data``, ``split``: the card's inputs (``card_inputs``; ``unet.cards.model.model_card``). A check
    that fails is logged as such (``export_check_passed`` 0, tag ``export.passed`` false), not raised.
    Returns the local paths, the check (``ExportCheck.as_dict``), the card's markdown and the artifacts' URI.
    """
    out_dir = Path(out_dir)
    onnx_path = export_onnx(checkpoint, out_dir / ONNX_NAME)
    ts_path = export_torchscript(checkpoint, out_dir / TORCHSCRIPT_NAME)
    check = (check_prepared if preprocessed else check_export)(checkpoint, onnx_path, ts_path, slices)
    check_path = out_dir / CHECK_NAME
    check_path.write_text(json.dumps(check.as_dict(), indent=2) + "\n")
    card = model_card(checkpoint_meta=read_checkpoint_meta(checkpoint), metrics=metrics or {}, cv=cv, data=data,
                      split=split)
    card_path = out_dir / CARD_NAME
    card_path.write_text(card)
    client = MlflowClient()
    for path in (onnx_path, ts_path, card_path, check_path):
        client.log_artifact(run_id, str(path), ARTIFACT_DIR)
    log_metrics(run_id, export_metrics(check), model_id=model_id)
    client.set_tag(run_id, "export.passed", str(check.passed()).lower())
    if not check.passed():
        log.warning("run %s: the exported model disagrees with PyTorch: %s", run_id, check.as_dict())
    return {"onnx": onnx_path, "torchscript": ts_path, "card_path": card_path, "check_path": check_path,
            "check": check.as_dict(), "card": card, "artifact_uri": f"runs:/{run_id}/{ARTIFACT_DIR}"}


# ---- the inputs, from the stages' outputs ---------------------------------------------------------


def card_inputs(config: PipelineConfig) -> dict[str, Any]:
    """``metrics``, ``cv``, ``data`` and ``split`` for ``log_exports``: the evaluate stage's summary with its
    per-patient rows, the cv stage's per-fold mean DSC when it ran, and the params sections."""
    ev, cv = config.evaluate, None
    metrics = read_metrics(ev.metrics_path, ev.per_patient_path if ev.per_patient_path.is_file() else None)
    if config.cv.folds and config.cv.metrics_path.is_file():
        folds = json.loads(config.cv.metrics_path.read_text()).get("fold_dsc_mean") or {}
        cv = {"dsc": [folds[k] for k in sorted(folds, key=int)]} if folds else None
    return {"metrics": metrics, "cv": cv, "data": card_data(config),
            "split": config.prepare.split.model_dump(mode="json")}


def prepared_slices(config: PipelineConfig, part: str = "test", limit: int = CHECK_SLICES) -> np.ndarray:
    """Up to ``limit`` middle slices of the first ``part`` patient (any patient when the part has none) as
    the prepare stage stored them: (S, size, size, 3) float32, preprocessed, for ``log_exports``."""
    manifest = read_manifest(config.prepare.manifest_path)
    rows = manifest[manifest["split"] == part]
    rows = rows if len(rows) else manifest
    patient = sorted(rows["patient"].unique())[0]
    array_dir = str(rows.loc[rows["patient"] == patient, "array_dir"].iloc[0])
    images, _ = load_patient_arrays(config.prepare.out_dir, array_dir)
    start = max(0, (len(images) - limit) // 2)
    return np.asarray(images[start : start + limit], np.float32)
