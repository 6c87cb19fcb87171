"""Predicted masks as a BIDS derivative dataset, beside or inside the raw BIDS dataset.

``write_derivative(root, subject, mask, affine, source_entities=..., generated_by=...)`` writes::

    <root>/dataset_description.json                    Name, BIDSVersion, DatasetType "derivative", GeneratedBy
    <root>/sub-<label>/[ses-<label>/]anat/
        sub-<label>[_ses-<label>]..._desc-tumor_mask.nii.gz   uint8 0/1, the source's affine, qform/sform set
        sub-<label>[_ses-<label>]..._desc-tumor_mask.json     Sources, Type "Lesion", Model, Threshold ...

The mask's name keeps every entity of the source image in BIDS order (``sub-01_ses-pre_acq-ax_FLAIR.nii.gz``
-> ``sub-01_ses-pre_acq-ax_desc-tumor_mask.nii.gz``; a source ``desc`` is replaced by ``tumor``) and
the ``ses-`` folder level when the name has a session, as BIDS derivatives do.

Labels are sanitised to what BIDS allows, ASCII letters and digits only: every other character is
dropped (``TCGA_CS_4941`` -> ``TCGACS4941``, ``sub-01`` -> ``01``); a label left empty is refused.
Two ids that differ only in punctuation would share a label, so ``subject_label`` is the one
place that makes them. ``kaggle_entities`` turns a Kaggle folder name (``TCGA_CS_4941_19960909``)
into ``sub-TCGACS4941`` and ``ses-19960909``.

An existing ``dataset_description.json`` is kept (another tool's derivatives may share the folder):
it must say ``DatasetType: derivative``, and this pipeline's ``GeneratedBy`` entry is added when
missing. Files are written to a temporary name and renamed, so none is ever half-written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from unet.errors import InputError
from unet.io.atomic import atomic_file
from unet.io.nifti import stack_to_nifti

BIDS_VERSION = "1.10.0"
PIPELINE = "lgg-unet"
CODE_URL = None  # set to the repository's URL to have it in GeneratedBy
DESCRIPTION = "tumor"
SIDECAR_DESCRIPTION = "Lower-grade-glioma FLAIR abnormality predicted by a U-Net"
SUFFIX = "mask"
SCANNER = 1  # NIfTI xform code "scanner anatomical"
# The entity order of the BIDS specification (appendix "Entity table"), for file names.
ENTITY_ORDER = ("sub", "ses", "sample", "task", "tracksys", "acq", "nuc", "voi", "ce", "trc", "stain", "rec", "dir",
                "run", "mod", "echo", "flip", "inv", "mt", "part", "proc", "hemi", "space", "split", "recording",
                "chunk", "seg", "res", "den", "label", "desc")
NIFTI_EXTENSIONS = (".nii.gz", ".nii")
_KAGGLE_FOLDER = re.compile(r"^(?P<patient>[A-Za-z]+_[A-Za-z0-9]+_[A-Za-z0-9]+)_(?P<date>\d{8})$")


@dataclass(frozen=True)
class BidsName:
    """A parsed BIDS file name: entities (in file order), suffix and extension."""

    entities: dict[str, str]
    suffix: str
    extension: str


@dataclass(frozen=True)
class DerivativeFiles:
    mask: Path
    sidecar: Path
    dataset_description: Path


def bids_label(text: str, what: str = "label") -> str:
    """``text`` as a BIDS label: ASCII letters and digits only (``TCGA_CS_4941`` -> ``TCGACS4941``)."""
    label = re.sub(r"[^A-Za-z0-9]", "", str(text))
    if not label:
        raise InputError(f"{text!r}: no letters or digits left for a BIDS {what}; give one with letters or digits")
    return label


def subject_label(subject: str) -> str:
    """The BIDS subject label of ``subject``, with a leading ``sub-`` dropped (``sub-01`` -> ``01``)."""
    text = str(subject)
    return bids_label(text[4:] if text.lower().startswith("sub-") else text, "subject label")


def parse_bids_name(name: str | Path) -> BidsName:
    """``sub-01_ses-pre_FLAIR.nii.gz`` -> entities {sub: 01, ses: pre}, suffix FLAIR, extension .nii.gz."""
    base = Path(name).name
    extension = next((e for e in (*NIFTI_EXTENSIONS, ".json", ".tsv") if base.lower().endswith(e)),
                     "." + base.split(".", 1)[1] if "." in base else "")
    stem = base[: len(base) - len(extension)]
    *pairs, suffix = stem.split("_")
    entities: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("-")
        if not sep or not key or not value or not re.fullmatch(r"[A-Za-z0-9]+", value) or key in entities:
            raise InputError(f"{base}: not a BIDS file name (expected sub-<label>[_<key>-<value>...]_<suffix>, "
                             f"and {pair!r} is not a key-value pair); pass the entities as a dict instead")
        entities[key] = value
    if "sub" not in entities or not suffix or "-" in suffix:
        raise InputError(f"{base}: not a BIDS file name (needs a sub-<label> entity and a suffix such as "
                         "_FLAIR); pass the entities as a dict instead")
    return BidsName(entities, suffix, extension)


def kaggle_entities(folder_name: str) -> dict[str, str]:
    """A Kaggle patient folder ``TCGA_CS_4941_19960909`` -> {sub: TCGACS4941, ses: 19960909}."""
    match = _KAGGLE_FOLDER.match(Path(folder_name).name)
    if match is None:
        raise InputError(f"{folder_name}: not a Kaggle patient folder name (<TCGA_XX_NNNN>_<yyyymmdd>); "
                         "name the BIDS subject yourself")
    return {"sub": subject_label(match["patient"]), "ses": match["date"]}


def source_entities_for(path: str | Path) -> dict[str, str]:
    """The entities a mask of ``path`` should carry: from its BIDS name, else from a Kaggle folder name."""
    path = Path(path)
    try:
        return parse_bids_name(path).entities
    except InputError:
        pass
    try:
        return kaggle_entities(path.name)
    except InputError:
        raise InputError(f"{path}: neither a BIDS file name (sub-<label>_..._<suffix>.nii.gz) nor a Kaggle patient "
                         "folder; name the BIDS subject yourself (e.g. --bids-subject)") from None


def derivative_name(entities: Mapping[str, str], *, desc: str = DESCRIPTION, suffix: str = SUFFIX,
                    extension: str = ".nii.gz") -> str:
    """File name with the entities in BIDS order, ``desc`` set, e.g. ``sub-01_ses-pre_desc-tumor_mask.nii.gz``."""
    values = {**{k: bids_label(v, f"{k} label") for k, v in entities.items()}, "desc": bids_label(desc)}
    unknown = [k for k in values if k not in ENTITY_ORDER]
    if unknown:
        raise InputError(f"{', '.join(unknown)}: not BIDS entities; use those of the specification "
                         f"({', '.join(ENTITY_ORDER)})")
    ordered = [f"{k}-{values[k]}" for k in ENTITY_ORDER if k in values]
    return "_".join(ordered) + f"_{suffix}{extension}"


def default_generated_by(*, code_url: str | None = CODE_URL, **extra: Any) -> dict[str, Any]:
    """This pipeline's GeneratedBy entry: Name lgg-unet, the installed version, CodeURL when known."""
    try:
        version = metadata.version("lgg-unet")
    except metadata.PackageNotFoundError:
        version = "unknown"
    entry: dict[str, Any] = {"Name": PIPELINE, "Version": version}
    if code_url:
        entry["CodeURL"] = code_url
    return {**entry, **extra}


