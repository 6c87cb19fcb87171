"""The ``weightmaps`` stage's work: one U-Net weight map per prepared slice.

Output under ``weightmap.out_dir``, mirroring the prepared arrays:

    arrays/<patient>/weight.npy   float16 (S, size, size)
    weightmaps.json               class weights used, w0 and sigma in pixels, statistics

Lengths in params (``weightmap.sigma``, ``augment.sigma``) are pixels of a 256 px slice, the
size of the Kaggle TIFFs and of the reference network's input; ``scale_px`` converts them to the
prepared ``image_size`` so that switching sizes keeps the same anatomy-relative meaning.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from unet.prepare.stage import load_patient_arrays
from unet.weightmaps.weightmap import class_weights_from_counts, weight_maps

REFERENCE_SIZE = 256
WEIGHT_FILE = "weight.npy"


def scale_px(pixels_at_256: float, image_size: int) -> float:
    """A length given for a 256 px slice, in pixels of an ``image_size`` slice."""
    return pixels_at_256 * image_size / REFERENCE_SIZE


def training_pixel_counts(manifest: pd.DataFrame) -> tuple[int, int]:
    """(foreground, total) pixels of the prepared masks of the training split."""
    train = manifest[manifest["split"] == "train"]
    size = int(train["size"].iloc[0])
    foreground = int(train["tumour_area_prepared"].sum())
    return foreground, len(train) * size * size


def class_weights(manifest: pd.DataFrame, method: str) -> tuple[float, float]:
    """(background, foreground) weights from the training split's pixel frequencies."""
    foreground, total = training_pixel_counts(manifest)
    return class_weights_from_counts(foreground, total, method=method)


def patient_weight_maps(
    prepared_dir: Path,
    array_dir: str,
    out_dir: Path,
    *,
    w0: float,
    sigma: float,
    weights: tuple[float, float],
) -> dict[str, float]:
    """Compute and write one patient's maps; returns its statistics for the stage summary."""
    _, masks = load_patient_arrays(prepared_dir, array_dir)
    maps = weight_maps(np.asarray(masks), w0=w0, sigma=sigma, class_weights=weights, name=array_dir)
    target = Path(out_dir) / array_dir / WEIGHT_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    np.save(target, maps.astype(np.float16))
    border = maps > max(weights) + 1e-3  # pixels where the separation term adds weight
    return {"slices": len(maps), "max": float(maps.max()), "mean": float(maps.mean()),
            "border_pixels": int(border.sum())}


def load_weight_maps(out_dir: Path, array_dir: str, *, mmap: bool = True) -> np.ndarray:
    return np.load(Path(out_dir) / array_dir / WEIGHT_FILE, mmap_mode="r" if mmap else None)
