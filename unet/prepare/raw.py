"""Reading and validating a raw tree in the Kaggle ``kaggle_3m`` layout.

``scan_raw`` walks the tree, pairs every ``<patient>_<n>.tif`` with its ``<patient>_<n>_mask.tif``
and reads every file once, collecting *all* faults (each naming its file) before raising one
``RawDataError``: a user fixes the whole list in one go instead of one fault per run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from unet.io.kaggle import DATA_CSV, RawDataError, parse_slice_name, patient_id, read_image, read_mask

log = logging.getLogger(__name__)

MAX_LISTED_FAULTS = 50


@dataclass(frozen=True)
class SliceFiles:
    number: int
    image: Path
    mask: Path


@dataclass
class PatientFiles:
    folder: str
    slices: list[SliceFiles] = field(default_factory=list)

    @property
    def patient_id(self) -> str:
        """``TCGA_CS_4941_19960909`` -> ``TCGA_CS_4941``, the key of ``data.csv``."""
        return patient_id(self.folder)


def list_patients(root: Path) -> tuple[list[PatientFiles], list[str]]:
    """Pair images with masks per patient folder; returns the patients and the pairing faults."""
    faults: list[str] = []
    patients: list[PatientFiles] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        images: dict[int, Path] = {}
        masks: dict[int, Path] = {}
        for path in sorted(folder.iterdir()):
            parsed = parse_slice_name(path.name)
            if parsed is None:
                if path.suffix.lower() in (".tif", ".tiff"):
                    faults.append(f"{path}: name is not <patient>_<n>.tif or <patient>_<n>_mask.tif")
                continue
            _, n, is_mask = parsed
            (masks if is_mask else images)[n] = path
        for n in sorted(images.keys() - masks.keys()):
            faults.append(f"{images[n]}: image without mask (expected {images[n].stem}_mask.tif)")
        for n in sorted(masks.keys() - images.keys()):
            faults.append(f"{masks[n]}: mask without image (expected {masks[n].name.replace('_mask', '')})")
        pairs = [SliceFiles(n, images[n], masks[n]) for n in sorted(images.keys() & masks.keys())]
        if pairs:
            patients.append(PatientFiles(folder.name, pairs))
    return patients, faults


def check_patient(patient: PatientFiles) -> list[str]:
    """Read every slice of one patient; return its faults (empty when all is well)."""
    faults: list[str] = []
    shape: tuple[int, int] | None = None
    for item in patient.slices:
        try:
            image = read_image(item.image)
            mask = read_mask(item.mask)
        except RawDataError as exc:
            faults.append(str(exc))
            continue
        if image.shape[:2] != mask.shape:
            faults.append(
                f"{item.mask}: mask is {mask.shape[0]}x{mask.shape[1]} but its image is "
                f"{image.shape[0]}x{image.shape[1]}; image and mask must have the same size"
            )
        elif shape is not None and image.shape[:2] != shape:
            faults.append(
                f"{item.image}: slice is {image.shape[0]}x{image.shape[1]} but earlier slices of "
                f"{patient.folder} are {shape[0]}x{shape[1]}; a volume needs one slice size"
            )
        shape = shape or image.shape[:2]
    return faults


def read_clinical(root: Path) -> pd.DataFrame | None:
    """``data.csv`` keyed by ``Patient``; None (with a warning) when the tree has none."""
    path = root / DATA_CSV
    if not path.exists():
        log.warning("%s not found: the manifest will carry no clinical columns", path)
        return None
    try:
        table = pd.read_csv(path)
    except Exception as exc:  # pandas raises ParserError, UnicodeDecodeError, EmptyDataError ...
        raise RawDataError(f"{path}: data.csv does not parse ({type(exc).__name__}: {exc})") from None
    if "Patient" not in table.columns:
        raise RawDataError(
            f"{path}: data.csv has no 'Patient' column (columns: {', '.join(map(str, table.columns))}); "
            "it must be keyed by patient, e.g. TCGA_CS_4941"
        )
    if table["Patient"].duplicated().any():
        dupes = sorted(table.loc[table["Patient"].duplicated(), "Patient"].astype(str).unique())
        raise RawDataError(f"{path}: data.csv lists patients more than once: {', '.join(dupes[:5])}")
    return table


def scan_raw(root: Path, check=check_patient, map_fn=map) -> tuple[list[PatientFiles], pd.DataFrame | None]:
    """Validate the whole tree before anything is written; raise one RawDataError listing all faults.

    ``map_fn`` lets a caller check patients in parallel (a thread pool's ``map``, Prefect mapping).
    """
    if not root.is_dir():
        raise RawDataError(f"{root}: raw data folder not found; run the download stage first")
    patients, faults = list_patients(root)
    for patient_faults in map_fn(check, patients):
        faults.extend(patient_faults)
    clinical = None
    try:
        clinical = read_clinical(root)
    except RawDataError as exc:
        faults.append(str(exc))
    if not patients and not faults:
        faults.append(f"{root}: empty set, no <patient>/<patient>_<n>.tif slices with masks found")
    if faults:
        shown = faults[:MAX_LISTED_FAULTS]
        more = f"\n  ... and {len(faults) - len(shown)} more" if len(faults) > len(shown) else ""
        raise RawDataError(
            f"{root}: {len(faults)} fault(s) in the raw data, nothing was written:\n  "
            + "\n  ".join(shown)
            + more
        )
    return patients, clinical
