"""The ``synthetic`` data source: a generated set in exactly the Kaggle ``kaggle_3m`` layout.

``write_synthetic_dataset(dest)`` writes, for the first ``n_patients`` real LGG folder names,
``<folder>/<folder>_<n>.tif`` (RGB uint8: pre-contrast, FLAIR, post-contrast) and
``<folder>/<folder>_<n>_mask.tif`` (one channel, 0/255) for n = 1..slices, and a ``data.csv`` with
the real file's 18 columns. The images come from ``unet.synthetic.anatomy`` (``anatomy="mni152"``:
patients on the MNI152 brain shipped with nilearn) or ``unet.synthetic.phantom`` (``"phantom"``:
ellipses, the fastest). Each patient draws from its own stream of ``seed``, so the first k
patients are the same whatever ``n_patients`` is, and the same arguments give byte-identical files.

A planted association for the radiogenomics study: on the anatomical set, ``RNASeqCluster`` sets
how irregular a patient's lesion margin is (``PLANTED``); no other column touches the images.
"""

from __future__ import annotations

import csv
import io
import logging
import numbers
from concurrent.futures import Future, ThreadPoolExecutor
from importlib.resources import files
from pathlib import Path

import numpy as np
import tifffile

from unet.errors import InputError
from unet.io.atomic import atomic_dir
from unet.synthetic import anatomy, phantom
from unet.synthetic.phantom import PhantomSpec, draw_spec, slice_count

log = logging.getLogger(__name__)

N_LGG_PATIENTS = 110
MAX_IMAGE_SIZE = 2048
MAX_SLICES = 1000
# data.csv: column -> (lowest code, highest code, share missing); None is the patient key.
# The real file codes every clinical field as a small integer; age is in years.
CLINICAL_COLUMNS: dict[str, tuple[int, int, float] | None] = {
    "Patient": None,
    "RNASeqCluster": (1, 4, 0.15),
    "MethylationCluster": (1, 5, 0.02),
    "miRNACluster": (1, 4, 0.0),
    "CNCluster": (1, 3, 0.02),
    "RPPACluster": (1, 4, 0.3),
    "OncosignCluster": (1, 3, 0.06),
    "COCCluster": (1, 3, 0.0),
    "histological_type": (1, 3, 0.01),
    "neoplasm_histologic_grade": (1, 2, 0.01),
    "tumor_tissue_site": (1, 1, 0.01),
    "laterality": (1, 3, 0.02),
    "tumor_location": (1, 6, 0.02),
    "gender": (1, 2, 0.01),
    "age_at_initial_pathologic": (20, 75, 0.01),
    "race": (1, 3, 0.03),
    "ethnicity": (1, 2, 0.08),
    "death01": (0, 1, 0.01),
}
INTEGER_COLUMNS = ("miRNACluster", "COCCluster")  # never missing, so written without ".0"
ANATOMIES = ("mni152", "phantom")
# the planted association: cluster -> margin irregularity (0 smooth .. 1 very irregular), +- jitter
PLANTED = ("RNASeqCluster", {1: 0.1, 2: 0.35, 3: 0.6, 4: 0.85}, 0.08)


def _check_int(name: str, value: object, lo: int, hi: int | None, meaning: str) -> int:
    """``value`` as an int in lo..hi (no upper bound when ``hi`` is None), else ValueError."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise InputError(f"{name} must be an integer ({meaning}), got {value!r}")
    if int(value) < lo or (hi is not None and int(value) > hi):
        allowed = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise InputError(f"{name} is {value}: it must be {allowed} ({meaning})")
    return int(value)


def lgg_patient_names(n_patients: int = N_LGG_PATIENTS) -> list[str]:
    """The first ``n_patients`` real LGG folder names, e.g. ``TCGA_CS_4941_19960909``."""
    n = _check_int("n_patients", n_patients, 1, N_LGG_PATIENTS, "the LGG set has 110 patients")
    text = files("unet").joinpath("resources/lgg_patients.txt").read_text(encoding="utf-8")
    names = text.split()
    if len(names) != N_LGG_PATIENTS:
        raise InputError(f"unet/resources/lgg_patients.txt lists {len(names)} names, expected 110: "
                         "reinstall the package")
    return names[:n]


def patient_key(folder: str) -> str:
    """``TCGA_CS_4941_19960909`` -> ``TCGA_CS_4941``, the ``Patient`` key of data.csv."""
    return folder.rsplit("_", 1)[0]


def _patient_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    """Patient ``index``'s own stream: 0 for the images, 1 for data.csv."""
    return np.random.default_rng(np.random.SeedSequence([seed, index, stream]))


def patient_spec(seed: int, index: int, min_slices: int, max_slices: int) -> PhantomSpec:
    """The phantom drawn for the ``index``-th patient (0-based) of a set written with ``seed``."""
    rng = _patient_rng(seed, index, 0)
    return draw_spec(rng, slice_count(rng, min_slices, max_slices))


