"""The ``cv`` stage's work: train each fold, segment its test patients, gather every patient's score.

Output under ``cv.out_dir``: ``fold-<k>/`` (``fold.json``: its patients and key; ``models/``;
``train.json``, the history and curve; ``scores.csv``; ``predictions/``) and ``predictions/``
(every patient's out-of-fold mask as NIfTI at the original geometry, as evaluate writes them).
A fold whose key (patients, model, recipe, data) is unchanged keeps its results, so a changed
fold reruns alone; a fold killed mid-training resumes from its last epoch (``train.resume``).

The folds run through the stage's ``each``: here one after another (``serial``, or one Prefect
task a fold), or one flow run a fold on a Prefect work pool (``tasks.cv_pool.on_pool``); either way
each fold is ``run_fold``, and ``attempts.json`` records where and when it ran (beside
the output, not in it: .dvcignore leaves it out of what DVC hashes and caches).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from unet.config import PipelineConfig
from unet.cv.folds import assignments, fold_config, fold_key, fold_manifest, fold_parts
from unet.device import select_device
from unet.evaluate.scores import evaluate_patient, per_patient_table
from unet.fanout import Each, serial
from unet.io import nifti
from unet.io.atomic import atomic_dir, atomic_file
from unet.io.layout import json_safe, read_manifest
from unet.predict.ensemble import EnsembleSegmenter
from unet.predict.segmenter import Segmenter
from unet.train import stage as train_stage

log = logging.getLogger(__name__)

FOLD_FILE, SCORES_FILE, ENSEMBLE_FILE = "fold.json", "scores.csv", "ensemble.json"
# where and when a fold ran: the run's facts, not the data's; .dvcignore keeps it out of the output's hash
ATTEMPTS_FILE = "attempts.json"
SCORES = ("dsc", "dsc_no_postprocess", "iou", "precision", "recall", "hd95", "avd_relative")
MISSED_DSC = 0.1  # a patient under this was missed: the lesion not found, or nothing found


def data_digest(config: PipelineConfig) -> str:
    """The prepared data and weight maps as the folds see them (their manifest and summary)."""
    digest = hashlib.sha256(Path(config.prepare.manifest_path).read_bytes())
    if config.weightmaps.summary_path.is_file():
        digest.update(config.weightmaps.summary_path.read_bytes())
    return digest.hexdigest()[:16]


def read_fold(folder: Path) -> dict[str, Any]:
    path = folder / FOLD_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def write_fold(folder: Path, record: dict[str, Any]) -> None:
    with atomic_file(folder / FOLD_FILE, "w") as handle:
        json.dump(record, handle, indent=2)


def read_attempts(folder: Path) -> list[dict[str, Any]]:
    path = folder / ATTEMPTS_FILE
    return json.loads(path.read_text()) if path.is_file() else []


def write_attempts(folder: Path, attempts: list[dict[str, Any]]) -> None:
    with atomic_file(folder / ATTEMPTS_FILE, "w") as handle:
        json.dump(attempts, handle, indent=2)


def predict_fold(config: PipelineConfig, manifest: pd.DataFrame, fold: int) -> pd.DataFrame:
    """The fold model on the fold's test patients: NIfTI masks and one score row a patient."""
    cfg = fold_config(config, fold)
    segmenter = Segmenter.from_checkpoint(cfg.train.best_path, device=select_device(config.train.device),
                                          threshold=config.evaluate.threshold)
    rows = manifest[manifest["split"] == "test"]
    results = [evaluate_patient(segmenter, patient_rows) for _, patient_rows in rows.groupby("patient", sort=True)]
    with atomic_dir(config.cv.fold_dir(fold) / "predictions") as staging:
        for r in results:
            nifti.write_volume(staging / f"{r.patient}_pred.nii.gz", r.prediction,
                               description=f"lgg-unet out-of-fold prediction, fold {fold}; identity affine")
    table = per_patient_table(results).assign(fold=fold)
    with atomic_file(config.cv.fold_dir(fold) / SCORES_FILE, "w") as handle:
        table.to_csv(handle, index=False)
    return table


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def worker_name() -> str:
    """Who runs a fold: ``LGG_WORKER`` (a pool's worker sets it), else this machine's name."""
    return os.environ.get("LGG_WORKER") or socket.gethostname()


