"""Tasks of the ``augment`` stage: one a training patient, mapped on the stage's task runner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import unmapped

from tasks.common import stage_task
from tasks.reports import augment_report, figure, publish
from unet.augment import preview, stage
from unet.config import PipelineConfig
from unet.io.atomic import atomic_dir
from unet.io.layout import read_manifest, write_summary
from unet.units import scale_px


@stage_task(name="patient-elastic-copies", task_run_name="elastic-{array_dir}")
def augment_patient(prepared_dir: Path, weight_dir: Path, array_dir: str, out_dir: Path, copies: int,
                    grid: int, sigma: float, seed: int, image_mode: str) -> dict[str, int]:
    return stage.augment_patient(prepared_dir, weight_dir, array_dir, out_dir, copies=copies, grid=grid,
                                 sigma=sigma, seed=seed, image_mode=image_mode)


def all_patients(config: PipelineConfig) -> dict[str, Any]:
    """Every training patient's copies into a staging folder (renamed into place whole), the summary
    and the preview picture."""
    params = config.augment
    manifest = read_manifest(config.prepare.manifest_path)
    with atomic_dir(params.out_dir) as staging:
        futures = augment_patient.map(
            unmapped(config.prepare.out_dir), unmapped(config.weightmap.out_dir), stage.training_patients(manifest),
            unmapped(staging), copies=unmapped(params.copies), grid=unmapped(params.grid),
            sigma=unmapped(scale_px(params.sigma, config.prepare.image_size)), seed=unmapped(params.seed),
            image_mode=unmapped(params.image_mode),
        )
        summary = stage.summarise(config, [future.result() for future in futures])
        write_summary(staging / params.summary_path.name, summary)
        if params.copies:
            preview.preview(manifest, config, staging)
    return summary


def publish_report(summary: dict[str, Any], image_size: int, preview: Path | None) -> None:
    """The copies' table, and the preview picture when the stage made copies."""
    report = augment_report(summary, image_size)
    if preview is not None:
        report += figure(preview, "Slices, their elastic copies and the warped masks")
    publish("lgg-augment", report, description="elastic copies and the disk they take")
