"""NIfTI volumes that open together in ITK-SNAP or 3D Slicer.

No voxel spacing is published for the LGG set, so every file carries the identity affine (1 mm
voxels, origin 0). Voxel ``(i, j, k)`` is row ``i``, column ``j`` of slice ``k`` (slice numbers in
integer order); images are 4-D ``(H, W, S, 3)`` with pre-contrast, FLAIR, post-contrast as the
last axis, masks 3-D ``(H, W, S)`` uint8 0/1. Viewers show the volume rotated relative to the
TIFFs, but image, mask and prediction always line up with each other.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

IDENTITY = np.eye(4)


def stack_to_nifti(stack: np.ndarray) -> np.ndarray:
    """(S, H, W[, C]) slices -> (H, W, S[, C]) NIfTI voxel order."""
    return np.moveaxis(stack, 0, 2)


def nifti_to_stack(volume: np.ndarray) -> np.ndarray:
    """(H, W, S[, C]) NIfTI voxel order -> (S, H, W[, C]) slices; the inverse of stack_to_nifti."""
    return np.moveaxis(volume, 2, 0)


def write_volume(path: Path, stack: np.ndarray, *, description: str = "") -> Path:
    """Write (S, H, W[, C]) slices as a gzipped NIfTI with the identity affine."""
    image = nib.Nifti1Image(np.ascontiguousarray(stack_to_nifti(stack)), IDENTITY)
    image.header["descrip"] = (description or "lgg-unet; identity affine, no spacing published")[:79]
    image.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


def read_volume(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """(S, H, W[, C]) slices and the voxel spacing in mm (1, 1, 1 for our own files)."""
    image = nib.load(str(path))
    spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
    return nifti_to_stack(np.asanyarray(image.dataobj)), spacing  # type: ignore[return-value]
