"""The ``register`` stage's MLflow edge: the model registry behind ``unet.register.stage.Registry``.

Each run's model becomes a version of ``registry.model_name`` with the alias ``challenger``; the
alias ``champion`` moves to it only when it scores better (``unet.register.decision``). The score
is kept as a tag of the version under its metric's own name (``val_dsc_mean``: per-volume
validation DSC at the original 256x256 grid, from the evaluate stage), beside ``score_metric``
naming it; the per-epoch curve ``epoch_val_dsc`` (at the network's grid) is another figure. Load the
champion with
``mlflow.pyfunc.load_model("models:/lgg-unet@champion")``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from tasks import cards
from tasks import export as export_tasks
from tasks.common import each_task, stage_task
from tasks.registry import move_aliases, register_version
from tasks.reports import publish, registry_report
from tasks.tracking import run_link
from tasks.trained import train_record
from unet.config import PipelineConfig
from unet.register import stage
from unet.register.decision import run_score


class MlflowRegistry:
    """MLflow's model registry, as the register stage calls it (``unet.register.stage.Registry``)."""

    def trained(self, config: PipelineConfig) -> dict[str, Any]:
        record = train_record(config)
        score_metric, score = run_score(MlflowClient().get_run(record["run_id"]).data.metrics)
        return {**record, "score_metric": score_metric, "score": score}

    def add_version(self, config: PipelineConfig, trained: dict[str, Any]) -> str:
        return register_version(config.registry.model_name, trained["run_id"], trained["model_uri"],
                                trained["score_metric"], trained["score"], trained["weights"])

    def attach_exports(self, config: PipelineConfig, trained: dict[str, Any], version: str) -> dict[str, Any]:
        return export_and_describe(config, trained, version)

    def move_aliases(self, config: PipelineConfig, version: str, score: float) -> dict[str, Any]:
        return move_aliases(config.registry.model_name, version, score, config.registry.champion_floor)


def run(config: PipelineConfig) -> dict[str, Any]:
    """The stage, the weights entered as the task ``register-<digest>``."""
    return stage.run(config, each=each_task("register", in_turn=True), registry=MlflowRegistry())


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


def publish_report(config: PipelineConfig, result: dict[str, Any]) -> None:
    run = MlflowClient().get_run(result["run_id"])
    publish("lgg-registry", registry_report(result, run_link(run.info.experiment_id, run.info.run_id)),
            description=f"{result['model_name']} v{result['version']}: {result['decision']}")
