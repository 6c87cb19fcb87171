"""The whole DAG as one Prefect flow: a DVC experiment, so dvc.lock, the DVC cache and MLflow agree.

``pipeline_flow`` runs ``dvc exp run -S key=value ... [targets]`` in this repository (no parameter
names another folder); DVC runs each stage as ``python -m flows.<stage>``, their output streams
into this run's logs. Overrides are checked against the typed config first (``tasks.experiment``).

    python -m flows.pipeline -S train.epochs=3 -S train.lr=3e-4 --name short-run   # or --repro augment
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger

from tasks import experiment
from tasks.reports import pipeline_report, publish
from unet.errors import UserError
REPO = Path(__file__).resolve().parents[1]


@flow(name="lgg-pipeline", log_prints=True)
def pipeline_flow(
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    image_size: int | None = None,
    data_source: Literal["synthetic", "kaggle", "archive", "local"] | None = None,
    data_path: str | None = None,
    model_variant: Literal["reference", "paper"] | None = None,
    device: Literal["auto", "cuda", "cpu"] | None = None,
    overrides: dict[str, str] | None = None,
    targets: list[str] | None = None,
    mode: Literal["experiment", "repro"] = "experiment",
    experiment_name: str | None = None,
    force: bool = False,
) -> dict:
    """Run the DVC pipeline (default: every stage) as a DVC experiment in the workspace.

    Args:
        epochs: train.epochs; empty keeps params.yaml's value (as every typed parameter here)
        lr: train.lr, the learning rate
        batch_size: train.batch_size
        image_size: prepare.image_size, the network's input size in px (a multiple of 16)
        data_source: data.source; 'archive' and 'local' need data_path
        data_path: data.path, the Kaggle zip (archive) or an extracted kaggle_3m folder (local)
        model_variant: model.variant
        device: train.device
        overrides: any other params.yaml key, e.g. {"train.scheduler": "cosine", "augment.copies": "4"}
        targets: run only these stages and what they depend on, e.g. ["augment"]; empty: all
        mode: 'experiment' (dvc exp run -S ...) or 'repro' (write the overrides into params.yaml, dvc repro)
        experiment_name: the experiment's name in dvc exp show (experiment mode); empty: DVC picks one
        force: rerun the stages even when nothing they depend on changed
    """
    sets = experiment.collect_overrides(dict(epochs=epochs, lr=lr, batch_size=batch_size, image_size=image_size,
                                             data_source=data_source, data_path=data_path,
                                             model_variant=model_variant, device=device), overrides)
    config = experiment.validate_overrides(REPO / "params.yaml", sets)
    summary = experiment.run_experiment(REPO, config, sets, list(targets or []), mode=mode, name=experiment_name,
                                        force=force, log=get_run_logger().info)
    publish("lgg-pipeline", pipeline_report(summary), description=f"lgg-pipeline: {summary['status']}")
    experiment.check_finished(summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = experiment.parse_cli(argv, __doc__)
    try:
        experiment.validate_overrides(REPO / "params.yaml", args["overrides"])  # before a Prefect run starts
        pipeline_flow(**args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
