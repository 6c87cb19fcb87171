"""What every scan reader returns: ``Scan``, one patient's (S, H, W, 3) uint8 slices with their
geometry and sources, and the conversion of other intensities to uint8. ``unet.predict.scan`` (TIFF,
PNG, NIfTI) and ``unet.predict.dicom`` both build on it; neither imports the other's internals."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from unet.errors import InputError
from unet.io.nifti import IDENTITY


@dataclass
class Scan:
    """One patient's slices and where they came from."""

    images: np.ndarray  # (S, H, W, 3) uint8
    kind: str  # kaggle-folder | nifti | nifti-channels | slice | dicom
    sources: list[Path]
    slice_numbers: list[int]  # as the files number them (Kaggle <n>), else 1..S
    affine: np.ndarray = field(default_factory=lambda: IDENTITY.copy())
    header: nib.Nifti1Header | None = None  # the NIfTI input's header, kept for the mask
    scaled: bool = False  # intensities were not uint8 and were scaled to 0..255

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along (row, column, slice), NIfTI order; 1 mm when none is known."""
        if self.header is None:
            return (1.0, 1.0, 1.0)
        return tuple(float(z) for z in self.header.get_zooms()[:3])  # type: ignore[return-value]

    @property
    def has_geometry(self) -> bool:
        """Whether the input carries real geometry, not the identity default (so mL mean something)."""
        return self.header is not None and not (
            np.allclose(self.affine, IDENTITY) and np.allclose(self.spacing, 1.0))


def as_uint8(stack: np.ndarray, path: Path) -> tuple[np.ndarray, bool]:
    """``stack`` as uint8, and whether it had to be scaled (each channel from its minimum to maximum)."""
    if stack.dtype == np.uint8:
        return np.ascontiguousarray(stack), False
    if not np.isfinite(stack).all():
        raise InputError(f"{path}: {int((~np.isfinite(stack)).sum())} voxels are NaN or infinite; "
                         "replace them (e.g. with 0) first")
    return scale_to_uint8(stack), True


def scale_to_uint8(stack: np.ndarray) -> np.ndarray:
    """(S, H, W, C) of any real type -> uint8, each channel from its volume minimum (0) to maximum (255)."""
    values = stack.astype(np.float64)
    low = values.min(axis=(0, 1, 2), keepdims=True)
    span = values.max(axis=(0, 1, 2), keepdims=True) - low
    scaled = (values - low) / np.where(span > 0, span, 1.0) * 255.0
    return np.rint(scaled).astype(np.uint8)
