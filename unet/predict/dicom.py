"""A folder of DICOM files as one ``Scan``: FLAIR, pre- and post-contrast series picked, stacked, on one grid.

``read_dicom_folder(folder)`` reads every file under ``folder`` (subfolders too, any names, any
order; files without the DICOM Part-10 preamble, hidden files and DICOMDIR are skipped, and so is a
second copy of an instance), groups the images by SeriesInstanceUID and picks three series:

* **FLAIR**: SeriesDescription or ProtocolName holds ``FLAIR`` or ``dark fluid`` (Siemens) and no
  T1 marker (a "T1 FLAIR" is a T1-weighted series, sorted like a T1 below).
* **pre-contrast**: a ``pre`` marker (``pre``, ``precontrast``, ``non contrast``, ``without``,
  ``w/o``), or else a T1 marker (``T1``, ``T1W``, ``MPRAGE``, ``SPGR``) with no contrast marker.
* **post-contrast**: a contrast marker (``post``, ``+C``, ``C+``, ``GD``/``+GD``, ``gad...``,
  ``contrast``, ``CE``, ``w/ c``, ``with contrast``) and no ``pre`` marker.

Text is compared lower-cased with ``_`` and ``-`` read as spaces. Localisers (``localizer``,
``scout``, ``survey``, ``3 plane``) and series that name another weighting (T2 that is not FLAIR,
DWI, ADC, SWI, perfusion, MRA ...) are never picked. When several series fit a role the original
(ImageType ORIGINAL) ones are preferred over derived ones (MPR reformats); for FLAIR then axial
ones (the network was trained on axial slices); for pre and post those on FLAIR's grid. Several
left over is an ambiguity, refused with the list of candidates. Pre and post are looked for in
FLAIR's study only.

``flair=``, ``pre=``, ``post=`` (``lgg-predict --flair-series/--pre-series/--post-series``) name a
series instead: its SeriesNumber (``7`` or ``"7"``), its SeriesInstanceUID, or a case-insensitive
substring of its SeriesDescription or ProtocolName that fits exactly one series. ``pre="none"`` or
``post="none"`` leave that sequence out. A missing pre- or post-contrast series is replaced by
FLAIR, as the Kaggle set does, with a warning (``DicomScan.warnings``).

Slices are ordered by ImagePositionPatient projected on the slice normal (the cross product of
ImageOrientationPatient's row and column directions), never by file name or InstanceNumber. A
series must hold one image size, one orientation, one pixel spacing and evenly spaced, collinear
slice positions (a missing slice shows as an uneven gap). The three series must lie on one grid
(same size, orientation, spacing and positions, 0.01 mm); when one does not, it is refused with
what differs, unless ``resample=True`` (``--resample``) resamples it onto FLAIR's grid by scanner
coordinates (trilinear; no registration, so motion between the series is not corrected).

Geometry: the mask's NIfTI voxel ``(i, j, k)`` is DICOM row ``i``, column ``j`` of the ``k``-th slice
along the normal, and the affine maps it to RAS+ mm: DICOM's LPS patient coordinates with x and y
negated. Column 0 is the column direction cosine times the row spacing (PixelSpacing[0]), column 1
the row direction cosine times the column spacing (PixelSpacing[1]), column 2 the step from one
slice position to the next (a gantry tilt shows as a shear), and the translation the first slice's
ImagePositionPatient. qform and sform codes are 1 (scanner), units mm. ``Scan.slice_numbers`` are
1..S in that order (k + 1), not InstanceNumber.

Intensities: RescaleSlope and RescaleIntercept are applied slice by slice (MONOCHROME1 is
inverted), then each sequence is scaled to uint8 over its volume from minimum to maximum, as
``unet.predict.scan`` does for every non-uint8 input (uint8 pixels without rescaling are kept).
Every fault raises ``InputError`` naming the folder, the series and what to do.

``list_series(folder)`` shows what a folder holds and the role each series would get;
``write_dicom_seg(path, mask, scan)`` writes a mask as a binary DICOM Segmentation of FLAIR's
series (needs highdicom), so that it opens on the images in a PACS viewer.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from unet.errors import EnvironmentMismatch, InputError
from unet.predict.volume import Scan, as_uint8

log = logging.getLogger(__name__)

ROLES = ("pre", "flair", "post")  # the Scan's channel order (unet.io.kaggle.CHANNELS)
NONE = "none"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
POSITION_TOL_MM = 0.01  # two positions closer than this are the same
GRID_TOL_MM = 0.01
DIRECTION_TOL = 1e-4
SCANNER = 1  # NIfTI xform code "scanner anatomical"
DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory (DICOMDIR)
SEG_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
             "StudyID", "AccessionNumber", "ReferringPhysicianName")
AXIAL_MIN_COSINE = 0.7  # |normal . superior| above this: an axial series

_LOCALIZER = re.compile(r"\b(localizer|localiser|scout|survey|3 ?plane|tri ?pilot)\b")
_FLAIR = re.compile(r"\b(flair|dark ?fluid)\b")
_T1 = re.compile(r"\b(t1(?!\d)\w*|mprage|spgr)\b")
_PRE = re.compile(r"\b(pre|precontrast|non ?contrast|without)\b|\bw/o\b")
_POST = re.compile(r"\b(post|postcontrast|gd|gad\w*|contrast|ce|with contrast)\b|\+ ?(c|gd)\b|\bc ?\+|\bw/ ?c\b")
_OTHER = re.compile(r"\b(t2\w*|pd\w*|dwi|dti|adc|trace|diff\w*|swi|perf\w*|dsc|dce|asl|mra|tof|ep2d\w*)\b")


def classify(text: str) -> str | None:
    """The role a SeriesDescription/ProtocolName suggests: "flair", "pre", "post" or None."""
    text = re.sub(r"[_\-]+", " ", text.lower())
    if _LOCALIZER.search(text):
        return None
    t1 = bool(_T1.search(text))
    if _FLAIR.search(text) and not t1:
        return "flair"
    if not t1 and _OTHER.search(text):
        return None
    if _PRE.search(text):
        return "pre"
    if _POST.search(text):
        return "post"
    return "pre" if t1 else None


@dataclass
class Series:
    """One SeriesInstanceUID's files, as their headers describe them (pixels read later)."""

    uid: str
    number: int | None
    description: str
    protocol: str
    study_uid: str
    frame_uid: str
    patient_id: str
    study_date: str
    derived: bool
    files: list[Path] = field(default_factory=list)
    datasets: list[Any] = field(default_factory=list)  # pydicom Datasets, pixel data deferred
    non_image: int = 0  # instances without pixel data (reports, presentation states ...)

    @property
    def text(self) -> str:
        return f"{self.description} {self.protocol}".strip()

    @property
    def role(self) -> str | None:
        return classify(self.text) if self.datasets else None

    @property
    def label(self) -> str:
        number = "?" if self.number is None else self.number
        name = self.description or self.protocol or "no description"
        return f"series {number} '{name}'"

    def line(self) -> str:
        kind = (f"{len(self.datasets)} images" if self.datasets else "no images") + (
            f", {self.non_image} non-image" if self.non_image else "") + (", derived" if self.derived else "")
        return f"  {self.label} ({kind}): {self.role or 'not used'}"

    def info(self) -> dict[str, Any]:
        return {"number": self.number, "description": self.description, "protocol": self.protocol,
                "uid": self.uid, "files": len(self.datasets)}


