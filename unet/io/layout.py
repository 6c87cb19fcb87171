"""The layout of the arrays that stages hand to each other, and their one reader.

Each stage writes per-patient arrays under its ``out_dir``, at the patient's ``array_dir``
(``arrays/<patient>``, a column of the manifest):

    prepare     manifest.parquet (one row a slice)
                arrays/<patient>/image.npy     float16 (S, size, size, 3), z-scored
                arrays/<patient>/mask.npy      uint8   (S, size, size) 0/1
                nifti/<patient>_{image,mask}.nii.gz   the original 256x256 geometry
    weightmaps  arrays/<patient>/weight.npy    float16 (S, size, size)
    augment     arrays/<patient>/image.npy     float16 (K, S, size, size, 3)
                arrays/<patient>/mask.npy      uint8   (K, S, size, size), still 0/1
                arrays/<patient>/weight.npy    float16 (K, S, size, size)

Every stage that reads another's output reads it through this module, so a change of layout is
one change here (and every stage depending on this file reruns).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from unet.errors import missing_input

ARRAYS = "arrays"
NIFTI = "nifti"
IMAGE, MASK, WEIGHT = "image.npy", "mask.npy", "weight.npy"
COPY_FILES = (IMAGE, MASK, WEIGHT)


def array_dir(patient: str) -> str:
    """A patient's folder under a stage's ``out_dir``, as the manifest's ``array_dir`` column holds it."""
    return f"{ARRAYS}/{patient}"


def nifti_path(out_dir: Path, patient: str, kind: str) -> Path:
    """``nifti/<patient>_<kind>.nii.gz`` under the prepare stage's ``out_dir`` (kind: image, mask)."""
    return Path(out_dir) / NIFTI / f"{patient}_{kind}.nii.gz"


def _save(path: Path, array: np.ndarray) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)
    return int(array.nbytes)


def _load(path: Path, mmap: bool, stage: str) -> np.ndarray:
    if not path.is_file():
        raise missing_input(path, stage)
    return np.load(path, mmap_mode="r" if mmap else None)


# ---- prepare -------------------------------------------------------------------------------------


def write_prepared(out_dir: Path, folder: str, images: np.ndarray, masks: np.ndarray) -> int:
    base = Path(out_dir) / folder
    return _save(base / IMAGE, images.astype(np.float16)) + _save(base / MASK, masks.astype(np.uint8))


def load_patient_arrays(out_dir: Path, folder: str, *, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A prepared patient's (S, size, size, 3) float16 images and (S, size, size) masks."""
    base = Path(out_dir) / folder
    return _load(base / IMAGE, mmap, "prepare"), _load(base / MASK, mmap, "prepare")


def read_manifest(path: Path) -> pd.DataFrame:
    """The prepare stage's manifest; a clear error when that stage has not run."""
    if not Path(path).is_file():
        raise missing_input(path, "prepare", "no manifest")
    return pd.read_parquet(path)


# ---- weightmaps ----------------------------------------------------------------------------------


def write_weight_maps(out_dir: Path, folder: str, maps: np.ndarray) -> int:
    return _save(Path(out_dir) / folder / WEIGHT, maps.astype(np.float16))


def load_weight_maps(out_dir: Path, folder: str, *, mmap: bool = True) -> np.ndarray:
    """A patient's (S, size, size) float16 weight maps."""
    return _load(Path(out_dir) / folder / WEIGHT, mmap, "weightmaps")


# ---- augment -------------------------------------------------------------------------------------


def write_copies(out_dir: Path, folder: str, images: np.ndarray, masks: np.ndarray, weights: np.ndarray) -> int:
    base = Path(out_dir) / folder
    arrays = (images.astype(np.float16), masks.astype(np.uint8), weights.astype(np.float16))
    return sum(_save(base / name, array) for name, array in zip(COPY_FILES, arrays))


def load_copies(out_dir: Path, folder: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One patient's copies, memory-mapped: images (K, S, H, W, 3), masks (K, S, H, W), weights."""
    base = Path(out_dir) / folder
    return tuple(_load(base / name, True, "augment") for name in COPY_FILES)  # type: ignore[return-value]


def bytes_per_slice_copy(image_size: int) -> int:
    """Disk bytes of one deformed slice: float16 image (3 channels) + uint8 mask + float16 weight."""
    return image_size * image_size * (3 * 2 + 1 + 2)


# ---- stage summaries -----------------------------------------------------------------------------


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n")


def read_summary(path: Path, stage: str) -> dict[str, Any]:
    """A stage's JSON summary (``weightmaps.json``, ``augment.json``, ``train.json`` ...)."""
    if not Path(path).is_file():
        raise missing_input(path, stage)
    return json.loads(Path(path).read_text())

def json_safe(value: Any) -> Any:
    """NaN and inf are not JSON: write them as null (the counts say how many volumes were left out)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value
