"""What ``lgg-predict`` reads and writes: one patient's scan in, a mask and pictures out.

Inputs become one ``Scan``: (S, H, W, 3) uint8 slices (pre-contrast, FLAIR, post-contrast), the
way the Kaggle TIFFs hold them, with the geometry to write the mask back on the input's grid:

* a patient folder in the Kaggle layout (``<patient>_<n>.tif``, slices in integer order of
  ``<n>``, ``*_mask.tif`` and other files ignored): identity affine, as ``unet.io.nifti`` writes;
* one 4-D NIfTI (H, W, slices, 3), or three 3-D NIfTI files (pre, FLAIR, post) on one grid: the
  mask keeps the input's affine and header (FLAIR's, for three files);
* one RGB TIFF or PNG slice: a one-slice volume;
* a folder of DICOM files (one study, series mixed or in subfolders): ``unet.predict.dicom`` picks
  FLAIR, pre- and post-contrast (or the series named in ``series``), stacks them on FLAIR's grid
  and gives the mask FLAIR's geometry as a NIfTI affine.

Intensities that are not uint8 are scaled to 0..255, each sequence over the whole volume from its
minimum to its maximum (``Scan.scaled`` says so). Every fault raises ``ValueError`` naming the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image
from scipy import ndimage

from unet.errors import InputError
from unet.io.kaggle import FLAIR, parse_slice_name, read_tiff
from unet.io.nifti import nifti_to_stack, stack_to_nifti, write_volume
from unet.predict.dicom import is_dicom_folder, read_dicom_folder
from unet.predict.volume import Scan, as_uint8

NIFTI_SUFFIXES = (".nii", ".nii.gz")
SLICE_SUFFIXES = (".tif", ".tiff", ".png")
OVERLAY_MIN_SIDE = 256  # small slices are enlarged (nearest) so that the outline stays thin
RED = (255, 0, 0)


def read_scan(paths: list[Path], *, series: Mapping[str, str | int | None] | None = None,
              resample: bool = False) -> Scan:
    """Dispatch on what was given: a folder (Kaggle slices or DICOM), one or three NIfTI files, or one
    slice image. ``series`` ({"flair": ..., "pre": ..., "post": ...}) and ``resample`` are for DICOM."""
    paths = [Path(p) for p in paths]
    for path in paths:
        if not path.exists():
            raise InputError(f"{path}: input not found")
    series = {k: v for k, v in (series or {}).items() if v is not None}
    if len(paths) == 1 and paths[0].is_dir():

        if is_dicom_folder(paths[0]):
            return read_dicom_folder(paths[0], **series, resample=resample)
    if series or resample:
        given = [f"--{k}-series" for k in series] + (["--resample"] if resample else [])
        raise InputError(f"{' '.join(map(str, paths))}: {', '.join(given)} apply to a folder of DICOM files only")
    if len(paths) == 3:
        if not all(_is_nifti(p) for p in paths):
            raise InputError(f"{' '.join(map(str, paths))}: three inputs must be three 3-D NIfTI files "
                             "(pre-contrast, FLAIR, post-contrast, in that order)")
        return read_nifti_channels(paths)
    if len(paths) != 1:
        raise InputError(f"{' '.join(map(str, paths))}: give one input (a patient folder, a 4-D NIfTI or a "
                         f"slice image) or three single-channel NIfTI files, not {len(paths)}")
    path = paths[0]
    if path.is_dir():
        return read_kaggle_folder(path)
    if _is_nifti(path):
        return read_nifti(path)
    if path.name.lower().endswith(SLICE_SUFFIXES):
        return read_slice(path)
    raise InputError(f"{path}: unknown input type; give a patient folder of <patient>_<n>.tif slices, "
                     "a folder of DICOM files, a .nii/.nii.gz volume, or one .tif/.png slice")


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def read_kaggle_folder(folder: Path) -> Scan:
    """``<patient>_<n>.tif`` slices in integer order of ``<n>``; masks and other files ignored."""
    found: dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        parsed = parse_slice_name(path.name)
        if parsed is None or parsed[2] or not path.is_file():  # masks and other files are ignored
            continue
        n = parsed[1]
        if n in found:
            raise InputError(f"{path}: slice number {n} appears twice (also {found[n].name}); keep one")
        found[n] = path
    if not found:
        hint = ""
        if any(sub.is_dir() and any(parse_slice_name(p.name) for p in sub.iterdir()) for sub in folder.iterdir()):
            hint = " (it holds patient folders: point --input at one of them)"
        raise InputError(f"{folder}: no <patient>_<n>.tif slices found{hint}")
    patients = {parse_slice_name(p.name)[0] for p in found.values()}  # type: ignore[index]
    if len(patients) > 1:
        raise InputError(f"{folder}: slices of several patients ({', '.join(sorted(patients))}); "
                         "a folder must hold one patient's slices")
    numbers = sorted(found)
    slices = [_rgb(read_tiff(found[n]), found[n]) for n in numbers]
    for n, image in zip(numbers, slices):
        if image.shape != slices[0].shape:
            raise InputError(f"{found[n]}: slice is {image.shape[0]}x{image.shape[1]} but "
                             f"{found[numbers[0]].name} is {slices[0].shape[0]}x{slices[0].shape[1]}; "
                             "a volume needs one slice size")
    images, scaled = as_uint8(np.stack(slices), folder)
    return Scan(images, "kaggle-folder", [folder], numbers, scaled=scaled)


def read_slice(path: Path) -> Scan:
    """One RGB TIFF or PNG slice as a one-slice volume."""
    array = read_tiff(path) if path.suffix.lower() in (".tif", ".tiff") else _read_png(path)
    images, scaled = as_uint8(_rgb(array, path)[None], path)
    return Scan(images, "slice", [path], [1], scaled=scaled)


def read_nifti(path: Path) -> Scan:
    """A 4-D (H, W, slices, 3) NIfTI volume."""
    image, data = _load_nifti(path)
    if data.ndim != 4 or data.shape[-1] != 3:
        hint = (" It holds one sequence: give three files, --input pre.nii.gz flair.nii.gz post.nii.gz "
                "(the FLAIR file three times when only FLAIR exists)") if data.ndim == 3 else ""
        raise InputError(f"{path}: expected a 4-D (height, width, slices, 3) volume with pre-contrast, FLAIR "
                         f"and post-contrast, got shape {data.shape}.{hint}")
    stack, scaled = as_uint8(nifti_to_stack(data), path)
    return Scan(stack, "nifti", [path], list(range(1, stack.shape[0] + 1)), image.affine, image.header, scaled)


def read_nifti_channels(paths: list[Path]) -> Scan:
    """Three 3-D (H, W, slices) NIfTI files on one grid: pre-contrast, FLAIR, post-contrast."""
    loaded = [_load_nifti(p) for p in paths]
    for path, (_, data) in zip(paths, loaded):
        if data.ndim != 3:
            raise InputError(f"{path}: expected a 3-D (height, width, slices) single-sequence volume, "
                             f"got shape {data.shape}")
        if data.shape != loaded[0][1].shape:
            raise InputError(f"{path}: shape {data.shape} differs from {paths[0]} {loaded[0][1].shape}; "
                             "the three sequences must be co-registered on one grid")
    for path, (image, _) in zip(paths, loaded):
        if not np.allclose(image.affine, loaded[FLAIR][0].affine, atol=1e-3):
            raise InputError(f"{path}: affine differs from {paths[FLAIR]}'s; "
                             "the three sequences must be co-registered on one grid")
    channels = [as_uint8(nifti_to_stack(data)[..., None], path) for path, (_, data) in zip(paths, loaded)]
    stack = np.concatenate([c for c, _ in channels], axis=-1)
    flair = loaded[FLAIR][0]
    return Scan(stack, "nifti-channels", paths, list(range(1, stack.shape[0] + 1)), flair.affine, flair.header,
                any(s for _, s in channels))


def _load_nifti(path: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except Exception as exc:  # nibabel raises ImageFileError, EOFError, zlib.error ... for bad files
        raise InputError(f"{path}: unreadable NIfTI file ({type(exc).__name__}: {exc})") from None
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise InputError(f"{path}: voxels are {data.dtype}; expected real numbers")
    zooms = [float(z) for z in image.header.get_zooms()[:3]]
    if not all(np.isfinite(z) and z > 0 for z in zooms) or abs(np.linalg.det(image.affine[:3, :3])) < 1e-9:
        raise InputError(f"{path}: the header gives voxel sizes {zooms} mm and an affine that maps no volume; "
                         "a voxel needs a positive size: convert the series again (e.g. dcm2niix) or fix the "
                         "header (pixdim, sform/qform)")
    return image, data



def _read_png(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image)
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError ...
        raise InputError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None


def _rgb(array: np.ndarray, path: Path) -> np.ndarray:
    """(H, W, 3) from (H, W, 3), or (H, W, 4) with an opaque alpha channel dropped."""
    if array.ndim == 3 and array.shape[-1] == 4 and (array[..., 3] == array[..., 3].max()).all():
        array = array[..., :3]
    if array.ndim != 3 or array.shape[-1] != 3 or not np.issubdtype(array.dtype, np.number):
        raise InputError(f"{path}: expected an RGB slice (height, width, 3) holding pre-contrast, FLAIR and "
                         f"post-contrast, got {array.dtype} {array.shape}")
    return array


def write_mask(path: Path, mask: np.ndarray, scan: Scan, *, description: str) -> Path:
    """(S, H, W) 0/1 mask as NIfTI (H, W, S) uint8 on the input's grid (affine and spacing kept)."""
    if scan.header is None:
        return write_volume(path, mask.astype(np.uint8), description=description)
    header = scan.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1.0, 0.0)
    header.set_intent("none")
    header["descrip"] = description[:79]
    header["cal_min"], header["cal_max"] = 0.0, 1.0
    volume = np.ascontiguousarray(stack_to_nifti(mask.astype(np.uint8)))
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    nib.save(image_class(volume, scan.affine, header), str(path))
    return path