def fold_done(config: PipelineConfig, fold: int, key: str) -> bool:
    """Whether fold ``fold`` finished with this key: its results stand and it never trains again."""
    record = read_fold(config.cv.fold_dir(fold))
    return record.get("key") == key and bool(record.get("done")) and (config.cv.fold_dir(fold) / SCORES_FILE).is_file()


def run_fold(config: PipelineConfig, manifest: pd.DataFrame, fold: int, assignment: dict[str, str],
             on_epoch: Callable | None = None, key: str | None = None, run: str | None = None) -> pd.DataFrame:
    """Train (or resume, or keep) fold ``fold`` and score its test patients; their score rows.

    ``fold.json`` holds what decides the fold (its key and patients); ``attempts.json`` one entry an
    attempt (``worker``, ``started``, ``finished``): a fold resumed after its worker died shows both.
    ``key``: the one the caller computed (a pool's fold checks it against the data it sees here);
    ``run``: the orchestrator's id of this attempt (a flow run's)."""
    folder = config.cv.fold_dir(fold)
    key = key or fold_key(assignment, config, data_digest(config))
    if fold_done(config, fold, key):
        log.info("fold %d: unchanged, its results kept", fold)
        return pd.read_csv(folder / SCORES_FILE)
    record = read_fold(folder)
    if record.get("key") != key and folder.exists():
        shutil.rmtree(folder)  # another fold now (patients, recipe or data changed): start afresh
        record = {}
    attempts = [*read_attempts(folder), {"worker": worker_name(), "started": now(), **({"run": run} if run else {})}]
    write_fold(folder, {"fold": fold, "key": key, "done": False, "parts": fold_parts(assignment)})
    write_attempts(folder, attempts)
    ours = fold_manifest(manifest, assignment)
    cfg = fold_config(config, fold)
    train_stage.run(cfg, on_epoch=on_epoch, load_data=lambda c: train_stage.load_training_data(c, ours),
                    state=train_stage.resume_state(cfg))
    table = predict_fold(config, ours, fold)
    attempts[-1]["finished"] = now()
    write_attempts(folder, attempts)
    write_fold(folder, {**read_fold(folder), "done": True})
    return table


@dataclass(frozen=True)
class FoldWork:
    """The stage's ``each`` function: ``work(k)`` trains (or resumes, or keeps) fold ``k`` and scores its
    test patients. A pool's ``each`` (``tasks.cv_pool.on_pool``) runs the same ``run_fold`` on its
    workers from ``config`` and ``assignments``."""

    config: PipelineConfig
    manifest: pd.DataFrame
    assignments: list[dict[str, str]]
    on_epoch: Callable[[int, int, dict], None] | None = None  # (fold, epoch, metrics)

    def __call__(self, fold: int) -> pd.DataFrame:
        report = functools.partial(self.on_epoch, fold) if self.on_epoch else None
        return run_fold(self.config, self.manifest, fold, self.assignments[fold], report)


def fold_runs(config: PipelineConfig, root: Path = Path(".")) -> list[dict[str, Any]]:
    """Where and when each fold ran (the attempt that finished it), of the stage in ``root``."""
    runs = []
    for fold in range(config.cv.folds):
        attempts = read_attempts(root / config.cv.fold_dir(fold)) or [{}]
        last = attempts[-1]
        runs.append({"fold": fold, **{k: last.get(k) for k in ("worker", "started", "finished")},
                     "attempts": len(attempts), **({"run": last["run"]} if last.get("run") else {})})
    return runs


def studied_manifest(config: PipelineConfig) -> pd.DataFrame:
    """The patients the folds are dealt from: all, or all but the main split's test patients."""
    manifest = read_manifest(config.prepare.manifest_path)
    return manifest[manifest["split"] != "test"] if config.cv.holdout_test else manifest


