"""Model cards in MLflow: a card as a registry version's description (cut to fit) and in its run's
``export/`` folder; what a card says of the training data; the fold ensemble's card (the cv stage's).

Apart from ``tasks.export`` (ONNX, TorchScript, their check) so that the cv stage, which writes only a
card, does not reach the export code.
"""

from __future__ import annotations

import csv
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from unet.cards.ensemble import ensemble_card
from unet.cards.model import CARD_NAME, read_checkpoint_meta
from unet.config import PipelineConfig

ARTIFACT_DIR = "export"  # a run's folder for its exports and its card
# model_versions.description is VARCHAR(5000) in MLflow's SQL store: SQLite lets more through, MySQL and
# PostgreSQL refuse it, so a longer card is cut at a line and points at the whole one in the run
MAX_DESCRIPTION = 5000


def fit_description(card_markdown: str, limit: int = MAX_DESCRIPTION) -> str:
    """The card as it fits a registry description: whole, or cut at a line with a pointer to the whole card."""
    if len(card_markdown) <= limit:
        return card_markdown
    note = (f"\n\n_The card is cut here to fit the registry's {limit} characters; the whole card is "
            f"`{ARTIFACT_DIR}/{CARD_NAME}` in this version's run._\n")
    kept = card_markdown[: limit - len(note)]
    return kept[: kept.rfind("\n") if "\n" in kept else len(kept)] + note


def describe_version(model_name: str, version: str | int, card_markdown: str) -> str:
    """Set the registered model version's description to the card (``fit_description``); returns it."""
    description = fit_description(card_markdown)
    MlflowClient().update_model_version(model_name, str(version), description=description)
    return description


def card_data(config: PipelineConfig) -> dict[str, Any]:
    """What a card says of the training data: the source, and which synthetic set."""
    synthetic = {"anatomy": config.data.synthetic.anatomy} if config.data.source == "synthetic" else {}
    return {"source": config.data.source} | synthetic


def log_ensemble_card(config: PipelineConfig, run_id: str, model_name: str, version: str, metrics: Mapping[str, Any],
                      checkpoints: list[Path], rule_path: Path) -> str:
    """The fold ensemble's card (``unet.cards.ensemble``) in its run under ``export/`` and as the version's
    description; returns the markdown."""
    with config.cv.per_patient_path.open(newline="") as handle:
        per_patient = list(csv.DictReader(handle))
    rule = json.loads(rule_path.read_text()) if rule_path.is_file() else None
    card = ensemble_card(fold_metas=[read_checkpoint_meta(path) for path in checkpoints], cv=metrics,
                         per_patient=per_patient, data=card_data(config), rule=rule,
                         threshold=config.evaluate.threshold, seed=config.cv.seed, name=model_name)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / CARD_NAME
        path.write_text(card)
        MlflowClient().log_artifact(run_id, str(path), ARTIFACT_DIR)
    describe_version(model_name, version, card)
    return card