def margin_irregularity(row: dict[str, str], seed: int, index: int) -> float:
    """The lesion margin's irregularity the planted cluster sets (random for a missing value)."""
    column, levels, jitter = PLANTED
    rng = _patient_rng(seed, index, 2)
    if not row[column]:
        return float(rng.uniform(0.05, 0.9))
    return float(np.clip(levels[int(float(row[column]))] + rng.uniform(-jitter, jitter), 0.0, 1.0))


def render(anatomy_kind: str, seed: int, index: int, row: dict[str, str], min_slices: int, max_slices: int,
           image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """One patient's (images, masks) from the chosen generator."""
    if anatomy_kind == "phantom":
        return phantom.render_volume(patient_spec(seed, index, min_slices, max_slices), image_size)
    spec = anatomy.patient_spec(seed, index, min_slices, max_slices)
    return anatomy.render_patient(spec, image_size, margin_irregularity=margin_irregularity(row, seed, index))


def clinical_rows(folders: list[str], seed: int) -> list[dict[str, str]]:
    """One data.csv row per patient, values as the real file writes them ('' is missing)."""
    rows = []
    for index, folder in enumerate(folders):
        rng = _patient_rng(seed, index, 1)
        row = {"Patient": patient_key(folder)}
        for column, spec in CLINICAL_COLUMNS.items():
            if spec is None:
                continue
            lo, hi, missing = spec
            value = int(rng.integers(lo, hi + 1))
            if rng.random() < missing:
                row[column] = ""
            else:
                row[column] = str(value) if column in INTEGER_COLUMNS else f"{value:.1f}"
        rows.append(row)
    return rows


def _write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CLINICAL_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8")  # inside the staging folder: atomic


def _write_patient(folder: Path, images: np.ndarray, masks: np.ndarray) -> None:
    """``<folder>/<folder>_<n>.tif`` and ``..._<n>_mask.tif`` for n = 1..Z, uncompressed."""
    folder.mkdir()
    for n, (image, mask) in enumerate(zip(images, masks), start=1):
        base = folder / f"{folder.name}_{n}"
        tifffile.imwrite(f"{base}.tif", image, photometric="rgb", metadata=None)
        tifffile.imwrite(f"{base}_mask.tif", mask, photometric="minisblack", metadata=None)


def _check_dest(dest: Path, overwrite: bool) -> None:
    if dest.is_symlink() or dest.is_file():
        if not overwrite:
            raise InputError(f"{dest} exists and is not a folder: remove it or pass overwrite=True")
    elif dest.is_dir() and any(dest.iterdir()) and not overwrite:
        raise InputError(f"{dest} is not empty: remove it or pass overwrite=True to replace it")


def write_synthetic_dataset(
    dest: Path,
    *,
    n_patients: int = N_LGG_PATIENTS,
    min_slices: int = 20,
    max_slices: int = 88,
    image_size: int = 256,
    seed: int = 0,
    anatomy: str = "phantom",
    overwrite: bool = False,
) -> Path:
    """Write a synthetic set in the Kaggle layout INTO ``dest`` (the ``kaggle_3m`` folder); return it.

    The set is generated in a folder beside ``dest`` and renamed into place at the end, so ``dest``
    holds a whole set or is left as it was. A non-empty ``dest`` is replaced only with ``overwrite``.
    """
    dest = Path(dest)
    names = lgg_patient_names(n_patients)
    min_slices = _check_int("min_slices", min_slices, 1, MAX_SLICES, "slices a patient, at least 1")
    max_slices = _check_int("max_slices", max_slices, min_slices, MAX_SLICES,
                            f"slices a patient, at least min_slices={min_slices}")
    image_size = _check_int("image_size", image_size, 16, MAX_IMAGE_SIZE, "pixels a side")
    seed = _check_int("seed", seed, 0, None, "a random seed")
    if not isinstance(overwrite, bool):
        raise InputError(f"overwrite must be True or False, got {overwrite!r}")
    if anatomy not in ANATOMIES:
        raise InputError(f"anatomy {anatomy!r}: use one of {', '.join(ANATOMIES)}")
    _check_dest(dest, overwrite)
    rows = clinical_rows(names, seed)

    total = tumour_slices = 0
    # One writer thread: TIFF writing (system calls, GIL released) overlaps rendering the next
    # patient; waiting on the previous write keeps at most two volumes in memory.
    with atomic_dir(dest) as staging, ThreadPoolExecutor(max_workers=1) as writer:
        pending: Future | None = None
        for index, (folder, row) in enumerate(zip(names, rows)):
            images, masks = render(anatomy, seed, index, row, min_slices, max_slices, image_size)
            if pending is not None:
                pending.result()
            pending = writer.submit(_write_patient, staging / folder, images, masks)
            total += len(images)
            tumour_slices += int(masks.any(axis=(1, 2)).sum())
        _write_csv(staging / "data.csv", rows)
        if pending is not None:
            pending.result()
    log.info("synthetic set (%s): %d patients, %d slices (%.0f%% with tumour), %d px, in %s", anatomy,
             len(names), total, 100 * tumour_slices / total, image_size, dest)
    return dest
