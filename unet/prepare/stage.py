"""The ``prepare`` stage's work: raw Kaggle tree -> preprocessed arrays, manifest, split, NIfTI.

Output under ``prepare.out_dir``, written into a staging folder and renamed into place whole: the
manifest (one row a slice, see ``MANIFEST_COLUMNS``, plus the data.csv columns), ``summary.json``
(counts per split part), each patient's arrays and NIfTI volumes (layout in ``unet.io.layout``;
NIfTI in the original 256x256 geometry with the identity affine).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from unet.config import PipelineConfig, PrepareConfig
from unet.fanout import Each, serial
from unet.io import nifti
from unet.io.atomic import atomic_dir
from unet.io.kaggle import CHANNELS, read_image, read_mask
from unet.io.layout import array_dir, nifti_path, write_prepared, write_summary
from unet.prepare.raw import PatientFiles, scan_raw
from unet.preprocess import channels_present, preprocess_volume
from unet.split import split_patients

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = [
    "patient", "patient_id", "slice", "index", "image_path", "mask_path", "array_dir",
    "has_tumour", "tumour_area", "tumour_area_prepared", "channels_present", "is_edge", "split",
]


def read_patient(patient: PatientFiles) -> tuple[np.ndarray, np.ndarray]:
    """(S, H, W, 3) uint8 images and (S, H, W) 0/1 masks in integer slice order."""
    images = np.stack([read_image(s.image) for s in patient.slices])
    masks = np.stack([read_mask(s.mask) for s in patient.slices])
    return images, masks


def prepare_patient(patient: PatientFiles, config: PrepareConfig, out_dir: Path) -> list[dict]:
    """Preprocess one volume, write its arrays (and NIfTI), return its manifest rows."""
    images, masks = read_patient(patient)
    volume, prepared_mask, geometry = preprocess_volume(
        images, masks, size=config.image_size,
        crop_threshold=config.crop_threshold, clip_percentiles=config.clip_percentiles,
    )
    folder = array_dir(patient.folder)
    write_prepared(out_dir, folder, volume, prepared_mask)
    if config.nifti:
        nifti.write_volume(nifti_path(out_dir, patient.folder, "image"), images)
        nifti.write_volume(nifti_path(out_dir, patient.folder, "mask"), masks)
    present = ",".join(name for name, ok in zip(CHANNELS, channels_present(images)) if ok)
    last = len(patient.slices) - 1
    return [
        {
            "patient": patient.folder,
            "patient_id": patient.patient_id,
            "slice": item.number,
            "index": k,
            "image_path": str(item.image),
            "mask_path": str(item.mask),
            "array_dir": folder,
            "has_tumour": bool(masks[k].any()),
            "tumour_area": int(masks[k].sum()),
            "tumour_area_prepared": int(prepared_mask[k].sum()),
            "channels_present": present,
            "is_edge": k in (0, last),
            **geometry.as_dict(),
        }
        for k, item in enumerate(patient.slices)
    ]


def build_manifest(rows: Iterable[dict], clinical: pd.DataFrame | None, config: PrepareConfig) -> pd.DataFrame:
    """One row a slice, the patient-level split assigned, ``data.csv`` joined by patient id."""
    table = pd.DataFrame(list(rows))
    burden = table.groupby("patient")["has_tumour"].sum().astype(float).to_dict()
    table["split"] = table["patient"].map(split_patients(burden, config.split))
    if clinical is not None:
        clinical = clinical.rename(columns={"Patient": "patient_id"})
        missing = sorted(set(table["patient_id"]) - set(clinical["patient_id"].astype(str)))
        if missing:
            log.warning("data.csv has no row for %d patient(s), e.g. %s", len(missing), missing[0])
        table = table.merge(clinical, on="patient_id", how="left", suffixes=("", "_clinical"))
    return table.sort_values(["patient", "index"], kind="stable").reset_index(drop=True)


def summarise(manifest: pd.DataFrame) -> dict[str, Any]:
    """Counts a person checks first: patients, slices and tumour slices per split part."""
    parts = {}
    for part, rows in manifest.groupby("split"):
        parts[str(part)] = {
            "patients": int(rows["patient"].nunique()),
            "slices": int(len(rows)),
            "tumour_slices": int(rows["has_tumour"].sum()),
        }
    return {
        "patients": int(manifest["patient"].nunique()),
        "slices": int(len(manifest)),
        "tumour_slice_fraction": round(float(manifest["has_tumour"].mean()), 4),
        "image_size": int(manifest["size"].iloc[0]),
        "splits": parts,
    }


def prepare_dataset(raw_root: Path, config: PrepareConfig, each: Each = serial) -> pd.DataFrame:
    """Validate the raw tree (nothing written on a fault), then write the whole stage output; the
    manifest. ``each`` runs the per-patient checks and preprocessing (``in_processes``: the resize
    and percentiles hold the GIL, so threads do not help)."""
    patients, clinical = scan_raw(Path(raw_root), map_fn=each)
    with atomic_dir(config.out_dir) as staging:
        per_patient = each(functools.partial(prepare_patient, config=config, out_dir=staging), patients)
        manifest = build_manifest((row for rows in per_patient for row in rows), clinical, config)
        manifest.to_parquet(staging / config.manifest_path.name, index=False)
        write_summary(staging / config.summary_path.name, summarise(manifest))
    return manifest


def describe(summary: dict[str, Any]) -> str:
    """The stage's one line for the log."""
    parts = ", ".join(f"{part} {counts['patients']}" for part, counts in summary["splits"].items())
    return (f"prepared {summary['patients']} patients, {summary['slices']} slices at {summary['image_size']} px "
            f"({summary['tumour_slice_fraction']:.0%} with tumour); patients by split part: {parts}")


def run(config: PipelineConfig, *, each: Each = serial) -> dict[str, Any]:
    """The stage: every patient under ``data.raw_dir`` (one ``each`` item a patient) into
    ``prepare.out_dir``; returns the summary (``summary.json``)."""
    return summarise(prepare_dataset(config.data.raw_root, config.prepare, each))
