"""The ``evaluate`` stage: the reference protocol on the test split (and val), at 256x256."""

from __future__ import annotations

import json
import sys

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.common import stage_main
from tasks.reports import evaluate_report, publish
from tasks import tracking
from unet.io import nifti
from unet.io.atomic import atomic_dir, atomic_file
from unet.models.checkpoint import model_from_checkpoint
from unet.config import PipelineConfig
from unet.evaluate.scores import PatientResult, evaluate_patient, json_safe, per_patient_table, split_metrics
from unet.evaluate.overlay import overlay_figure
from unet.prepare.stage import load_patient_arrays, read_manifest
from unet.prepare.raw import read_image
from unet.train.loop import BEST, select_device

PARTS = ("test", "val")


@task(name="evaluate-part", cache_policy=NO_CACHE, persist_result=False, task_run_name="evaluate-{part}")
def evaluate_part(config: PipelineConfig, manifest, model, device, part: str) -> list[PatientResult]:
    rows = manifest[manifest["split"] == part]
    results = []
    for array_dir, patient_rows in rows.groupby("array_dir", sort=True):
        images, _ = load_patient_arrays(config.prepare.out_dir, array_dir)
        results.append(evaluate_patient(model, images, patient_rows, device, threshold=config.evaluate.threshold,
                                        tta=config.evaluate.tta))
    return results


def pick_for_overlays(results: list[PatientResult], count: int) -> list[PatientResult]:
    """The best, median and worst patients by DSC (then others), so a reader sees the spread."""
    order = sorted(range(len(results)), key=lambda i: results[i].scores["dsc"])
    picks = [order[-1], order[len(order) // 2], order[0], *order[1:-1]]
    return [results[i] for i in dict.fromkeys(picks)][:count]


def write_overlays(results: list[PatientResult], manifest, config: PipelineConfig) -> list[str]:
    names = []
    with atomic_dir(config.evaluate.overlays_dir) as staging:
        for result in pick_for_overlays(results, config.evaluate.overlay_patients):
            rows = manifest[manifest["patient"] == result.patient].sort_values("index")
            images = np.stack([read_image(p) for p in rows["image_path"]])
            name = f"{result.patient}.png"
            overlay_figure(images, result.prediction, staging / name, truth=result.truth,
                           slice_numbers=list(rows["slice"]),
                           title=f"{result.patient} ({result.split}): DSC {result.scores['dsc']:.3f}")
            names.append(name)
    return names


@flow(name="evaluate", log_prints=True)
def evaluate_flow(config: PipelineConfig) -> dict:
    logger = get_run_logger()
    ev = config.evaluate
    run_id = tracking.train_record(config)["run_id"]  # the train stage's MLflow run: the scores go there too
    manifest = read_manifest(config.prepare.manifest_path)
    device = select_device(config.train.device)
    model = model_from_checkpoint(config.train.out_dir / BEST, map_location=device).to(device)
    parts = [p for p in PARTS if (manifest["split"] == p).any()]
    results = {part: evaluate_part(config, manifest, model, device, part) for part in parts}
    headline = parts[0]  # test; val when the split has no test part (the reference split)
    metrics = {"split": headline, "tta": ev.tta, **split_metrics(results[headline])}
    for part in parts[1:]:
        metrics[part] = split_metrics(results[part])
    everyone = [r for part in parts for r in results[part]]
    with atomic_dir(ev.predictions_dir) as staging:
        for r in everyone:
            nifti.write_volume(staging / f"{r.patient}_pred.nii.gz", r.prediction,
                               description="lgg-unet prediction; identity affine")
    with atomic_file(ev.out_dir / "per_patient.csv", "w") as handle:
        per_patient_table(everyone).to_csv(handle, index=False)
    with atomic_file(ev.out_dir / "eval.json", "w") as handle:
        json.dump(json_safe(metrics), handle, indent=2)
    overlays = write_overlays(results[headline], manifest, config)
    tracking.log_evaluation(run_id, metrics, [ev.out_dir / "eval.json", ev.out_dir / "per_patient.csv"],
                            ev.overlays_dir)
    logger.info("%s: per-volume DSC mean %.4f, median %.4f over %d patients (no post-processing: %.4f); "
                "global Dice %.4f, tumour-slice Dice %.4f; overlays: %s", headline, metrics["dsc_mean"],
                metrics["dsc_median"], metrics["n_volumes"], metrics["dsc_no_postprocess_mean"],
                metrics["global_dice"], metrics["tumour_slice_dice"], ", ".join(overlays))
    publish("lgg-evaluate", evaluate_report(metrics), description=f"{headline} scores at the original geometry")
    return metrics


def run(config: PipelineConfig) -> dict:
    return evaluate_flow(config)


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