def write_dataset_description(root: Path, entry: Mapping[str, Any], *, name: str | None = None,
                              source_datasets: Sequence[Mapping[str, Any]] = ()) -> Path:
    """``root/dataset_description.json`` for a derivative dataset; an existing one keeps its content and
    gains ``entry`` in GeneratedBy when no entry of the same Name and Version is there."""
    path = Path(root) / "dataset_description.json"
    if path.exists():
        try:
            description = json.loads(path.read_text())
        except ValueError as exc:
            raise InputError(f"{path}: not valid JSON ({exc}); fix or remove it") from None
        if description.get("DatasetType") != "derivative":
            raise InputError(f"{path}: DatasetType is {description.get('DatasetType')!r}, not 'derivative': this "
                             "is a raw dataset; write the masks under <dataset>/derivatives/lgg-unet instead")
        entries = description.setdefault("GeneratedBy", [])
        if any(e.get("Name") == entry.get("Name") and e.get("Version") == entry.get("Version") for e in entries):
            return path
        entries.append(dict(entry))
    else:
        description = {"Name": name or f"{PIPELINE} tumor masks", "BIDSVersion": BIDS_VERSION,
                       "DatasetType": "derivative", "GeneratedBy": [dict(entry)]}
        if source_datasets:
            description["SourceDatasets"] = [dict(s) for s in source_datasets]
    _write_json(path, description)
    return path


