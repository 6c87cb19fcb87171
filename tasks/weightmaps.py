"""Tasks of the ``weightmaps`` stage: one a patient, mapped on the stage's task runner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import unmapped

from tasks.common import stage_task
from tasks.reports import figure, publish, weightmaps_report
from unet.config import PipelineConfig
from unet.io.atomic import atomic_dir
from unet.io.layout import read_manifest, write_summary
from unet.units import scale_px
from unet.weightmaps import stage
from unet.weightmaps.figure import weightmap_figure


@stage_task(name="patient-weight-maps", task_run_name="weight-maps-{array_dir}")
def patient_weight_maps(prepared_dir: Path, array_dir: str, out_dir: Path, w0: float, sigma: float,
                        weights: tuple[float, float]) -> dict[str, float]:
    return stage.patient_weight_maps(prepared_dir, array_dir, out_dir, w0=w0, sigma=sigma, weights=weights)


def all_patients(config: PipelineConfig) -> dict[str, Any]:
    """Every patient's maps into a staging folder (renamed into place whole), then ``weightmaps.json``."""
    params = config.weightmap
    manifest = read_manifest(config.prepare.manifest_path)
    weights = stage.class_weights(manifest, params.class_balance)
    with atomic_dir(params.out_dir) as staging:
        futures = patient_weight_maps.map(
            unmapped(config.prepare.out_dir), sorted(manifest["array_dir"].unique()), unmapped(staging),
            w0=unmapped(params.w0), sigma=unmapped(scale_px(params.sigma, config.prepare.image_size)),
            weights=unmapped(weights),
        )
        summary = stage.summarise(config, weights, [future.result() for future in futures])
        write_summary(staging / params.summary_path.name, summary)
    weightmap_figure(manifest, params.figure, w0=params.w0, sigma_256=params.sigma, weights=weights)
    return summary


def publish_report(summary: dict[str, Any], picture: Path) -> None:
    report = weightmaps_report(summary) + figure(picture, "The border term between touching tumour parts, at 256 px")
    publish("lgg-weightmaps", report, description="class weights and weight-map figures")