def gather_predictions(config: PipelineConfig) -> int:
    """Every fold's out-of-fold masks into ``cv.predictions_dir`` (hard links where the disk allows)."""
    count = 0
    with atomic_dir(config.cv.predictions_dir) as staging:
        for fold in range(config.cv.folds):
            for path in sorted((config.cv.fold_dir(fold) / "predictions").glob("*.nii.gz")):
                try:
                    os.link(path, staging / path.name)
                except OSError:
                    shutil.copy2(path, staging / path.name)
                count += 1
    return count


def summarise(table: pd.DataFrame, folds: int, failed_below: float = 0.25) -> dict[str, Any]:
    """``cv.json``: per-volume scores over every patient, the per-fold means and their spread; the folds
    whose mean is under ``failed_below`` (they did not learn) and the patients missed."""
    metrics: dict[str, Any] = {"folds": folds, "n_volumes": int(len(table))}
    for score in SCORES:
        values = table[score].astype(float)
        metrics[f"{score}_mean"], metrics[f"{score}_median"] = float(values.mean()), float(values.median())
    per_fold = table.groupby("fold")["dsc"].mean()
    metrics["fold_dsc_mean"] = {str(k): float(v) for k, v in per_fold.items()}
    metrics.update(fold_dsc_std=float(per_fold.std(ddof=0)), fold_dsc_min=float(per_fold.min()),
                   fold_dsc_max=float(per_fold.max()))
    metrics["failed_folds"] = [int(k) for k, v in per_fold.items() if v < failed_below]
    metrics["failed_fold_below"] = failed_below
    missed = table[table["dsc"].astype(float) < MISSED_DSC].sort_values("patient")
    metrics["missed_patients"] = [{"patient": r.patient, "fold": int(r.fold), "dsc": float(r.dsc),
                                   "recall": float(r.recall) if "recall" in table else None} for r in missed.itertuples()]
    metrics["dsc_mean_without_missed"] = float(metrics["dsc_mean"] + missed_cost(table))
    return json_safe(metrics)


def missed_cost(table: pd.DataFrame) -> float:
    """How much the missed patients lower the per-volume mean (the mean without them, less the mean)."""
    kept = table[table["dsc"].astype(float) >= MISSED_DSC]["dsc"].astype(float)
    return float(kept.mean() - table["dsc"].astype(float).mean()) if len(kept) else 0.0


def failed_folds_said(metrics: dict[str, Any]) -> str | None:
    """Why the fold ensemble may not be champion, in words; None when every fold learned."""
    failed = metrics.get("failed_folds") or []
    if not failed:
        return None
    means = ", ".join(f"fold {k} DSC {metrics['fold_dsc_mean'][str(k)]:.3f}" for k in failed)
    return f"{len(failed)} fold(s) did not learn ({means}; under {metrics['failed_fold_below']:g})"


def write_outputs(config: PipelineConfig, table: pd.DataFrame, metrics: dict[str, Any]) -> None:
    with atomic_file(config.cv.per_patient_path, "w") as handle:
        table[["patient", "fold", "split", *[c for c in table.columns if c not in ("patient", "fold", "split")]]] \
            .to_csv(handle, index=False)
    with atomic_file(config.cv.metrics_path, "w") as handle:
        json.dump(metrics, handle, indent=2)


def fold_checkpoints(config: PipelineConfig) -> list[Path]:
    return [fold_config(config, k).train.best_path for k in range(config.cv.folds)]


def ensemble_rule(table: pd.DataFrame) -> dict[str, Any]:
    """The fold ensemble's post-processing, decided on every out-of-fold prediction: keep only the
    largest 3-D component where that scores at least as well as the threshold alone."""
    with_it, without = float(table["dsc_largest_component"].mean()), float(table["dsc_no_postprocess"].mean())
    return {"largest_component": with_it >= without, "oof_dsc_largest_component": with_it,
            "oof_dsc_no_postprocess": without, "patients": int(len(table))}


def ensemble_path(config: PipelineConfig) -> Path:
    """``ensemble.json``: the ensemble's rule, beside the folds (the logged ensemble carries it)."""
    return config.cv.out_dir / ENSEMBLE_FILE


def read_ensemble_rule(path: Path) -> bool | None:
    """The rule ``ensemble.json`` records; None when there is none (an ensemble of older folds)."""
    return json.loads(Path(path).read_text())["largest_component"] if Path(path).is_file() else None