def write_derivative(root: str | Path, subject: str, mask: np.ndarray, affine: np.ndarray, *,
                     source_entities: Mapping[str, str] | str | Path | None = None,
                     generated_by: Mapping[str, Any] | None = None, sources: Sequence[str] | None = None,
                     model: Mapping[str, Any] | None = None, threshold: float | None = None,
                     extra: Mapping[str, Any] | None = None, header: nib.Nifti1Header | None = None,
                     dataset_name: str | None = None, overwrite: bool = False) -> DerivativeFiles:
    """Write one mask into the BIDS derivative dataset at ``root`` (module doc).

    ``mask`` is (S, H, W) 0/1 in the slice order of ``unet.predict`` (written as NIfTI (H, W, S)),
    ``affine`` the source image's voxel-to-world matrix. ``source_entities`` are the source image's
    entities, a dict or its BIDS file name; its ``sub`` must agree with ``subject``. ``sources`` go to
    the sidecar's Sources (default: the source file name, when one was given). ``header``, the
    source's NIfTI header, gives the xform codes; without one (or with codes 0) both are 1, scanner.
    ``generated_by`` is the GeneratedBy entry (default: ``default_generated_by()``). A mask or sidecar
    already there is replaced only with ``overwrite`` and only when this pipeline wrote it; another
    author's is never touched.
    """
    root = Path(root)
    entities, sources = _mask_entities(subject, source_entities, sources)
    mask, affine = _checked_mask(mask), _checked_affine(affine)
    folder = _anat_folder(root, entities)
    mask_path = folder / derivative_name(entities)
    sidecar_path = folder / derivative_name(entities, extension=".json")
    _check_replaceable([mask_path, sidecar_path], overwrite)
    entry = dict(generated_by) if generated_by is not None else default_generated_by()
    description_path = write_dataset_description(root, entry, name=dataset_name)
    _write_mask(mask_path, mask, affine, header)
    _write_json(sidecar_path, _sidecar(sources, model, threshold, extra))
    return DerivativeFiles(mask_path, sidecar_path, description_path)


def _ours(path: Path) -> bool:
    """Whether this pipeline wrote ``path``: its sidecar's Description, or its mask's header."""
    try:
        if path.suffix == ".json":
            return json.loads(path.read_text()).get("Description", "").startswith(SIDECAR_DESCRIPTION)
        return bytes(nib.load(path).header["descrip"]).decode(errors="replace").startswith(PIPELINE)
    except (OSError, ValueError, AttributeError, nib.filebasedimages.ImageFileError):
        return False


