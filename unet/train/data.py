"""Training and validation data: prepared slices, their weight maps and their elastic copies.

``load_split`` gathers one split part into contiguous arrays (read from the memory-mapped stage
outputs), ``sampling_weights`` reproduces the reference's slice sampling, ``SliceDataset`` serves
the CPU path through a DataLoader and ``to_device`` holds a whole split on the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from unet.errors import InputError
from unet.io.layout import load_copies, load_patient_arrays, load_weight_maps


@dataclass(frozen=True)
class StageDirs:
    """Where the upstream stages wrote their arrays."""

    prepared: Path
    weightmaps: Path | None = None
    augmented: Path | None = None


@dataclass
class SliceArrays:
    """One split part as arrays: images (N, 3, H, W) float16, masks (N, 1, H, W) uint8, weights float16.

    ``patient`` and ``slice_index`` say where each row came from (elastic copies repeat them),
    ``copy`` is 0 for the prepared slice and k for the k-th elastic copy.
    """

    images: np.ndarray
    masks: np.ndarray
    weights: np.ndarray
    patient: np.ndarray
    slice_index: np.ndarray
    copy: np.ndarray

    def __len__(self) -> int:
        return len(self.images)


def _patient_arrays(dirs: StageDirs, array_dir: str, keep: np.ndarray, copies: bool):
    images, masks = load_patient_arrays(dirs.prepared, array_dir)
    weights = (load_weight_maps(dirs.weightmaps, array_dir) if dirs.weightmaps
               else np.ones(masks.shape, np.float16))
    parts = [(np.asarray(images[keep]), np.asarray(masks[keep]), np.asarray(weights[keep]), 0)]
    if copies and dirs.augmented is not None:
        warped = load_copies(dirs.augmented, array_dir)
        for k in range(warped[0].shape[0]):
            parts.append((np.asarray(warped[0][k][keep]), np.asarray(warped[1][k][keep]),
                          np.asarray(warped[2][k][keep]), k + 1))
    return parts


def load_split(
    manifest: pd.DataFrame, part: str, dirs: StageDirs, *, copies: bool = False, skip_edge: bool = False
) -> SliceArrays:
    """All slices of one split part (and, for training, their elastic copies) in memory."""
    rows = manifest[manifest["split"] == part]
    if rows.empty:
        raise InputError(f"the {part!r} split part is empty; check prepare.split in params.yaml")
    chunks: dict[str, list[np.ndarray]] = {k: [] for k in ("img", "msk", "wgt", "pat", "idx", "cpy")}
    for array_dir, patient_rows in rows.groupby("array_dir", sort=True):
        keep = patient_rows["index"].to_numpy()
        if skip_edge:
            keep = keep[~patient_rows["is_edge"].to_numpy()]
        for image, mask, weight, k in _patient_arrays(dirs, array_dir, keep, copies):
            chunks["img"].append(image.transpose(0, 3, 1, 2))  # (S, H, W, 3) -> (S, 3, H, W)
            chunks["msk"].append(mask[:, None])
            chunks["wgt"].append(weight[:, None].astype(np.float16))
            chunks["pat"].append(np.full(len(keep), patient_rows["patient"].iloc[0], dtype=object))
            chunks["idx"].append(keep)
            chunks["cpy"].append(np.full(len(keep), k))
    stacked = {k: np.concatenate(v) for k, v in chunks.items()}
    return SliceArrays(
        np.ascontiguousarray(stacked["img"], dtype=np.float16), stacked["msk"].astype(np.uint8),
        stacked["wgt"], stacked["pat"], stacked["idx"].astype(np.int64), stacked["cpy"].astype(np.int64),
    )


def sampling_weights(arrays: SliceArrays, tumour_share: float = 10 / 11) -> np.ndarray:
    """The reference's sampling: within a patient, a slice is drawn in proportion to its tumour
    area (``tumour_share``) plus uniformly (the rest); patients in proportion to their slices.

    Returns one probability per row of ``arrays`` (they sum to 1).
    """
    area = arrays.masks.reshape(len(arrays), -1).sum(axis=1).astype(np.float64)
    probability = np.empty(len(arrays))
    for patient in np.unique(arrays.patient):
        rows = arrays.patient == patient
        total, count = area[rows].sum(), rows.sum()
        within = (np.full(count, 1.0 / count) if total == 0
                  else tumour_share * area[rows] / total + (1 - tumour_share) / count)
        probability[rows] = within * count / len(arrays)
    return probability / probability.sum()


class SliceDataset(Dataset):
    """(image, mask, weight) float tensors per row; the CPU path reads it through a DataLoader."""

    def __init__(self, arrays: SliceArrays) -> None:
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = self.arrays
        return (torch.from_numpy(a.images[i].astype(np.float32)),
                torch.from_numpy(a.masks[i].astype(np.float32)),
                torch.from_numpy(a.weights[i].astype(np.float32)))


def to_device(arrays: SliceArrays, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A whole split part on ``device``: images float16 (or bfloat16 math later), masks, weights."""
    return (torch.from_numpy(arrays.images).to(device),
            torch.from_numpy(arrays.masks).to(device),
            torch.from_numpy(arrays.weights).to(device))


def volumes(arrays: SliceArrays) -> list[tuple[str, np.ndarray]]:
    """(patient, row indices in slice order) per patient, for per-volume scores (prepared slices only)."""
    out = []
    for patient in sorted(np.unique(arrays.patient[arrays.copy == 0])):
        rows = np.flatnonzero((arrays.patient == patient) & (arrays.copy == 0))
        out.append((str(patient), rows[np.argsort(arrays.slice_index[rows])]))
    return out
