"""The MLflow registry calls that the register and cv stages share: a version a checkpoint (never two for
the same weights), its score under its metric's name, and the aliases (``unet.register.decision``)."""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow import MlflowClient

from tasks.common import stage_task
from unet.models.checkpoint import WEIGHTS_TAG
from unet.register.decision import CHALLENGER, CHAMPION, decide, run_score

LEGACY_SCORE_TAG = "val_dsc"  # versions registered before the tag carried the metric's name


@stage_task(name="register-version")
def register_version(name: str, run_id: str, model_uri: str, score_metric: str, score: float,
                     weights: str | None = None) -> str:
    """A new version for the run's model, its score and ``weights`` digest tagged; the existing one
    when this run, or a run with the same weights, was registered before. Returns the version number."""
    client = MlflowClient()
    existing = [v for v in client.search_model_versions(f"name = '{name}'")
                if v.run_id == run_id or (weights and v.tags.get(WEIGHTS_TAG) == weights)]
    version = min(existing, key=lambda v: int(v.version)).version if existing else \
        mlflow.register_model(model_uri, name).version
    client.set_model_version_tag(name, version, score_metric, repr(score))
    client.set_model_version_tag(name, version, "score_metric", score_metric)
    if weights:
        client.set_model_version_tag(name, version, WEIGHTS_TAG, weights)
    return str(version)


def champion_of(client: MlflowClient, name: str) -> tuple[str, float] | None:
    """The champion's version and score (its tag, else its run's metrics); None when there is none."""
    version = client.get_registered_model(name).aliases.get(CHAMPION)
    if version is None:
        return None
    tags = client.get_model_version(name, version).tags
    tag = tags.get("score_metric", LEGACY_SCORE_TAG)
    if tag in tags:
        return str(version), float(tags[tag])
    return str(version), run_score(client.get_run(client.get_model_version(name, version).run_id).data.metrics)[1]


@stage_task(name="move-aliases")
def move_aliases(name: str, version: str, score: float, floor: float = 0.0, held: str | None = None) -> dict[str, Any]:
    """``challenger`` to ``version``; ``champion`` too when it scores better (or is the first), and at
    least ``floor``, and nothing ``held`` it back."""
    client = MlflowClient()
    champion = champion_of(client, name)
    decision = decide(version, score, champion, floor, held)
    client.set_registered_model_alias(name, CHALLENGER, version)
    if decision in ("first", "promoted"):
        client.set_registered_model_alias(name, CHAMPION, version)
    aliases = client.get_registered_model(name).aliases
    why = {"below-floor": f"DSC {score:.3f} is under registry.champion_floor {floor:g}", "held": held}.get(decision)
    return {"decision": decision, "aliases": sorted(client.get_model_version(name, version).aliases),
            "champion_version": int(aliases[CHAMPION]) if CHAMPION in aliases else None,
            "previous_champion_version": int(champion[0]) if champion else None,
            "previous_champion_score": champion[1] if champion else None, **({"why": why} if why else {})}
