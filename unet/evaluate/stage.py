"""The ``evaluate`` stage's work: the best checkpoint on the test split (and val), and its outputs.

``run(config)`` scores every test and validation patient through the shipped model's path,
then writes ``eval.json`` (the headline split's figures, val nested), ``per_patient.csv``, one
NIfTI prediction a patient and overlays of the best, median and worst test patients, each
written whole or not at all.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from unet.config import PipelineConfig
from unet.device import select_device
from unet.evaluate.figures import per_patient_bars
from unet.evaluate.overlay import overlay_figure
from unet.evaluate.scores import PatientResult, evaluate_patient, original_images, per_patient_table, split_metrics
from unet.fanout import Each, serial
from unet.io import nifti
from unet.io.atomic import atomic_dir, atomic_file
from unet.io.layout import json_safe, read_manifest
from unet.predict.segmenter import Segmenter
from unet.threads import settle_threads

log = logging.getLogger(__name__)

PARTS = ("test", "val")  # the headline part first: val heads the figures when a split has no test part


def load_segmenter(config: PipelineConfig) -> Segmenter:
    """The train stage's best checkpoint as the shipped model runs it, with evaluate's threshold and TTA."""
    return Segmenter.from_checkpoint(config.train.best_path, device=select_device(config.train.device),
                                     tta=config.evaluate.tta, threshold=config.evaluate.threshold)


def parts_of(manifest: pd.DataFrame) -> list[str]:
    return [p for p in PARTS if (manifest["split"] == p).any()]


def evaluate_part(segmenter: Segmenter, manifest: pd.DataFrame, part: str) -> list[PatientResult]:
    """Every patient of one split part, in patient order."""
    rows = manifest[manifest["split"] == part]
    return [evaluate_patient(segmenter, patient_rows) for _, patient_rows in rows.groupby("patient", sort=True)]


def headline_metrics(results: dict[str, list[PatientResult]], tta: bool) -> dict[str, Any]:
    """``eval.json``: the first part's figures at the top (``split`` names it), the others nested."""
    headline, *others = list(results)
    metrics: dict[str, Any] = {"split": headline, "tta": tta, **split_metrics(results[headline])}
    metrics.update({part: split_metrics(results[part]) for part in others})
    return metrics


def pick_for_overlays(results: list[PatientResult], count: int) -> list[PatientResult]:
    """The best, median and worst patients by DSC (then others), so a reader sees the spread."""
    order = sorted(range(len(results)), key=lambda i: results[i].scores["dsc"])
    picks = [order[-1], order[len(order) // 2], order[0], *order[1:-1]]
    return [results[i] for i in dict.fromkeys(picks)][:count]


def write_overlays(results: list[PatientResult], manifest: pd.DataFrame, folder: Path, count: int) -> list[str]:
    """``<patient>.png`` for the picked patients: FLAIR with truth (green) and prediction (red)."""
    names = []
    with atomic_dir(folder) as staging:
        for result in pick_for_overlays(results, count):
            rows = manifest[manifest["patient"] == result.patient].sort_values("index")
            name = f"{result.patient}.png"
            overlay_figure(original_images(rows), result.prediction, staging / name, truth=result.truth,
                           slice_numbers=list(rows["slice"]),
                           title=f"{result.patient} ({result.split}): DSC {result.scores['dsc']:.3f}")
            names.append(name)
    return names


def write_outputs(config: PipelineConfig, results: dict[str, list[PatientResult]], metrics: dict[str, Any],
                  manifest: pd.DataFrame) -> list[str]:
    """Predictions, per-patient table, ``eval.json`` and the overlays; returns the overlay names."""
    ev = config.evaluate
    everyone = [r for part in results.values() for r in part]
    with atomic_dir(ev.predictions_dir) as staging:
        for r in everyone:
            nifti.write_volume(staging / f"{r.patient}_pred.nii.gz", r.prediction,
                               description="lgg-unet prediction; identity affine")
    table = per_patient_table(everyone)
    with atomic_file(ev.per_patient_path, "w") as handle:
        table.to_csv(handle, index=False)
    per_patient_bars(table, ev.per_patient_figure, headline=metrics["split"])
    with atomic_file(ev.metrics_path, "w") as handle:
        json.dump(json_safe(metrics), handle, indent=2)
    return write_overlays(results[metrics["split"]], manifest, ev.overlays_dir, ev.overlay_patients)


def describe(metrics: dict[str, Any]) -> str:
    """The stage's one line for the log."""
    return (f"{metrics['split']}: per-volume DSC mean {metrics['dsc_mean']:.4f}, median {metrics['dsc_median']:.4f} over "
            f"{metrics['n_volumes']} patients (no post-processing: {metrics['dsc_no_postprocess_mean']:.4f}); global "
            f"Dice {metrics['global_dice']:.4f}, tumour-slice Dice {metrics['tumour_slice_dice']:.4f}")


def run(config: PipelineConfig, *, each: Each = serial) -> dict[str, Any]:
    """The stage: the shipped model on every test and validation patient (one ``each`` item a split
    part), then its outputs; returns ``eval.json``'s figures."""
    manifest = read_manifest(config.prepare.manifest_path)
    settle_threads(config.train.threads)  # the cores others leave free (unet/threads.py)
    parts = parts_of(manifest)
    scored = each(functools.partial(evaluate_part, load_segmenter(config), manifest), parts)
    results = dict(zip(parts, scored, strict=True))
    metrics = headline_metrics(results, config.evaluate.tta)
    overlays = write_outputs(config, results, metrics, manifest)
    log.info("%s; overlays: %s", describe(metrics), ", ".join(overlays))
    return metrics
