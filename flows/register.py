"""The ``register`` stage: the train run's model into the MLflow model registry.

Each run's model becomes a version of ``registry.model_name`` with the alias ``challenger``; the
alias ``champion`` moves to it only when its validation DSC beats the champion's (the first model
is champion). The score is ``val_dsc_mean`` that the evaluate stage logged into the run (per
volume, at the original geometry), else the train stage's ``best_val_dsc``; it is kept as the
version's tag ``val_dsc``. What happened goes to ``<registry.out_dir>/registry.json``.

Load the champion with ``mlflow.pyfunc.load_model("models:/lgg-unet@champion")``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

import mlflow
from mlflow import MlflowClient
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.common import stage_main
from tasks.reports import publish, registry_report
from tasks import tracking
from unet.io.atomic import atomic_file
from unet.config import PipelineConfig

SCORE_METRICS = ("val_dsc_mean", "best_val_dsc")  # evaluate's, else train's
SCORE_TAG = "val_dsc"
CHAMPION, CHALLENGER = "champion", "challenger"
REGISTRY_FILE = "registry.json"


def run_score(metrics: Mapping[str, float]) -> tuple[str, float]:
    """(metric name, value) of the first of ``SCORE_METRICS`` that the run holds."""
    for name in SCORE_METRICS:
        if name in metrics:
            return name, float(metrics[name])
    raise ValueError(f"the MLflow run holds none of {', '.join(SCORE_METRICS)}: run the train and evaluate "
                     "stages first (dvc repro evaluate)")


def decide(version: str, score: float, champion: tuple[str, float] | None) -> str:
    """``first`` (no champion yet), ``unchanged`` (it is the champion), ``promoted`` (strictly better)
    or ``kept`` (the champion stays)."""
    if champion is None:
        return "first"
    champion_version, champion_score = champion
    if champion_version == version:
        return "unchanged"
    return "promoted" if score > champion_score else "kept"


@task(name="register-version", cache_policy=NO_CACHE, persist_result=False)
def register_version(name: str, run_id: str, model_uri: str, score_metric: str, score: float) -> str:
    """A new version for the run's model (the same one when this run was registered before), its score
    tagged; returns the version number."""
    client = MlflowClient()
    existing = [v for v in client.search_model_versions(f"name = '{name}'") if v.run_id == run_id]
    version = existing[0].version if existing else mlflow.register_model(model_uri, name).version
    client.set_model_version_tag(name, version, SCORE_TAG, repr(score))
    client.set_model_version_tag(name, version, "score_metric", score_metric)
    return str(version)


def champion_of(client: MlflowClient, name: str) -> tuple[str, float] | None:
    """The champion's version and score (its tag, else its run's metrics); None when there is none."""
    version = client.get_registered_model(name).aliases.get(CHAMPION)
    if version is None:
        return None
    tags = client.get_model_version(name, version).tags
    if SCORE_TAG in tags:
        return str(version), float(tags[SCORE_TAG])
    return str(version), run_score(client.get_run(client.get_model_version(name, version).run_id).data.metrics)[1]


@task(name="move-aliases", cache_policy=NO_CACHE, persist_result=False)
def move_aliases(name: str, version: str, score: float) -> dict[str, Any]:
    """``challenger`` to ``version``; ``champion`` too when it scores better (or is the first)."""
    client = MlflowClient()
    champion = champion_of(client, name)
    decision = decide(version, score, champion)
    client.set_registered_model_alias(name, CHALLENGER, version)
    if decision in ("first", "promoted"):
        client.set_registered_model_alias(name, CHAMPION, version)
    return {"decision": decision, "aliases": sorted(client.get_model_version(name, version).aliases),
            "champion_version": int(client.get_registered_model(name).aliases[CHAMPION]),
            "previous_champion_version": int(champion[0]) if champion else None,
            "previous_champion_score": champion[1] if champion else None}


@flow(name="register", log_prints=True)
def register_flow(config: PipelineConfig) -> dict[str, Any]:
    logger = get_run_logger()
    name = config.registry.model_name
    record = tracking.train_record(config)
    if "model_uri" not in record:
        raise ValueError(f"{tracking.run_file(config)}: the train run logged no model (it did not finish); "
                         "retrain (dvc repro train)")
    score_metric, score = run_score(MlflowClient().get_run(record["run_id"]).data.metrics)
    version = register_version(name, record["run_id"], record["model_uri"], score_metric, score)
    outcome = move_aliases(name, version, score)
    result = {"model_name": name, "version": int(version), "run_id": record["run_id"], "score_metric": score_metric,
              "score": score, **outcome}
    with atomic_file(config.registry.out_dir / REGISTRY_FILE, "w") as handle:
        json.dump(result, handle, indent=2)
    logger.info("%s version %s (%s %.4f): %s; champion is version %d", name, version, score_metric, score,
                outcome["decision"], outcome["champion_version"])
    publish("lgg-registry", registry_report(result), description=f"{name} v{version}: {outcome['decision']}")
    return result


def run(config: PipelineConfig) -> dict[str, Any]:
    return register_flow(config)


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