def score_holdout(config: PipelineConfig, held_out: pd.DataFrame) -> dict[str, Any]:
    """Each fold model alone and their ensemble on patients no fold saw: per-volume DSC means."""
    device = select_device(config.train.device)
    models = [Segmenter.from_checkpoint(p, device=device, threshold=config.evaluate.threshold)
              for p in fold_checkpoints(config)]
    ensemble = EnsembleSegmenter(models, config.evaluate.threshold, bool(read_ensemble_rule(ensemble_path(config))))
    patients = [rows for _, rows in held_out.groupby("patient", sort=True)]
    singles = [float(np.mean([evaluate_patient(m, rows).scores["dsc"] for rows in patients])) for m in models]
    together = [evaluate_patient(ensemble, rows).scores["dsc"] for rows in patients]
    return {"patients": len(patients), "ensemble_dsc_mean": float(np.mean(together)),
            "single_fold_dsc_mean": float(np.mean(singles)), "best_single_fold_dsc_mean": float(max(singles)),
            "fold_dsc_means": singles}


def describe(metrics: dict[str, Any]) -> str:
    """The stage's one line for the log."""
    if not metrics["folds"]:
        return metrics["note"]
    return (f"cross-validation, {metrics['folds']} folds: per-volume DSC mean {metrics['dsc_mean']:.4f}, median "
            f"{metrics['dsc_median']:.4f} over {metrics['n_volumes']} patients (fold means {metrics['fold_dsc_min']:.4f}"
            f"..{metrics['fold_dsc_max']:.4f})")


def run(config: PipelineConfig, *, each: Each = serial, on_epoch: Callable[[int, int, dict], None] | None = None,
        tracking_store: str | None = None) -> dict[str, Any]:
    """The stage: every fold (one ``each`` item a fold, ``FoldWork``), then every patient's out-of-fold
    score gathered; returns ``cv.json``'s figures with where each fold ran (``fold_runs``).
    ``on_epoch(fold, epoch, metrics)``: a fold's epoch done; ``tracking_store``: where the stage's
    MLflow records go, as ``cv.json`` names it (no password)."""
    if not config.cv.folds:
        metrics = {"folds": 0, "n_volumes": 0, "note": "cross-validation is off (cv.folds: 0)"}
        write_outputs(config, pd.DataFrame(columns=["patient", "fold", "split", "dsc"]), metrics)
        return metrics
    manifest = read_manifest(config.prepare.manifest_path)
    studied = studied_manifest(config)
    folds = assignments(studied, config)
    tables = each(FoldWork(config, studied, folds, on_epoch), list(range(len(folds))))
    table = pd.concat(tables, ignore_index=True).sort_values("patient").reset_index(drop=True)
    if table["patient"].duplicated().any() or set(table["patient"]) != set(studied["patient"]):
        raise AssertionError("every patient must be predicted exactly once out of fold")
    gather_predictions(config)
    metrics = summarise(table, config.cv.folds, failed_below=config.registry.champion_floor / 2)
    metrics["ensemble_postprocess"] = ensemble_rule(table)
    with atomic_file(ensemble_path(config), "w") as handle:
        json.dump(metrics["ensemble_postprocess"], handle, indent=2)
    if tracking_store:
        metrics["tracking_store"] = tracking_store
    if config.cv.holdout_test:
        metrics["holdout"] = score_holdout(config, manifest[manifest["split"] == "test"])
    write_outputs(config, table, metrics)
    metrics["fold_runs"] = fold_runs(config)  # returned and logged, not in cv.json: the run's facts
    log.info("%s", describe(metrics))
    if said := failed_folds_said(metrics):
        log.warning("cross-validation: %s", said)
    if metrics["missed_patients"]:
        log.warning("cross-validation: %d patient(s) missed (DSC under %g): %s; they pull the mean down by %.3f",
                    len(metrics["missed_patients"]), MISSED_DSC,
                    ", ".join(m["patient"] for m in metrics["missed_patients"]),
                    metrics["dsc_mean_without_missed"] - metrics["dsc_mean"])
    return metrics