@dataclass
class Volume:
    """One series stacked in slice order: (S, H, W) float64 and its RAS affine for NIfTI (H, W, S)."""

    series: Series
    files: list[Path]
    datasets: list[Any]
    affine: np.ndarray
    shape: tuple[int, int, int]  # NIfTI (H, W, S)
    resample_to: Volume | None = None  # set when its pixels are to be resampled onto this grid (FLAIR's)

    @property
    def normal_cosine(self) -> float:
        """|cos| of the angle between the slice normal and the patient's head-foot axis."""
        step = self.affine[:3, 2]
        if self.shape[2] == 1:
            step = np.cross(self.affine[:3, 0], self.affine[:3, 1])
        return float(abs(step[2]) / max(np.linalg.norm(step), 1e-12))


@dataclass
class DicomScan(Scan):
    """A ``Scan`` read from DICOM, with the series it was built from and what was substituted."""

    series: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # role -> info; None: FLAIR stood in
    warnings: list[str] = field(default_factory=list)
    patient_id: str = ""
    study_date: str = ""
    flair_files: list[Path] = field(default_factory=list)  # FLAIR's files in slice order, for a DICOM SEG


# ---- finding the files ----------------------------------------------------------------------


def _pydicom():
    try:
        import pydicom
    except ImportError:  # pragma: no cover - pydicom is a dependency
        raise EnvironmentMismatch("reading DICOM needs pydicom: pip install pydicom") from None
    return pydicom