def _check_replaceable(paths: Sequence[Path], overwrite: bool) -> None:
    there = [path for path in paths if path.exists()]
    if there and not overwrite:
        raise InputError(f"{there[0]} exists: name another --bids folder, or pass --overwrite to replace an earlier "
                         "lgg-predict result there")
    foreign = [path for path in there if not _ours(path)]
    if foreign:
        raise InputError(f"{foreign[0]} exists and was not written by {PIPELINE}: it is kept even with --overwrite; "
                         "name another --bids folder")


def _mask_entities(subject: str, source_entities: Mapping[str, str] | str | Path | None,
                   sources: Sequence[str] | None) -> tuple[dict[str, str], Sequence[str] | None]:
    """The mask's entities (``sub`` first, the source's ``desc`` dropped) and its Sources: the source
    file name by default, when ``source_entities`` is one."""
    label = subject_label(subject)
    if isinstance(source_entities, (str, Path)):
        source_name = Path(source_entities).name
        entities = dict(parse_bids_name(source_entities).entities)
        sources = [source_name] if sources is None else sources
    else:
        entities = dict(source_entities or {})
    given = entities.pop("sub", None)
    if given is not None and subject_label(given) != label:
        raise InputError(f"source entities name subject {given!r} but the subject is {subject!r} ({label}); "
                         "give the source image of this subject")
    entities.pop("desc", None)
    return {"sub": label, **entities}, sources


def _anat_folder(root: Path, entities: Mapping[str, str]) -> Path:
    """``<root>/sub-<label>/[ses-<label>/]anat``: the session level only when the name has a session."""
    session = f"ses-{bids_label(entities['ses'])}" if "ses" in entities else ""
    return root / f"sub-{entities['sub']}" / session / "anat"


def _checked_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 3 or not np.isin(mask, (0, 1)).all():
        raise InputError(f"expected a (slices, height, width) 0/1 mask, got {mask.dtype} {mask.shape}")
    return mask


def _checked_affine(affine: np.ndarray) -> np.ndarray:
    affine = np.asarray(affine, np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"expected the source image's 4x4 voxel-to-world affine, got {affine.tolist()}")
    return affine


def _write_mask(path: Path, mask: np.ndarray, affine: np.ndarray, header: nib.Nifti1Header | None) -> None:
    """The (S, H, W) mask as uint8 NIfTI (H, W, S) on ``affine``, xform codes from ``header`` (else scanner)."""
    image = nib.Nifti1Image(np.ascontiguousarray(stack_to_nifti(mask.astype(np.uint8))), affine)
    codes = (int(header["qform_code"]), int(header["sform_code"])) if header is not None else (0, 0)
    image.header.set_qform(affine, code=codes[0] or SCANNER)
    image.header.set_sform(affine, code=codes[1] or SCANNER)
    image.header.set_xyzt_units("mm")
    image.header["descrip"] = f"{PIPELINE} {DESCRIPTION} mask"[:79]
    image.header["cal_min"], image.header["cal_max"] = 0.0, 1.0
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as handle:
        handle.write(image.to_bytes() if not path.name.endswith(".gz") else _gzip(image.to_bytes()))


def _sidecar(sources: Sequence[str] | None, model: Mapping[str, Any] | None, threshold: float | None,
             extra: Mapping[str, Any] | None) -> dict[str, Any]:
    sidecar: dict[str, Any] = {"Description": f"{SIDECAR_DESCRIPTION} (research use only, not a medical device)",
                               "Type": "Lesion", "Sources": list(sources or [])}
    if model is not None:
        sidecar["Model"] = dict(model)
    if threshold is not None:
        sidecar["Threshold"] = float(threshold)
    sidecar.update(extra or {})
    return sidecar


def _gzip(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data, compresslevel=6, mtime=0)  # mtime 0: the same mask, the same bytes


def _write_json(path: Path, content: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "w") as handle:
        handle.write(json.dumps(content, indent=2) + "\n")
