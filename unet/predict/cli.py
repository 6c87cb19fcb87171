"""``lgg-predict``: segment one new patient's scan with a trained checkpoint.

    lgg-predict --model models/best.pt --input PATIENT_FOLDER --output predictions/PATIENT
    lgg-predict --model models:/lgg-unet@champion --input PATIENT_FOLDER --output predictions/PATIENT
    python -m unet.predict.cli --model models/best.pt --input pre.nii.gz flair.nii.gz post.nii.gz --output out

The scan goes through ``unet.predict.segmenter.Segmenter`` (the checkpoint's own preprocessing, the
network, the way back to the input's grid, threshold and largest 3-D component), or the fold models'
``EnsembleSegmenter`` (a registered ``lgg-unet-cv``; ``unet.predict.models`` loads either, a checkpoint
or a registered model). DIR receives ``mask.nii.gz``, ``overlays/slice_<n>.png`` and ``summary.json``,
all written in a staging folder beside DIR and moved in at the end, so a failed run leaves DIR as it
was. Bad input exits with status 2 and one line naming the file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unet.device import DEVICES, select_device
from unet.errors import EnvironmentMismatch, InputError, UserError
from unet.io.atomic import staging_dir
from unet.metrics import most_tumour_slices
from unet.predict.ensemble import EnsembleSegmenter
from unet.predict.models import load_model
from unet.predict.registry import is_model_uri
from unet.predict.scan import caption, read_scan, write_mask, write_overlay
from unet.predict.segmenter import Segmenter
from unet.predict.volume import Scan

log = logging.getLogger(__name__)

MASK_NAME = "mask.nii.gz"
SUMMARY_NAME = "summary.json"
OVERLAY_DIR = "overlays"
OVERLAY_NAME = re.compile(rf"{OVERLAY_DIR}/slice_[0-9]{{1,4}}\.png")  # what this command names its overlays
N_OVERLAYS = 6
SINGLE_SLICE_WARNING = (
    "%s is a single slice: the preprocessing crops, clips and z-scores over the whole volume, so one "
    "slice is normalised on itself and the result is less reliable than on a whole volume; give the "
    "patient's folder or NIfTI volume when you have it"
)


@dataclass
class PredictOptions:
    model: Path | str  # a checkpoint, or a models:/ or runs:/ URI
    inputs: list[Path]
    output: Path
    device: str = "auto"
    tta: bool = False
    threshold: float | None = None  # None: the checkpoint's own
    largest_component: bool | None = None  # None: the checkpoint's rule (decided on its validation volumes)
    all_overlays: bool = False
    overwrite: bool = False  # replace an earlier lgg-predict result in --output
    flair_series: str | None = None  # DICOM: SeriesNumber, SeriesInstanceUID or description substring
    pre_series: str | None = None  # ... or "none": FLAIR stands in
    post_series: str | None = None
    resample: bool = False  # DICOM: resample pre/post onto FLAIR's grid when they lie on another
    bids: Path | None = None  # also write the mask into this BIDS derivative dataset
    bids_subject: str | None = None
    bids_session: str | None = None


def resolve_device(name: str) -> torch.device:
    if name not in DEVICES:
        raise InputError(f"--device {name}: choose {', '.join(DEVICES)}")
    try:
        return select_device(name)
    except EnvironmentMismatch:
        raise InputError("--device cuda: torch sees no CUDA device here; use --device auto or --device cpu") from None


def load_segmenter(options: PredictOptions, scratch: Path) -> tuple[Segmenter | EnsembleSegmenter, dict[str, Any]]:
    """``options.model`` as a segmenter, and what ``summary.json`` says of it (``unet.predict.models``)."""
    return load_model(options.model, scratch, device=resolve_device(options.device), tta=options.tta,
                      threshold=options.threshold)


def predict(options: PredictOptions) -> dict[str, Any]:
    """Read, segment and write one scan; returns the summary that ``summary.json`` holds."""
    started = time.perf_counter()
    check_output(Path(options.output).resolve(), options.overwrite)  # before the work, not after it
    scan = read_scan(options.inputs, series={"flair": options.flair_series, "pre": options.pre_series,
                                             "post": options.post_series}, resample=options.resample)
    warnings = list(getattr(scan, "warnings", []))  # a DICOM study's stand-ins and resampling
    if scan.images.shape[0] == 1:
        log.warning(SINGLE_SLICE_WARNING, scan.sources[0])
        warnings.append(SINGLE_SLICE_WARNING % scan.sources[0])
    with tempfile.TemporaryDirectory(prefix="lgg-predict-model-") as scratch:
        segmenter, model = load_segmenter(options, Path(scratch))
    read_s = time.perf_counter() - started
    mask = segmenter.segment(scan.images, largest_component=options.largest_component)
    segment_s = time.perf_counter() - started - read_s
    shown = range(len(mask)) if options.all_overlays else most_tumour_slices(mask, count=N_OVERLAYS)
    overlays = {f"{OVERLAY_DIR}/slice_{scan.slice_numbers[k]:03d}.png": k for k in shown}
    summary = summarise(scan, mask, segmenter, model, options, list(overlays), warnings)
    if options.bids is not None:
        summary["bids_mask"] = str(write_bids(options, scan, mask, segmenter, summary))
    write_outputs(options.output, scan, mask, summary, overlays, overwrite=options.overwrite)
    log.info("read %.2f s, segment %.2f s, write %.2f s", read_s, segment_s,
             time.perf_counter() - started - read_s - segment_s)
    return summary


def summarise(scan: Scan, mask: np.ndarray, segmenter: Segmenter | EnsembleSegmenter, model: dict[str, Any],
              options: PredictOptions, overlays: list[str], warnings: list[str]) -> dict[str, Any]:
    per_slice = mask.reshape(len(mask), -1).sum(axis=1)
    voxels = int(per_slice.sum())
    return {
        "input": [str(p) for p in scan.sources],
        "input_kind": scan.kind,
        "model": model,
        "device": str(segmenter.device),
        "tta": segmenter.tta,
        "threshold": segmenter.threshold,
        "largest_component": segmenter.largest_component if options.largest_component is None
        else options.largest_component,
        "shape": [int(mask.shape[1]), int(mask.shape[2]), int(mask.shape[0])],  # NIfTI (H, W, S)
        "spacing_mm": list(scan.spacing) if scan.has_geometry else None,
        "slices": int(len(mask)),
        "tumour_slices": int((per_slice > 0).sum()),
        "tumour_slice_numbers": [scan.slice_numbers[k] for k in np.flatnonzero(per_slice)],
        "tumour_voxels": voxels,
        "tumour_volume_ml": voxels * float(np.prod(scan.spacing)) / 1000 if scan.has_geometry else None,
        "intensities_scaled": scan.scaled,
        "dicom_series": getattr(scan, "series", None),  # role -> SeriesNumber, description, UID; None: FLAIR stood in
        "warnings": warnings,
        "mask": MASK_NAME,
        "overlays": overlays,
    }


def write_bids(options: PredictOptions, scan: Scan, mask: np.ndarray, segmenter: Segmenter,
               summary: dict[str, Any]) -> Path:
    """The mask as a BIDS derivative under ``options.bids``: subject (and session) from --bids-subject
    (--bids-session), else from the input's BIDS file name or Kaggle folder name."""
    from unet.io.bids import source_entities_for, write_derivative

    source = scan.sources[1] if scan.kind == "nifti-channels" else scan.sources[0]  # FLAIR's file
    if options.bids_subject:
        entities = {"sub": options.bids_subject}
    elif scan.kind == "dicom":  # PatientID may be a hospital number: never put it in a file name unasked
        raise InputError(f"{source}: --bids needs --bids-subject LABEL for DICOM input")
    else:
        entities = dict(source_entities_for(source))  # InputError asking for --bids-subject when neither
    if options.bids_session:
        entities["ses"] = options.bids_session
    files = write_derivative(  # file names only: a folder can carry a hospital's or a patient's name
        options.bids, entities["sub"], mask, scan.affine, source_entities=entities,
        sources=[Path(p).name for p in scan.sources], header=scan.header, threshold=segmenter.threshold,
        model={"path": model_name(summary["model"]["path"]), "sha256": summary["model"]["sha256"],
               "config": summary["model"]["config"], "image_size": segmenter.image_size},
        extra={"LargestComponent": summary["largest_component"], "TTA": segmenter.tta, "InputKind": scan.kind},
        overwrite=options.overwrite)
    return files.mask