def has_dicom_preamble(path: Path) -> bool:
    """Whether ``path`` is a DICOM Part-10 file (``DICM`` after the 128-byte preamble)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def is_dicom_folder(folder: Path, *, probe: int = 200) -> bool:
    """Whether ``folder`` (or a subfolder) holds a DICOM file; looks at ``probe`` files at most."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    for n, path in enumerate(_files(folder)):
        if n >= probe:
            return False
        if has_dicom_preamble(path):
            return True
    return False


def list_series(folder: Path) -> list[Series]:
    """Every series under ``folder``, by SeriesNumber, with the role its description suggests."""
    pydicom = _pydicom()
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder; give the folder that holds the study's DICOM files")
    series: dict[str, Series] = {}
    seen: set[str] = set()
    for path in _files(folder):
        if not has_dicom_preamble(path):
            continue  # README, .txt, thumbnails ... and DICOM files without the Part-10 preamble
        try:
            ds = pydicom.dcmread(path, defer_size=4096)
        except Exception as exc:  # pydicom raises InvalidDicomError, EOFError, ValueError ... for bad files
            raise InputError(f"{path}: unreadable DICOM file ({type(exc).__name__}: {exc}); "
                             "remove it or copy the study again") from None
        sop_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
        if sop_class == DIRECTORY_SOP_CLASS or "SeriesInstanceUID" not in ds:
            continue
        sop = str(ds.get("SOPInstanceUID", path))
        if sop in seen:  # the same instance twice (a copy under another name)
            continue
        seen.add(sop)
        uid = str(ds.SeriesInstanceUID)
        if uid not in series:
            number = ds.get("SeriesNumber")
            series[uid] = Series(
                uid, int(number) if number not in (None, "") else None, str(ds.get("SeriesDescription", "") or ""),
                str(ds.get("ProtocolName", "") or ""), str(ds.get("StudyInstanceUID", "")),
                str(ds.get("FrameOfReferenceUID", "")), str(ds.get("PatientID", "")), str(ds.get("StudyDate", "")),
                "DERIVED" in [str(v).upper() for v in (ds.get("ImageType") or [])])
        if "PixelData" in ds:
            series[uid].files.append(path)
            series[uid].datasets.append(ds)
        else:
            series[uid].non_image += 1
    return sorted(series.values(), key=lambda s: (s.number is None, s.number or 0, s.description, s.uid))


def _table(series: list[Series]) -> str:
    return "\n".join(s.line() for s in series)


# ---- geometry -------------------------------------------------------------------------------


def _floats(ds: Any, name: str, count: int, path: Path, series: Series) -> np.ndarray:
    value = ds.get(name)
    try:
        array = np.array([float(v) for v in value], np.float64)
    except (TypeError, ValueError):
        array = np.zeros(0)
    if array.shape != (count,) or not np.isfinite(array).all():
        raise InputError(f"{path}: {series.label} has no valid {name} ({value!r}); a volume needs every "
                         "slice's geometry: export the series from the scanner or PACS again, or give NIfTI files")
    return array


def series_volume(series: Series) -> Volume:
    """The series' slices in order along the normal and their affine; InputError when they make no volume."""
    if not series.datasets:
        raise InputError(f"{series.label} holds no images ({series.non_image} non-image DICOM objects, e.g. "
                         "reports or presentation states); name an image series")
    where = series.files[0].parent
    rows, cols = _image_size(series, where)
    row_dir, col_dir, spacing, positions = _slice_geometry(series, where)
    normal = np.cross(row_dir, col_dir)
    depth = positions @ normal
    order = np.argsort(depth, kind="stable")
    positions, depth = positions[order], depth[order]
    files = [series.files[k] for k in order]
    datasets = [series.datasets[k] for k in order]
    step = _slice_step(series, where, files, datasets, positions, depth, normal)
    lps = np.eye(4)
    lps[:3, 0] = col_dir * spacing[0]  # voxel index i: down the rows
    lps[:3, 1] = row_dir * spacing[1]  # voxel index j: along a row
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    return Volume(series, files, datasets, LPS_TO_RAS @ lps, (rows, cols, len(files)))


