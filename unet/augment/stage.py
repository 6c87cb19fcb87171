"""The ``augment`` stage's work: K elastic copies of every training slice, warped together.

Output under ``augment.out_dir``: the copies at each training patient's ``array_dir`` (layout in
``unet.io.layout``) and ``augment.json`` (copies, grid, sigma in pixels, bytes per copy).
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from unet.config import PipelineConfig
from unet.io.layout import bytes_per_slice_copy, load_patient_arrays, load_weight_maps, write_copies
from unet.transforms.elastic import deform_copies
from unet.units import scale_px

LGG_SLICES = 3929  # the real set, for the disk figure of a full run


def patient_seed(seed: int, patient: str) -> int:
    """A seed per patient that does not depend on which other patients are in the run."""
    return (zlib.crc32(patient.encode()) ^ seed) & 0x7FFFFFFF


def training_patients(manifest: pd.DataFrame) -> list[str]:
    """The ``array_dir`` of every training patient, sorted: the stage maps over these."""
    return sorted(manifest.loc[manifest["split"] == "train", "array_dir"].unique())


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
        "image_mode": params.image_mode,
        "train_patients": len(stats),
        "train_slices": sum(s["slices"] for s in stats),
        "bytes": sum(s["bytes"] for s in stats),
        "bytes_per_slice_copy": per_copy,
        "lgg_bytes_per_copy": per_copy * LGG_SLICES,
        "lgg_bytes_per_copy_at_256px": bytes_per_slice_copy(256) * LGG_SLICES,
    }


def describe(summary: dict[str, Any], image_size: int) -> str:
    """The stage's one line for the log."""
    return (f"elastic copies: {summary['copies']} of {summary['train_slices']} slices, "
            f"{summary['bytes'] / 1e6:.1f} MB; an LGG-size set takes "
            f"{summary['lgg_bytes_per_copy'] / 1e9:.2f} GB per copy at {image_size} px")
