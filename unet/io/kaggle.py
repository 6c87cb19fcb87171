"""The Kaggle ``kaggle_3m`` layout: file names, channels, and the one TIFF reader.

``<patient>/<patient>_<n>.tif`` is an RGB uint8 slice (pre-contrast, FLAIR, post-contrast; where
a sequence was missing, FLAIR fills its channel), ``<patient>_<n>_mask.tif`` its 0/255 mask;
slices are ordered by ``<n>`` as an integer. ``data.csv`` is keyed by ``Patient`` (the folder
name without its date). Raw validation, evaluation and ``lgg-predict`` all read through here.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import tifffile

from unet.errors import InputError

CHANNELS = ("pre", "flair", "post")
FLAIR = CHANNELS.index("flair")
DATA_CSV = "data.csv"
_SLICE_NAME = re.compile(r"^(?P<patient>.+)_(?P<n>\d+)(?P<mask>_mask)?\.tiff?$", re.IGNORECASE)


class RawDataError(InputError):
    """The raw data cannot be used; the message names the file (or lists every fault with its file)."""


def parse_slice_name(name: str) -> tuple[str, int, bool] | None:
    """``TCGA_CS_4941_19960909_12_mask.tif`` -> (folder, 12, True); None when not a slice's name."""
    match = _SLICE_NAME.match(name)
    return (match["patient"], int(match["n"]), bool(match["mask"])) if match else None


def read_tiff(path: Path) -> np.ndarray:
    """A TIFF's pixels; RawDataError naming the file when it is unreadable or truncated."""
    try:
        return tifffile.imread(path)
    except Exception as exc:  # tifffile raises many types for truncated or foreign files
        raise RawDataError(f"{path}: unreadable or truncated TIFF ({type(exc).__name__}: {exc})") from None


def patient_id(folder: str) -> str:
    parts = folder.split("_")
    return "_".join(parts[:3]) if len(parts) >= 4 else folder


def read_image(path: Path) -> np.ndarray:
    """An RGB uint8 slice (H, W, 3); raises RawDataError naming the file when it is not one."""
    array = read_tiff(path)
    if array.ndim != 3 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise RawDataError(
            f"{path}: expected an RGB uint8 image (H, W, 3), got {array.dtype} {array.shape}; "
            "images hold pre-contrast, FLAIR and post-contrast as the three channels"
        )
    return array


def read_mask(path: Path) -> np.ndarray:
    """A binary mask as uint8 0/1 (H, W); 0/255 and 0/1 files are accepted."""
    array = read_tiff(path)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        array = array[..., 0]  # some tools save a grey mask as RGB(A); the channels are equal
    if array.ndim != 2:
        raise RawDataError(f"{path}: expected a single-channel mask (H, W), got shape {array.shape}")
    values = np.unique(array)
    if not (set(values.tolist()) <= {0, 255} or set(values.tolist()) <= {0, 1}):
        shown = ", ".join(str(v) for v in values[:8])
        raise RawDataError(
            f"{path}: mask is not binary (values {shown}{'...' if len(values) > 8 else ''}); "
            "masks must hold only 0 and 255 (or 0 and 1)"
        )
    return (array > 0).astype(np.uint8)