def overlay_image(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """FLAIR (H, W, 3 uint8) in grey with the mask's outline in red; small slices enlarged."""
    factor = max(1, -(-OVERLAY_MIN_SIDE // max(mask.shape)))
    flair = np.kron(image[..., FLAIR], np.ones((factor, factor), np.uint8))
    region = np.kron(mask.astype(bool), np.ones((factor, factor), bool))
    outline = region & ~ndimage.binary_erosion(region, border_value=0)
    rgb = np.repeat(flair[..., None], 3, axis=-1)
    rgb[outline] = RED
    return rgb


CAPTION_HEIGHT = 14


def caption(scan: Scan, k: int, mask: np.ndarray) -> str:
    """What an overlay shows: the patient, the slice as the input numbers it, and the tumour there.

    Slice numbers are the input's own: the Kaggle file number ``<n>`` for a patient folder, the
    1-based index along the NIfTI's third axis otherwise (the overlay's file name uses the same).
    """
    source = scan.sources[0]
    patient = source.name.removesuffix(".gz").removesuffix(".nii") if scan.kind != "kaggle-folder" else source.name
    where = "file" if scan.kind == "kaggle-folder" else "axis-3 index"
    return (f"{patient}  slice {scan.slice_numbers[k]} ({where}; {k + 1} of {len(scan.slice_numbers)})  "
            f"tumour {int(mask[k].sum())} px")


def caption_lines(text: str, width: int, measure) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels (``measure``: a line's width): its fields (parted by
    two spaces) side by side where they fit, a field too long for a line broken at its words; a single
    word wider than the line stays whole."""
    pieces: list[str] = []
    for part in text.split("  "):
        line = ""
        for word in part.split():
            if line and measure(f"{line} {word}") > width:
                pieces.append(line)
                line = word
            else:
                line = f"{line} {word}".strip()
        pieces.append(line)
    lines: list[str] = []
    for piece in filter(None, pieces):
        if lines and measure(f"{lines[-1]}  {piece}") <= width:
            lines[-1] = f"{lines[-1]}  {piece}"
        else:
            lines.append(piece)
    return lines


def write_overlay(path: Path, image: np.ndarray, mask: np.ndarray, text: str = "") -> Path:
    """The overlay with ``text`` on a black band above it, wrapped to the picture's width (PIL's own
    font: no font file needed)."""
    from PIL import ImageDraw

    picture = Image.fromarray(overlay_image(image, mask))
    if text:
        measure = ImageDraw.Draw(picture).textlength
        lines = caption_lines(text, picture.width - 4, measure)
        band = CAPTION_HEIGHT * len(lines)
        framed = Image.new("RGB", (picture.width, picture.height + band))
        framed.paste(picture, (0, band))
        draw = ImageDraw.Draw(framed)
        for row, line in enumerate(lines):
            draw.text((2, 1 + row * CAPTION_HEIGHT), line, fill=(255, 255, 255))
        picture = framed
    picture.save(path, compress_level=1)
    return path
