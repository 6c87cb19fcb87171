"""The ``augment`` stage's work: K elastic copies of every training slice, warped together.

Output under ``augment.out_dir``:

    arrays/<patient>/image.npy    float16 (K, S, size, size, 3)
    arrays/<patient>/mask.npy     uint8   (K, S, size, size), still 0/1
    arrays/<patient>/weight.npy   float16 (K, S, size, size)
    augment.json                  copies, grid, sigma in pixels, bytes per copy
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from unet.transforms.elastic import deform_copies
from unet.weightmaps.stage import load_weight_maps
from unet.prepare.stage import load_patient_arrays


def patient_seed(seed: int, patient: str) -> int:
    """A seed per patient that does not depend on which other patients are in the run."""
    return (zlib.crc32(patient.encode()) ^ seed) & 0x7FFFFFFF


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
    target = Path(out_dir) / array_dir
    target.mkdir(parents=True, exist_ok=True)
    arrays = dict(zip(COPY_FILES, (out_images.astype(np.float16), out_masks.astype(np.uint8),
                                   out_weights.astype(np.float16))))
    for name, array in arrays.items():
        np.save(target / f"{name}.npy", array)
    return {"slices": int(images.shape[0]), "bytes": int(sum(a.nbytes for a in arrays.values()))}


COPY_FILES = ("image", "mask", "weight")


def load_copies(out_dir: Path, array_dir: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One patient's copies, memory-mapped: images (K, S, H, W, 3), masks (K, S, H, W), weights."""
    base = Path(out_dir) / array_dir
    return tuple(np.load(base / f"{name}.npy", mmap_mode="r") for name in COPY_FILES)  # type: ignore[return-value]


def bytes_per_slice_copy(image_size: int) -> int:
    """Disk bytes of one deformed slice: float16 image (3 channels) + uint8 mask + float16 weight."""
    return image_size * image_size * (3 * 2 + 1 + 2)