def model_name(path: str) -> str:
    """A model as a BIDS sidecar names it: a registry URI as it is, a file by its name (no folder)."""
    return path if is_model_uri(path) else Path(path).name


def earlier_outputs(output: Path) -> list[Path]:
    """The files an earlier lgg-predict wrote to ``output``: all it may replace. Only names this command
    writes count (the mask, ``overlays/slice_<n>.png``, the summary), whatever else a ``summary.json``
    lists: a summary naming ``../x`` or an absolute path deletes nothing outside."""
    summary = output / SUMMARY_NAME
    try:
        listed = json.loads(summary.read_text())
    except (OSError, ValueError):
        return []
    overlays = listed.get("overlays", []) if isinstance(listed, dict) else []
    names = [MASK_NAME, *(n for n in overlays if isinstance(n, str) and OVERLAY_NAME.fullmatch(n))]
    return [output / name for name in names] + [summary]


def check_output(output: Path, overwrite: bool) -> None:
    """``--output`` must be a new or empty folder, or, with ``--overwrite``, hold an earlier result."""
    if output.exists() and not output.is_dir():
        raise InputError(f"{output}: --output exists and is not a folder; name a folder")
    entries = sorted(p.name for p in output.iterdir()) if output.is_dir() else []
    if entries and not overwrite:
        raise InputError(f"{output}: --output is not empty ({len(entries)} entries, e.g. {entries[0]}); name a "
                         "new folder, or pass --overwrite to replace an earlier lgg-predict result in it "
                         "(nothing else there is touched)")


