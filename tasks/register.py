"""The ``register`` stage's MLflow calls: a registry version for the train run's model, the aliases.

Each run's model becomes a version of ``registry.model_name`` with the alias ``challenger``; the
alias ``champion`` moves to it only when it scores better (``unet.register.decision``). The score
is kept as a tag of the version under its metric's own name (``val_dsc_mean``: per-volume
validation DSC at the original 256x256 grid, from the evaluate stage), beside ``score_metric``
naming it; the per-epoch curve ``epoch_val_dsc`` (at the network's grid) is another figure. Load the
champion with
``mlflow.pyfunc.load_model("models:/lgg-unet@champion")``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from tasks import cards
from tasks import export as export_tasks
from tasks.common import stage_task
from tasks.registry import move_aliases, register_version
from tasks.reports import publish, registry_report
from tasks.tracking import run_link
from tasks.trained import WEIGHTS_TAG, train_record
from unet.config import PipelineConfig
from unet.io.atomic import atomic_file
from unet.models.checkpoint import weights_digest
from unet.register.decision import run_score


def register(config: PipelineConfig) -> dict[str, Any]:
    """The train run's model into the registry; the outcome into ``registry.json`` (less the run id,
    which differs on every run: MLflow holds it, the report links it)."""
    name = config.registry.model_name
    record = train_record(config)
    score_metric, score = run_score(MlflowClient().get_run(record["run_id"]).data.metrics)
    weights = weights_digest([config.train.best_path])
    version = register_version(name, record["run_id"], record["model_uri"], score_metric, score, weights)
    exported = export_and_describe(config, record, version) if config.registry.export else None  # may fail:
    result = {"model_name": name, "version": int(version), "run_id": record["run_id"], "score_metric": score_metric,
              "score": score, **move_aliases(name, version, score, config.registry.champion_floor)}  # then no alias
    if exported is not None:
        result["export"] = exported
    with atomic_file(config.registry.record_path, "w") as handle:
        json.dump({k: v for k, v in result.items() if k != "run_id"}, handle, indent=2)
    with atomic_file(config.registry.receipt_path, "w") as handle:
        json.dump({"model_name": name, "version": int(version), WEIGHTS_TAG: weights}, handle, indent=2)
    return result


@stage_task(name="export-and-describe")
def export_and_describe(config: PipelineConfig, record: dict[str, Any], version: str) -> dict[str, Any]:
    """ONNX, TorchScript, their check on real slices and the model card beside the model in its run;
    the card is the registered version's description."""
    with tempfile.TemporaryDirectory() as scratch:
        exported = export_tasks.log_exports(record["run_id"], config.train.best_path,
                                            export_tasks.prepared_slices(config), Path(scratch),
                                            model_id=record.get("model_id"), **export_tasks.card_inputs(config))
    cards.describe_version(config.registry.model_name, version, exported["card"])
    return {k: v for k, v in exported["check"].items() if not isinstance(v, (dict, list))}


def publish_report(result: dict[str, Any]) -> None:
    run = MlflowClient().get_run(result["run_id"])
    publish("lgg-registry", registry_report(result, run_link(run.info.experiment_id, run.info.run_id)),
            description=f"{result['model_name']} v{result['version']}: {result['decision']}")