def _image_size(series: Series, where: Path) -> tuple[int, int]:
    """The series' one (Rows, Columns); InputError for multi-frame, colour or mixed-size images."""
    sizes: dict[tuple[int, int], list[Path]] = {}
    for path, ds in zip(series.files, series.datasets):
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            raise InputError(f"{path}: {series.label} is a multi-frame (enhanced) DICOM with {frames} frames, "
                             "which is not read here; convert the study to NIfTI (e.g. dcm2niix) and give the "
                             "three NIfTI files, or export it as single-frame images")
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
            raise InputError(f"{path}: {series.label} is not a greyscale MR image ({photometric}); "
                             "screenshots and colour maps cannot be segmented: name the original series")
        sizes.setdefault((int(ds.Rows), int(ds.Columns)), []).append(path)
    if len(sizes) > 1:
        listed = ", ".join(f"{r}x{c} ({len(p)} files, e.g. {p[0].name})" for (r, c), p in sizes.items())
        raise InputError(f"{where}: {series.label} mixes image sizes: {listed}; a volume needs one size. Name "
                         "another series, or split the series (several acquisitions share one SeriesInstanceUID)")
    return next(iter(sizes))


def _slice_geometry(series: Series, where: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Row and column directions, pixel spacing (the series' one) and every file's ImagePositionPatient,
    in file order; InputError when slices disagree on orientation or spacing, or it is not orthonormal."""
    pairs = list(zip(series.files, series.datasets))
    orientation = [_floats(ds, "ImageOrientationPatient", 6, p, series) for p, ds in pairs]
    spacing = [_floats(ds, "PixelSpacing", 2, p, series) for p, ds in pairs]
    positions = np.array([_floats(ds, "ImagePositionPatient", 3, p, series) for p, ds in pairs])
    for path, iop, ps in zip(series.files, orientation, spacing):
        if not np.allclose(iop, orientation[0], atol=DIRECTION_TOL):
            raise InputError(f"{where}: {series.label} mixes slice orientations ({path.name}: {iop.round(4).tolist()}, "
                             f"{series.files[0].name}: {orientation[0].round(4).tolist()}); a localiser or several "
                             "stacks share the series: name another series")
        if not np.allclose(ps, spacing[0], rtol=1e-4, atol=1e-6):
            raise InputError(f"{where}: {series.label} mixes pixel spacings ({path.name}: {ps.tolist()} mm, "
                             f"{series.files[0].name}: {spacing[0].tolist()} mm); name another series")
    if not (spacing[0] > 0).all():
        raise InputError(f"{series.files[0]}: {series.label} has PixelSpacing {spacing[0].tolist()} mm; a pixel needs "
                         "a positive size: the files are damaged or anonymised too far, export the series again")
    row_dir, col_dir = orientation[0][:3], orientation[0][3:]
    normal = np.cross(row_dir, col_dir)
    if abs(np.linalg.norm(normal) - 1) > 1e-3 or abs(row_dir @ col_dir) > 1e-3:
        raise InputError(f"{where}: {series.label} has an ImageOrientationPatient whose directions are not "
                         f"orthonormal ({orientation[0].tolist()}); the files are damaged: export them again")
    return row_dir, col_dir, spacing[0], positions


def _slice_step(series: Series, where: Path, files: list[Path], datasets: list[Any], positions: np.ndarray,
                depth: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """The step from one slice position to the next (slices sorted along ``normal``); InputError for
    two slices at one position or uneven, non-collinear positions. One slice: its thickness along the normal."""
    n = len(files)
    if n == 1:
        thickness = float(datasets[0].get("SpacingBetweenSlices") or datasets[0].get("SliceThickness") or 1.0)
        return normal * thickness
    gaps = np.diff(depth)
    if gaps.min() < POSITION_TOL_MM:
        k = int(np.argmin(gaps))
        raise InputError(f"{where}: {series.label} has two slices at one position ({files[k].name} and "
                         f"{files[k + 1].name}, {depth[k]:.2f} mm along the normal): it holds several echoes, "
                         "time points or repeats; split it into one series per volume, or name another series")
    step = (positions[-1] - positions[0]) / (n - 1)
    expected = positions[0] + np.arange(n)[:, None] * step
    off = np.linalg.norm(positions - expected, axis=1)
    if off.max() > POSITION_TOL_MM + 0.01 * np.linalg.norm(step):
        k = int(np.argmax(np.abs(gaps - gaps.mean())))
        raise InputError(
            f"{where}: {series.label} has inconsistent slice spacing: gaps of {gaps.min():.2f} to "
            f"{gaps.max():.2f} mm along the normal (e.g. {gaps[k]:.2f} mm between {files[k].name} and "
            f"{files[k + 1].name}); a slice is missing or the slices do not lie on one line. "
            "Copy the whole series again, or name another series")
    return step


def grid_difference(volume: Volume, reference: Volume) -> str | None:
    """What differs between two series' grids, or None when they share one."""
    if volume.shape[:2] != reference.shape[:2]:
        return f"{volume.shape[0]}x{volume.shape[1]} pixels, not {reference.shape[0]}x{reference.shape[1]}"
    if volume.shape[2] != reference.shape[2]:
        return f"{volume.shape[2]} slices, not {reference.shape[2]}"
    a, b = volume.affine, reference.affine
    zooms_a, zooms_b = np.linalg.norm(a[:3, :3], axis=0), np.linalg.norm(b[:3, :3], axis=0)
    if not np.allclose(zooms_a, zooms_b, atol=1e-3):
        return f"voxels of {np.round(zooms_a, 3).tolist()} mm, not {np.round(zooms_b, 3).tolist()} mm"
    if not np.allclose(a[:3, :3] / zooms_a, b[:3, :3] / zooms_b, atol=1e-3):
        return "another orientation"
    corners = np.array([[0, 0, 0, 1], [volume.shape[0] - 1, volume.shape[1] - 1, volume.shape[2] - 1, 1]]).T
    shift = np.abs((a @ corners) - (b @ corners))[:3].max()
    if shift > GRID_TOL_MM:
        return f"positions {shift:.2f} mm apart"
    return None


# ---- pixels ---------------------------------------------------------------------------------


def _pixels(volume: Volume) -> np.ndarray:
    """(S, H, W) float64 with rescale slope and intercept applied (uint8 kept when nothing rescales)."""
    slices, rescaled = [], False
    for path, ds in zip(volume.files, volume.datasets):
        try:
            array = ds.pixel_array
        except Exception as exc:  # missing decoder plugins, truncated pixel data ...
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            name = getattr(syntax, "name", syntax)
            raise InputError(
                f"{path}: {volume.series.label}: cannot decode the pixel data (transfer syntax {name}; "
                f"{type(exc).__name__}: {exc}). For compressed DICOM install pylibjpeg, pylibjpeg-libjpeg and "
                "pylibjpeg-openjpeg (or python-gdcm), or decompress the files first (gdcmconv --raw)") from None
        if array.shape != volume.shape[:2]:
            raise InputError(f"{path}: {volume.series.label}: pixel data is {array.shape}, the header says "
                             f"{volume.shape[:2]}; the file is damaged: export the series again")
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        inverted = str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1"
        if slope != 1.0 or intercept != 0.0 or inverted or array.dtype != np.uint8:
            rescaled = True
        values = array.astype(np.float64) * slope + intercept
        slices.append(-values if inverted else values)
    stack = np.stack(slices)
    return stack if rescaled else stack.astype(np.uint8)


def resample_onto(volume: Volume, pixels: np.ndarray, reference: Volume) -> np.ndarray:
    """``pixels`` (S, H, W) of ``volume`` resampled onto ``reference``'s grid: trilinear, by scanner
    coordinates; 0 more than half a voxel outside ``volume``, its edge values up to there."""
    h, w, s = reference.shape
    to_source = np.linalg.inv(volume.affine) @ reference.affine  # reference voxel -> volume voxel (i, j, k)
    grid = np.stack(np.meshgrid(np.arange(s), np.arange(h), np.arange(w), indexing="ij"), axis=0)  # (3, S, H, W): k, i, j
    ijk = np.stack([grid[1], grid[2], grid[0]]).reshape(3, -1).astype(np.float64)
    src = to_source[:3, :3] @ ijk + to_source[:3, 3:4]  # (3, N): i, j, k in the source volume
    coords = np.stack([src[2], src[0], src[1]])  # pixels are indexed (k, i, j)
    out = ndimage.map_coordinates(np.asarray(pixels, np.float64), coords, order=1, mode="nearest")
    limits = np.array(pixels.shape, np.float64)[:, None]
    outside = ((coords < -0.5) | (coords > limits - 0.5)).any(axis=0)  # beyond half a voxel from the source
    out[outside] = 0.0
    return out.reshape(s, h, w)


# ---- picking the series ---------------------------------------------------------------------


def _named(folder: Path, series: list[Series], name: str | int, option: str) -> Series:
    text = str(name).strip()
    if text.isdigit():
        found = [s for s in series if s.number == int(text)]
    else:
        found = [s for s in series if s.uid == text] or [s for s in series if text.lower() in s.text.lower()]
        exact = [s for s in found if text.lower() in (s.description.lower(), s.protocol.lower())]
        found = exact if len(exact) == 1 else found
    images = [s for s in found if s.datasets]
    if len(images) == 1:
        return images[0]
    if found and not images:
        raise InputError(f"{folder}: {option} {text}: {found[0].label} holds no images; name an image series:\n"
                         + _table(series))
    if not found:
        raise InputError(f"{folder}: {option} {text}: no series has that SeriesNumber, SeriesInstanceUID or "
                         f"description; the folder holds:\n{_table(series)}")
    raise InputError(f"{folder}: {option} {text} fits {len(images)} series; give its SeriesNumber instead:\n"
                     + _table(images))


def _prefer(candidates: list, keep) -> list:
    kept = [c for c in candidates if keep(c)]
    return kept or candidates


def _volumes(candidates: list[Series], role: str, warnings: list[str]) -> list[Volume]:
    """The candidates that make a volume; the others are skipped with a warning, unless none does."""
    volumes, errors = [], []
    for candidate in candidates:
        try:
            volumes.append(series_volume(candidate))
        except InputError as exc:
            errors.append(exc)
    if not volumes:
        raise errors[0]
    for exc in errors:
        warnings.append(f"skipped as {role} candidate: {exc}")
    return volumes


def read_dicom_folder(folder: Path, *, flair: str | int | None = None, pre: str | int | None = None,
                      post: str | int | None = None, resample: bool = False) -> DicomScan:
    """One study's DICOM files as a Scan: (S, H, W, 3) uint8 pre/FLAIR/post on FLAIR's grid (module doc)."""
    folder = Path(folder)
    series = list_series(folder)
    if not any(s.datasets for s in series):
        what = (f"{len(series)} series without images ({sum(s.non_image for s in series)} non-image DICOM "
                "objects)") if series else "no DICOM files with the DICM preamble"
        raise InputError(f"{folder}: {what}; give the folder of the study's MR image files")
    picker = _Picker(folder, series, resample)
    flair_volume = picker.flair(flair)
    chosen: dict[str, Volume | None] = {"flair": flair_volume}
    for role, given in (("pre", pre), ("post", post)):
        chosen[role] = picker.contrast(role, given, flair_volume)
    _check_one_patient(folder, [v.series for v in chosen.values() if v is not None])
    for message in picker.warnings:
        log.warning("%s: %s", folder, message)
    return _build_scan(folder, chosen, flair_volume, picker.warnings)


_OPTIONS = {"flair": "--flair-series", "pre": "--pre-series", "post": "--post-series"}


def _is_none(given: str | int | None) -> bool:
    return given is not None and str(given).strip().lower() == NONE


@dataclass
class _Picker:
    """Picks one folder's series for each role (named or found, module doc), collecting the warnings."""

    folder: Path
    series: list[Series]
    resample: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def images(self) -> list[Series]:
        return [s for s in self.series if s.datasets]

    def flair(self, given: str | int | None) -> Volume:
        """FLAIR's volume: the series named, else the one FLAIR series (original, then axial, preferred)."""
        if _is_none(given):
            raise InputError(f"{self.folder}: --flair-series none: the network needs FLAIR; name the FLAIR series")
        if given is not None:
            volume = series_volume(_named(self.folder, self.series, given, _OPTIONS["flair"]))
        else:
            candidates = _prefer([s for s in self.images if s.role == "flair"], lambda s: not s.derived)
            if not candidates:
                raise InputError(f"{self.folder}: no FLAIR series found (none has FLAIR or dark fluid in its "
                                 f"SeriesDescription or ProtocolName); name it with --flair-series NUMBER:\n"
                                 + _table(self.series))
            volumes = _prefer(_volumes(candidates, "FLAIR", self.warnings),
                              lambda v: v.normal_cosine > AXIAL_MIN_COSINE)
            if len(volumes) > 1:
                raise InputError(f"{self.folder}: {len(volumes)} series could be FLAIR; name one with "
                                 "--flair-series NUMBER:\n" + _table([v.series for v in volumes]))
            volume = volumes[0]
        if volume.normal_cosine < AXIAL_MIN_COSINE:
            self.warnings.append(f"{volume.series.label} is not axial: the network was trained on axial slices, so "
                                 "its result on sagittal or coronal slices is unreliable")
        return volume

    def contrast(self, role: str, given: str | int | None, flair: Volume) -> Volume | None:
        """The ``role`` ("pre" or "post") volume on FLAIR's grid: named, left out ("none"), else found in
        FLAIR's study; None when FLAIR stands in for it."""
        option = _OPTIONS[role]
        if _is_none(given):
            self.warnings.append(f"{option} none: FLAIR ({flair.series.label}) stands in for the {role}-contrast "
                                 "sequence")
            return None
        if given is not None:
            volume = series_volume(_named(self.folder, self.series, given, option))
            return _on_grid(self.folder, volume, flair, role, self.resample, option, self.warnings)
        candidates = [s for s in self.images if s.role == role and s is not flair.series
                      and (not flair.series.study_uid or s.study_uid == flair.series.study_uid)]
        if not candidates:
            self.warnings.append(f"no {role}-contrast series found: FLAIR ({flair.series.label}) stands in for it, "
                                 f"as in the Kaggle set; name one with {option} if the study has it")
            return None
        volumes = _volumes(_prefer(candidates, lambda s: not s.derived), f"{role}-contrast", self.warnings)
        fitting = [v for v in volumes if grid_difference(v, flair) is None]
        if len(fitting) == 1 or (not fitting and len(volumes) == 1):
            return _on_grid(self.folder, (fitting or volumes)[0], flair, role, self.resample, option, self.warnings)
        listed = fitting or volumes
        raise InputError(f"{self.folder}: {len(listed)} series could be {role}-contrast"
                         f"{' on FLAIR grid' if fitting else ''}; name one with {option} NUMBER:\n"
                         + _table([v.series for v in listed]))


def _check_one_patient(folder: Path, used: list[Series]) -> None:
    patients = {s.patient_id for s in used if s.patient_id}
    if len(patients) > 1:
        raise InputError(f"{folder}: the series picked belong to different patients ({', '.join(sorted(patients))}): "
                         + "; ".join(s.label for s in used) + "; name the right series, or keep one patient a folder")


def _on_grid(folder: Path, volume: Volume, flair: Volume, role: str, resample: bool, option: str,
             warnings: list[str]) -> Volume:
    difference = grid_difference(volume, flair)
    if difference is None:
        return volume
    frames = volume.series.frame_uid, flair.series.frame_uid
    if all(frames) and frames[0] != frames[1]:
        raise InputError(
            f"{folder}: {role}-contrast {volume.series.label} is not on FLAIR's grid ({flair.series.label}; it has "
            f"{difference}) and lies in another frame of reference (FrameOfReferenceUID), so scanner coordinates "
            f"cannot bring it there; register the sequences and give NIfTI files, or {option} none to let FLAIR "
            "stand in")
    if not resample:
        raise InputError(
            f"{folder}: {role}-contrast {volume.series.label} is not on FLAIR's grid ({flair.series.label}): it has "
            f"{difference}. Resample it onto FLAIR's grid by scanner coordinates (--resample), name a series on "
            f"FLAIR's grid with {option}, or {option} none to let FLAIR stand in")
    warnings.append(f"{role}-contrast {volume.series.label} resampled onto FLAIR's grid ({difference}) by scanner "
                    "coordinates, trilinear; no registration, so motion between the series is not corrected")
    volume.resample_to = flair
    return volume


def _build_scan(folder: Path, chosen: dict[str, Volume | None], flair: Volume, warnings: list[str]) -> DicomScan:
    channels, scaled, info = [], False, {}
    for role in ROLES:
        volume = chosen[role] or flair
        pixels = _pixels(volume)
        if volume.resample_to is not None:
            pixels = resample_onto(volume, pixels, volume.resample_to)
        channel, was_scaled = as_uint8(pixels[..., None], f"{folder} {volume.series.label}")  # type: ignore[arg-type]
        channels.append(channel)
        scaled |= was_scaled
        info[role] = volume.series.info() if chosen[role] is not None else None
    images = np.concatenate(channels, axis=-1)
    header = nifti_header(flair.affine, flair.shape)
    return DicomScan(images, "dicom", [folder], list(range(1, images.shape[0] + 1)), flair.affine.copy(), header,
                     scaled, series=info, warnings=warnings, patient_id=flair.series.patient_id,
                     study_date=flair.series.study_date, flair_files=list(flair.files))


def nifti_header(affine: np.ndarray, shape: tuple[int, int, int]) -> nib.Nifti1Header:
    """A NIfTI-1 header for a (H, W, S) volume on ``affine``: qform and sform code 1 (scanner), mm."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    header.set_qform(affine, code=SCANNER)  # the nearest rotation and zooms; a gantry-tilt shear lives in sform
    header.set_sform(affine, code=SCANNER)
    header.set_xyzt_units("mm")
    return header


# ---- the mask as DICOM SEG ------------------------------------------------------------------


def write_dicom_seg(path: Path, mask: np.ndarray, scan: DicomScan, *, series_number: int = 900,
                    software_version: str | None = None) -> Path:
    """The (S, H, W) 0/1 mask as a binary DICOM Segmentation of FLAIR's series (highdicom), so that it
    opens on the images in a PACS viewer; one segment, "FLAIR abnormality", algorithm type AUTOMATIC.
    Needs ``pip install highdicom``."""
    try:
        import highdicom as hd
        from pydicom.sr.codedict import codes
    except ImportError:
        raise EnvironmentMismatch("writing DICOM SEG needs highdicom: pip install highdicom") from None
    pydicom = _pydicom()
    if not isinstance(scan, DicomScan) or not scan.flair_files:
        raise InputError("a DICOM SEG needs a scan read from DICOM (read_dicom_folder): it refers to FLAIR's images")
    mask = np.asarray(mask)
    if mask.shape != scan.images.shape[:3]:
        raise InputError(f"mask is {mask.shape}, the scan's slices are {scan.images.shape[:3]}; give the mask of this scan")
    if software_version is None:
        from importlib import metadata

        try:
            software_version = metadata.version("lgg-unet")
        except metadata.PackageNotFoundError:
            software_version = "unknown"
    sources = [pydicom.dcmread(p) for p in scan.flair_files]
    for ds in sources:  # type-2 patient/study attributes SEG copies; anonymised exports often drop them
        for keyword in SEG_TYPE2:
            if keyword not in ds:
                setattr(ds, keyword, "")
    algorithm = hd.AlgorithmIdentificationSequence(name="lgg-unet", family=codes.cid7162.ArtificialIntelligence,
                                                   version=software_version)
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label="FLAIR abnormality",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm, anatomic_regions=[codes.SCT.Brain])
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=(mask > 0).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[segment],
        series_instance_uid=hd.UID(), series_number=series_number, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="lgg-unet", manufacturer_model_name="lgg-unet U-Net (research use only)",
        software_versions=software_version, device_serial_number="0",
        series_description="lgg-unet FLAIR abnormality (research use only)", omit_empty_frames=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return path
