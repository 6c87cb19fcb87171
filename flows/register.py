"""The ``register`` stage: the train run's model into the MLflow model registry.

Each run's model becomes a version of ``registry.model_name`` with the alias ``challenger``;
``champion`` moves to it only when it scores better (``unet.register.decision``). What happened
goes to ``registry.json``. Load the champion with
``mlflow.pyfunc.load_model("models:/lgg-unet@champion")``.
"""

from __future__ import annotations

import sys
from typing import Any

from flows.common import stage_flow, stage_main
from tasks import register as register_tasks
from unet.config import PipelineConfig


@stage_flow("register")
def register_flow(config: PipelineConfig) -> dict[str, Any]:
    result = register_tasks.register(config)
    champion = f"version {result['champion_version']}" if result["champion_version"] else "none yet"
    why = f" ({result['why']})" if result.get("why") else ""
    print(f"{result['model_name']} version {result['version']} ({result['score_metric']} {result['score']:.4f}): "
          f"{result['decision']}{why}; champion: {champion}")
    register_tasks.publish_report(result)
    return result


def run(config: PipelineConfig) -> dict[str, Any]:
    return register_flow(config)


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
