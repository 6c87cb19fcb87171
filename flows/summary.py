"""What ``make demo`` prints at the end: the scores, the registry decision, where to look next."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from flows.common import stage_main
from tasks import project_server
from tasks.tracking import experiment_link, tracking_uri
from unet.config import PipelineConfig
from unet.io.layout import read_summary


def read_speed(run_path: Path) -> float | None:
    """The last training's images/s in this workspace (its run record; none after a fresh checkout)."""
    try:
        return json.loads(run_path.read_text()).get("images_per_s")
    except (OSError, ValueError):
        return None


def run(config: PipelineConfig) -> dict:
    evaluation = read_summary(config.evaluate.metrics_path, "evaluate")
    registry = read_summary(config.registry.record_path, "register")
    train = read_summary(config.train.metrics_path, "train")
    speed = read_speed(config.train.run_path)
    print(f"\nvalidation DSC {train['best_val_dsc']:.3f} (epoch {train['best_epoch']} of {train['epochs']} ships, "
          f"{train.get('selected', 'best')}); trained on {train['device']} in {train.get('precision', '?')} with "
          f"{train.get('kernels', '?')} kernels, threads {train.get('threads', '?')}"
          + (f", {speed:.0f} images/s" if speed else ""))
    print(f"{evaluation['split']} split, {evaluation['n_volumes']} patients, at the original geometry: per-volume DSC "
          f"mean {evaluation['dsc_mean']:.3f}, median {evaluation['dsc_median']:.3f}; "
          f"global Dice {evaluation['global_dice']:.3f}")
    if config.cv.folds and config.cv.metrics_path.is_file():
        print(cv_summary(read_summary(config.cv.metrics_path, "cv")))
    champion = (f"champion is version {registry['champion_version']}" if registry.get("champion_version")
                else "no champion yet")
    print(f"registry: {registry['model_name']} version {registry['version']}: {registry['decision']}"
          + (f" ({registry['why']})" if registry.get("why") else "") + f"; {champion}")
    print(f"MLflow store: {tracking_uri(config.mlflow)}")
    print(project_server.describe(project_server.project_home(Path.cwd(), os.environ)))
    print(f"MLflow UI: make ui, then {experiment_link(config.mlflow)}")
    print(f"curves: dvc plots show, or offline {config.train.curve_path} and {config.evaluate.per_patient_figure}")
    if registry.get("champion_version"):
        print(f"use it: mlflow.pyfunc.load_model('models:/{registry['model_name']}@champion').predict(slices)")
    else:
        print(f"no champion to use yet; the newest: mlflow.pyfunc.load_model('models:/{registry['model_name']}"
              "@challenger')")
    return registry


def cv_summary(cv: dict) -> str:
    """What the cross-validation shows, in words: its figure, the folds that did not learn, the
    patients it missed and what they cost the mean."""
    lines = [f"cross-validation, {cv['folds']} folds: every one of {cv['n_volumes']} patients segmented by a model "
             f"that never saw it (a fold trains on {1 - 1 / cv['folds']:.0%} of them): per-volume DSC mean "
             f"{cv['dsc_mean']:.3f}, median {cv['dsc_median']:.3f}, fold means {cv['fold_dsc_min']:.3f}.."
             f"{cv['fold_dsc_max']:.3f}"]
    missed = cv.get("missed_patients") or []
    if missed:
        names = ", ".join(f"{m['patient']} (fold {m['fold']})" for m in missed)
        lines.append(f"  missed (DSC under 0.1): {names}; without them the mean is {cv['dsc_mean_without_missed']:.3f}. "
                     "On a few patients one missed lesion moves the mean by hundredths: the median is the steadier "
                     "figure")
    for k in cv.get("failed_folds") or []:
        lines.append(f"  fold {k} did not learn (mean DSC {cv['fold_dsc_mean'][str(k)]:.3f}): its ensemble is not "
                     "made champion; more epochs (cv.epochs) or another cv.seed")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return stage_main(run, __doc__, argv, prefect=False)  # reads files, starts no flow run


if __name__ == "__main__":
    sys.exit(main())