def write_outputs(output: Path, scan: Scan, mask: np.ndarray, summary: dict[str, Any],
                  overlays: dict[str, int], *, overwrite: bool = False) -> None:
    """Write everything into a staging folder beside ``output``, then move it in (summary last).

    Only files this command writes are ever replaced or removed (an earlier result's, as its
    summary lists them); a user's own files in ``output`` are left alone.
    """
    output = Path(output).resolve()
    check_output(output, overwrite)
    with staging_dir(output) as staging:
        (staging / OVERLAY_DIR).mkdir()
        write_mask(staging / MASK_NAME, mask, scan, description=f"lgg-unet prediction, {scan.kind} input")
        for name, k in overlays.items():
            write_overlay(staging / name, scan.images[k], mask[k], caption(scan, k, mask))
        (staging / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")
        for old in earlier_outputs(output):
            old.unlink(missing_ok=True)
        (output / OVERLAY_DIR).mkdir(parents=True, exist_ok=True)
        for name in [MASK_NAME, *overlays, SUMMARY_NAME]:
            os.replace(staging / name, output / name)


def one_line(summary: dict[str, Any], output: Path) -> str:
    volume = f" ({summary['tumour_volume_ml']:.2f} mL)" if summary["tumour_volume_ml"] is not None else ""
    return (f"{Path(summary['input'][0]).name}: tumour in {summary['tumour_slices']} of {summary['slices']} "
            f"slices, {summary['tumour_voxels']} voxels{volume}; wrote {MASK_NAME}, "
            f"{len(summary['overlays'])} overlays and {SUMMARY_NAME} to {output}")


def _threshold(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text}: the threshold must lie strictly between 0 and 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lgg-predict", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Segment lower-grade-glioma FLAIR abnormality in one patient's brain MRI.",
        epilog=f"writes to DIR: {MASK_NAME} (0/1 mask on the input's grid), {OVERLAY_DIR}/slice_<n>.png "
               f"(FLAIR with the\npredicted outline in red) and {SUMMARY_NAME} (tumour voxels, mL when the "
               "NIfTI has a real spacing,\nslices with tumour, input kind, model); prints a one-line "
               "summary. Exit status 2 on bad input.")
    parser.add_argument("--model", required=True, metavar="PATH|URI",
                        help="a checkpoint written by the train stage (e.g. models/best.pt), or a registered model: "
                             "models:/lgg-unet@champion, models:/lgg-unet-cv@champion (the fold ensemble), "
                             "models:/NAME/VERSION, runs:/RUN_ID/NAME, from MLFLOW_TRACKING_URI's store, else this "
                             "checkout's mlflow.db")
    parser.add_argument(
        "--input", type=Path, nargs="+", required=True, metavar="PATH", dest="inputs",
        help="a patient folder in the Kaggle layout (<patient>_<n>.tif RGB slices, read in integer order "
             "of <n>; masks ignored), a 4-D NIfTI (height x width x slices x 3: pre-contrast, FLAIR, "
             "post-contrast), three 3-D NIfTI files in that order (--input pre.nii.gz flair.nii.gz "
             "post.nii.gz), or one RGB .tif/.png slice (less reliable: the normalisation needs the whole "
             "volume). uint8 intensities are used as they are; any other numeric type is scaled to 0..255, "
             "each sequence over the whole volume from its minimum to its maximum")
    parser.add_argument("--output", type=Path, required=True, metavar="DIR",
                        help="folder for the results: a new or empty folder (see --overwrite)")
    parser.add_argument("--overwrite", action="store_true",
                        help="--output may hold an earlier lgg-predict result: replace its files (and only those)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the network runs: auto picks CUDA when torch sees a GPU (default: auto)")
    parser.add_argument("--tta", action="store_true",
                        help="average with the prediction of the horizontally flipped slices (twice the time)")
    parser.add_argument("--threshold", type=_threshold, default=None, metavar="P",
                        help="a voxel is tumour when its probability exceeds P, in (0, 1) "
                             "(default: the checkpoint's, 0.5 for the reference recipe)")
    keep = parser.add_mutually_exclusive_group()
    keep.add_argument("--largest-component", dest="largest_component", action="store_const", const=True,
                      default=None, help="keep only the largest 3-D connected region (default: what the model's "
                                         "training decided on its validation volumes)")
    keep.add_argument("--no-largest-component", dest="largest_component", action="store_const", const=False,
                      help="keep every predicted region, not only the largest 3-D connected one")
    parser.add_argument("--all-overlays", action="store_true",
                        help=f"one overlay a slice, not only the {N_OVERLAYS} slices with the most tumour")
    dicom = parser.add_argument_group("DICOM input (--input FOLDER holding one study's DICOM files)")
    for role, name in (("flair", "FLAIR"), ("pre", "pre-contrast"), ("post", "post-contrast")):
        dicom.add_argument(f"--{role}-series", metavar="SERIES", default=None,
                           help=f"the {name} series: its SeriesNumber, SeriesInstanceUID or a SeriesDescription/"
                                "ProtocolName substring" + ("" if role == "flair" else "; 'none': FLAIR stands in")
                                + " (default: picked by description keywords, see unet/predict/dicom.py)")
    dicom.add_argument("--resample", action="store_true",
                       help="resample pre/post-contrast series that lie on another grid onto FLAIR's, by scanner "
                            "coordinates (trilinear, no registration); default: refuse them")
    bids = parser.add_argument_group("BIDS derivative output")
    bids.add_argument("--bids", type=Path, default=None, metavar="DIR",
                      help="also write the mask as sub-<label>[_ses-<label>]..._desc-tumor_mask.nii.gz with a JSON "
                           "sidecar into the BIDS derivative dataset DIR (e.g. <bids>/derivatives/lgg-unet)")
    bids.add_argument("--bids-subject", metavar="LABEL", default=None,
                      help="BIDS subject label (non-alphanumerics dropped: TCGA_CS_4941 -> TCGACS4941); default: "
                           "from a BIDS-named input or a Kaggle folder name; required for DICOM")
    bids.add_argument("--bids-session", metavar="LABEL", default=None, help="BIDS session label")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and stage timings")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) and usage errors (2) as a return value, like every other outcome
        return int(exc.code or 0)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    options = PredictOptions(args.model, args.inputs, args.output, args.device, args.tta, args.threshold,
                             args.largest_component, args.all_overlays, args.overwrite,
                             flair_series=args.flair_series, pre_series=args.pre_series,
                             post_series=args.post_series, resample=args.resample, bids=args.bids,
                             bids_subject=args.bids_subject, bids_session=args.bids_session)
    try:
        summary = predict(options)
    except (UserError, OSError) as exc:  # what the user can fix; anything else is a bug and keeps its traceback
        print(f"lgg-predict: error: {exc}", file=sys.stderr)
        return 2
    print(one_line(summary, args.output))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
