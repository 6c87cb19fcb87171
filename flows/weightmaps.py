"""The ``weightmaps`` stage: the U-Net paper's weight map for every prepared slice."""

from __future__ import annotations

import json
import sys

import pandas as pd
from prefect import flow, unmapped

from flows.common import stage_main, task_runner
from tasks import precompute as precompute_tasks
from tasks.reports import publish, weightmaps_report
from unet.io.atomic import atomic_dir
from unet.config import PipelineConfig
from unet.weightmaps.stage import class_weights, scale_px
from unet.prepare.stage import read_manifest


@flow(name="weightmaps", log_prints=True)
def weightmaps_flow(config: PipelineConfig) -> dict:
    prepared, params = config.prepare, config.weightmap
    manifest = read_manifest(prepared.manifest_path)
    weights = class_weights(manifest, params.class_balance)
    sigma = scale_px(params.sigma, prepared.image_size)
    array_dirs = sorted(manifest["array_dir"].unique())
    with atomic_dir(params.out_dir) as staging:
        futures = precompute_tasks.patient_weight_maps.map(
            unmapped(prepared.out_dir), array_dirs, unmapped(staging),
            w0=unmapped(params.w0), sigma=unmapped(sigma), weights=unmapped(weights),
        )
        stats = [future.result() for future in futures]
        summary = {
            "class_balance": params.class_balance,
            "class_weights": {"background": weights[0], "foreground": weights[1]},
            "w0": params.w0,
            "sigma_px": sigma,
            "slices": sum(s["slices"] for s in stats),
            "max_weight": max(s["max"] for s in stats),
            "mean_weight": sum(s["mean"] * s["slices"] for s in stats) / sum(s["slices"] for s in stats),
            "border_pixels": sum(s["border_pixels"] for s in stats),
        }
        (staging / "weightmaps.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"weight maps: {summary['slices']} slices, class weights {weights}, sigma {sigma:.2f} px")
    publish("lgg-weightmaps", weightmaps_report(summary), description="class weights and weight-map figures")
    return summary


def run(config: PipelineConfig) -> dict:
    runner = task_runner(config.weightmap.task_runner, config.weightmap.workers)
    return weightmaps_flow.with_options(task_runner=runner)(config)


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
