"""``python -m flows <stage> [--params params.yaml]``: one stage, its mistakes said before anything heavy loads.

What ``dvc repro`` runs. params.yaml and the stage's inputs are checked first (``unet.inputs``:
no Prefect, torch or MLflow imported, no server started), so a mistake is one ``error:`` line at
once; then the project's Prefect server is found or started (``tasks.project_server``), and only
then is the stage's flow (``flows/<stage>.py``) loaded and run. ``python -m flows.<stage>`` runs
the same stage, with its imports first.
"""

from __future__ import annotations

import importlib
import sys

from flows.common import run_stage
from unet.inputs import NEEDS

STAGES = ("check", *NEEDS)
NO_FLOW = ("check", "summary")  # commands that start no Prefect run (params and servers; the demo's summary)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in STAGES:
        print(f"usage: python -m flows <stage> [--params params.yaml]; the stages: {', '.join(STAGES)}",
              file=sys.stderr)
        return 2
    stage, rest = argv[0], argv[1:]
    if stage in NO_FLOW:
        return importlib.import_module(f"flows.{stage}").main(rest)
    return run_stage(stage, lambda: importlib.import_module(f"flows.{stage}").run,
                     f"the {stage} stage (flows/{stage}.py)", rest)


if __name__ == "__main__":
    sys.exit(main())
