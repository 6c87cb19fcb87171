"""The whole DAG as one Prefect flow: a DVC experiment, so dvc.lock, the DVC cache and MLflow agree.

``pipeline_flow`` (the UI deployments' flow) is ``dvc exp run --temp -S key=value ... [targets]`` here: the
experiment runs in a copy, the workspace unchanged until ``dvc exp apply NAME``; every parameter is checked
against the typed config first (``tasks.experiment``), none names a folder, store or command. In the workspace:
    python -m flows.pipeline -S train.epochs=3 --name short-run     # or --temp, or --repro augment
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from prefect import flow

from tasks import experiment

REPO = Path(__file__).resolve().parents[1]


@flow(name="lgg-pipeline", log_prints=True)
def pipeline_flow(
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    image_size: int | None = None,
    data_source: Literal["synthetic", "kaggle", "archive", "local"] | None = None,
    model_variant: Literal["reference", "paper"] | None = None,
    device: Literal["auto", "cuda", "cpu"] | None = None,
    overrides: dict[str, str] | None = None,
    targets: list[str] | None = None,
    experiment_name: str | None = None,
    force: bool = False,
) -> dict:
    """Run the DVC pipeline as an experiment in a temporary copy; the workspace stays as it is.

    Args:
        epochs: train.epochs (each typed parameter left empty keeps params.yaml's value)
        lr: train.lr, the learning rate
        batch_size: train.batch_size
        image_size: prepare.image_size, the network's input size in px (a multiple of 16)
        data_source: data.source ('archive' and 'local' read data.path from params.yaml)
        model_variant: model.variant
        device: train.device
        overrides: any other params.yaml key except paths, e.g. {"train.scheduler": "cosine"}
        targets: run only these stages and what they depend on, e.g. ["augment"]; empty: all
        experiment_name: its name in dvc exp show; bring it in with dvc exp apply NAME
        force: rerun the stages even when nothing they depend on changed
    """
    typed = dict(epochs=epochs, lr=lr, batch_size=batch_size, image_size=image_size, data_source=data_source,
                 model_variant=model_variant, device=device)
    return experiment.run_pipeline(REPO, typed, overrides, targets or [], mode="temp", name=experiment_name,
                                   force=force)


@flow(name="lgg-pipeline-workspace", log_prints=True)
def workspace_flow(overrides: dict[str, str], targets: list[str], mode: str, experiment_name: str | None,
                   force: bool) -> dict:
    """The command line's run: in the workspace (dvc exp run, or dvc repro), or --temp. Not deployed."""
    return experiment.run_pipeline(REPO, {}, overrides, targets, mode=mode, name=experiment_name, force=force)


def main(argv: list[str] | None = None) -> int:
    return experiment.run_command_line(REPO, workspace_flow, experiment.parse_cli(argv, __doc__))


if __name__ == "__main__":
    sys.exit(main())
