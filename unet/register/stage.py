"""The ``register`` stage's work: the trained model into a model registry, by the rule of
``unet.register.decision``, and what happened into ``registry.json``.

The registry is the stage's hook (``Registry``; MLflow's is ``tasks.register.MlflowRegistry``): it finds
the run that trained ``train.best_path`` and its score, adds a version, attaches the checked exports
and the model card, and moves the aliases. The stage owns the order, the one item (the weights, by
their digest), the files and the summary.
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Any, Protocol

from unet.config import PipelineConfig
from unet.fanout import Each, serial
from unet.io.atomic import atomic_file
from unet.models.checkpoint import WEIGHTS_TAG

log = logging.getLogger(__name__)


class Registry(Protocol):
    def trained(self, config: PipelineConfig) -> dict[str, Any]:
        """The run of ``train.best_path``: ``run_id``, ``weights`` (digest), ``score_metric``, ``score``."""

    def add_version(self, config: PipelineConfig, trained: dict[str, Any]) -> str:
        """The version of these weights (a new one, or the one they already have)."""

    def attach_exports(self, config: PipelineConfig, trained: dict[str, Any], version: str) -> dict[str, Any]:
        """ONNX and TorchScript checked on real slices and the model card, beside the version; the check."""

    def move_aliases(self, config: PipelineConfig, version: str, score: float) -> dict[str, Any]:
        """``challenger`` to ``version``, ``champion`` by the rule: ``decision``, ``champion_version`` ..."""


def enter(config: PipelineConfig, registry: Registry, trained: dict[str, Any], weights: str) -> dict[str, Any]:
    """The weights ``weights`` (their digest's start) as a version, with their exports where
    ``registry.export`` is on."""
    version = registry.add_version(config, trained)
    log.info("weights %s... are version %s of %s", weights, version, config.registry.model_name)
    entered = {"version": int(version)}
    if config.registry.export:  # may fail: then no alias moves
        entered["export"] = registry.attach_exports(config, trained, version)
    return entered


def describe(result: dict[str, Any]) -> str:
    """The stage's one line for the log."""
    champion = f"version {result['champion_version']}" if result.get("champion_version") else "none yet"
    why = f" ({result['why']})" if result.get("why") else ""
    return (f"{result['model_name']} version {result['version']} ({result['score_metric']} {result['score']:.4f}): "
            f"{result['decision']}{why}; champion: {champion}")


def run(config: PipelineConfig, *, each: Each = serial, registry: Registry) -> dict[str, Any]:
    """The stage: the trained weights (its one ``each`` item) into ``registry``, then ``registry.json``
    (less the run id, which differs on every run) and the receipt; returns the outcome with the run id.
    ``registry`` has no default: the stage is the registry's entry."""
    trained = registry.trained(config)
    [entered] = each(functools.partial(enter, config, registry, trained), [trained["weights"][:12]])
    result = {"model_name": config.registry.model_name, "version": entered["version"],
              "score_metric": trained["score_metric"], "score": trained["score"],
              **registry.move_aliases(config, str(entered["version"]), trained["score"])}
    if "export" in entered:
        result["export"] = entered["export"]
    with atomic_file(config.registry.record_path, "w") as handle:
        json.dump(result, handle, indent=2)
    receipt = {"model_name": result["model_name"], "version": result["version"], WEIGHTS_TAG: trained["weights"]}
    with atomic_file(config.registry.receipt_path, "w") as handle:  # a new store's clone registers again
        json.dump(receipt, handle, indent=2)
    return {**result, "run_id": trained["run_id"]}
