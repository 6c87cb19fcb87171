"""What ``make demo`` prints at the end: the scores, the registry decision, where to look next."""

from __future__ import annotations

import os
import sys

from flows.common import stage_main
from tasks.tracking import tracking_uri
from unet.config import PipelineConfig
from unet.io.layout import read_summary


def run(config: PipelineConfig) -> dict:
    evaluation = read_summary(config.evaluate.metrics_path, "evaluate")
    registry = read_summary(config.registry.record_path, "register")
    train = read_summary(config.train.metrics_path, "train")
    print(f"\nbest validation DSC {train['best_val_dsc']:.3f} (epoch {train['best_epoch']} of {train['epochs']}, "
          f"{train['device']})")
    print(f"{evaluation['split']} split, {evaluation['n_volumes']} patients, at the original geometry: per-volume DSC "
          f"mean {evaluation['dsc_mean']:.3f}, median {evaluation['dsc_median']:.3f}; "
          f"global Dice {evaluation['global_dice']:.3f}")
    print(f"registry: {registry['model_name']} version {registry['version']}: {registry['decision']}; "
          f"champion is version {registry['champion_version']}")
    print(f"MLflow store: {tracking_uri(config.mlflow)}")
    prefect, mlflow_port = os.environ.get("PREFECT_PORT", "4200"), os.environ.get("MLFLOW_PORT", "5000")
    print(f"UIs: make ui, then Prefect http://127.0.0.1:{prefect} and MLflow http://127.0.0.1:{mlflow_port}; "
          "curves: dvc plots show (reports/*.png offline)")
    print(f"use it: mlflow.pyfunc.load_model('models:/{registry['model_name']}@champion').predict(slices)")
    return registry


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
