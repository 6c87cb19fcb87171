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
from unet.register.stage import describe


@stage_flow("register")
def register_flow(config: PipelineConfig) -> dict[str, Any]:
    result = register_tasks.run(config)
    print(describe(result))
    register_tasks.publish_report(config, result)
    return result


def run(config: PipelineConfig) -> dict[str, Any]:
    return register_flow(config)


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
