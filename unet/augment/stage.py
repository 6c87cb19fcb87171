"""The ``augment`` stage's work: K elastic copies of every training slice, warped together.

Training slices are those of every patient some model trains on: the train split's, and with
cross-validation every patient a fold trains on (``training_patients``).

Output under ``augment.out_dir``: the copies at each training patient's ``array_dir`` (layout in
``unet.io.layout``) and ``augment.json`` (copies, grid, sigma in pixels, bytes per copy).
"""

from __future__ import annotations

import functools
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from unet.augment import figures
from unet.config import PipelineConfig
from unet.fanout import Each, serial
from unet.io.atomic import atomic_dir
from unet.io.layout import (
    bytes_per_slice_copy,
    load_patient_arrays,
    load_weight_maps,
    read_manifest,
    write_copies,
    write_summary,
)
from unet.transforms.elastic import deform_copies
from unet.units import scale_px

LGG_SLICES = 3929  # the real set, for the disk figure of a full run


def patient_seed(seed: int, patient: str) -> int:
    """A seed per patient that does not depend on which other patients are in the run."""
    return (zlib.crc32(patient.encode()) ^ seed) & 0x7FFFFFFF


def training_patients(manifest: pd.DataFrame, config: PipelineConfig) -> list[str]:
    """The ``array_dir`` of every patient a model trains on, sorted: the stage maps over these.

    The train split's patients; with cross-validation (``cv.folds``) every patient, since each one
    trains the folds it is not tested in (less the main split's test patients with ``cv.holdout_test``).
    """
    if not config.cv.folds:
        rows = manifest[manifest["split"] == "train"]
    else:
        rows = manifest[manifest["split"] != "test"] if config.cv.holdout_test else manifest
    return sorted(rows["array_dir"].unique())


def augment_patient(
    prepared_dir: Path,
    weight_dir: Path,
    array_dir: str,
    out_dir: Path,
    *,
    copies: int,
    grid: int,
    sigma: float,
    seed: int,
    image_mode: str = "bicubic",
) -> dict[str, int]:
    """Write ``copies`` deformed versions of one patient's slices; returns sizes for the summary."""
    images, masks = load_patient_arrays(prepared_dir, array_dir)
    weights = load_weight_maps(weight_dir, array_dir)
    out_images, out_masks, out_weights = deform_copies(
        np.asarray(images, dtype=np.float32), np.asarray(masks), np.asarray(weights, dtype=np.float32),
        copies=copies, grid=grid, sigma=sigma, seed=patient_seed(seed, array_dir), image_mode=image_mode,
    )
    written = write_copies(out_dir, array_dir, out_images, out_masks, out_weights)
    return {"slices": int(images.shape[0]), "bytes": written}


def summarise(config: PipelineConfig, stats: list[dict[str, int]]) -> dict[str, Any]:
    """``augment.json``: what was made, and the disk an LGG-size set would take."""
    params, size = config.augment, config.prepare.image_size
    per_copy = bytes_per_slice_copy(size)
    return {
        "copies": params.copies, "grid": params.grid, "sigma_px": scale_px(params.sigma, size),
        "image_mode": params.image_mode, "image_size": size,
        "train_patients": len(stats),
        "train_slices": sum(s["slices"] for s in stats),
        "bytes": sum(s["bytes"] for s in stats),
        "bytes_per_slice_copy": per_copy,
        "lgg_bytes_per_copy": per_copy * LGG_SLICES,
        "lgg_bytes_per_copy_at_256px": bytes_per_slice_copy(256) * LGG_SLICES,
    }


def describe(summary: dict[str, Any]) -> str:
    """The stage's one line for the log."""
    return (f"elastic copies: {summary['copies']} of {summary['train_slices']} slices, "
            f"{summary['bytes'] / 1e6:.1f} MB; an LGG-size set takes "
            f"{summary['lgg_bytes_per_copy'] / 1e9:.2f} GB per copy at {summary['image_size']} px")


def run(config: PipelineConfig, *, each: Each = serial) -> dict[str, Any]:
    """The stage: every training patient's copies (one ``each`` item a patient) into a staging folder
    renamed into place whole, ``augment.json`` and the preview picture; returns the summary."""
    params = config.augment
    manifest = read_manifest(config.prepare.manifest_path)
    with atomic_dir(params.out_dir) as staging:
        work = functools.partial(augment_patient, config.prepare.out_dir, config.weightmaps.out_dir, out_dir=staging,
                                 copies=params.copies, grid=params.grid,
                                 sigma=scale_px(params.sigma, config.prepare.image_size), seed=params.seed,
                                 image_mode=params.image_mode)
        summary = summarise(config, each(work, training_patients(manifest, config)))
        write_summary(staging / params.summary_path.name, summary)
        figures.preview(manifest, config, staging)  # with no copies too: dvc.yaml declares it
    return summary

