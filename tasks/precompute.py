"""Tasks of the ``weightmaps`` and ``augment`` stages, mapped over patients."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from unet.augment import stage as augment
from unet.weightmaps import stage as precompute


@task(name="patient-weight-maps", cache_policy=NO_CACHE, persist_result=False,
      task_run_name="weight-maps-{array_dir}")
def patient_weight_maps(prepared_dir: Path, array_dir: str, out_dir: Path, w0: float, sigma: float,
                        weights: tuple[float, float]) -> dict[str, float]:
    return precompute.patient_weight_maps(prepared_dir, array_dir, out_dir, w0=w0, sigma=sigma, weights=weights)


@task(name="patient-elastic-copies", cache_policy=NO_CACHE, persist_result=False,
      task_run_name="elastic-{array_dir}")
def augment_patient(prepared_dir: Path, weight_dir: Path, array_dir: str, out_dir: Path, copies: int,
                    grid: int, sigma: float, seed: int, image_mode: str) -> dict[str, int]:
    return augment.augment_patient(prepared_dir, weight_dir, array_dir, out_dir, copies=copies, grid=grid,
                                   sigma=sigma, seed=seed, image_mode=image_mode)
