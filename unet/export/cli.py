"""``lgg-export``: a checkpoint to ONNX and TorchScript, checked against PyTorch on a scan, with a model card.

``lgg-export --model models/best.pt --output exports/`` writes ``model.onnx``,
``model.torchscript.pt``, ``MODEL_CARD.md`` and, with ``--check SCAN``, ``export_check.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from unet.cards.model import CARD_NAME, fmt, read_checkpoint_meta, read_metrics, sci, write_model_card
from unet.config import PipelineConfig
from unet.errors import UserError
from unet.export.check import MAX_PROBABILITY_DIFF, MIN_MASK_AGREEMENT, ExportCheck, check_export
from unet.export.graphs import export_onnx, export_torchscript

ONNX_NAME, TORCHSCRIPT_NAME, CHECK_NAME = "model.onnx", "model.torchscript.pt", "export_check.json"


def build_parser(defaults: PipelineConfig | None = None) -> argparse.ArgumentParser:
    """The command line; ``defaults`` (the config's defaults when None) names the stages' files in the help."""
    defaults = defaults or PipelineConfig()
    parser = argparse.ArgumentParser(
        prog="lgg-export", description="Export a trained lgg-unet checkpoint to ONNX and TorchScript, check them "
                                       "against PyTorch and write a model card.")
    parser.add_argument("--model", type=Path, required=True, metavar="PATH",
                        help=f"checkpoint (e.g. {defaults.train.best_path})")
    parser.add_argument("--output", type=Path, required=True, metavar="DIR",
                        help=f"folder for {ONNX_NAME}, {TORCHSCRIPT_NAME}, {CARD_NAME} and {CHECK_NAME}")
    parser.add_argument("--no-onnx", dest="onnx", action="store_false", help="skip the ONNX file")
    parser.add_argument("--no-torchscript", dest="torchscript", action="store_false", help="skip TorchScript")
    parser.add_argument("--static", action="store_true", help="fixed batch and size in the ONNX graph")
    parser.add_argument("--image-size", type=int, default=None, metavar="PX",
                        help="input size (default: the checkpoint's preprocess image_size)")
    parser.add_argument("--check", type=Path, nargs="+", metavar="PATH",
                        help="a scan, as lgg-predict --input takes it, to compare eager PyTorch, TorchScript and "
                             f"onnxruntime on; writes {CHECK_NAME}, exit 1 when they disagree")
    parser.add_argument("--metrics", type=Path, default=None, metavar="JSON",
                        help=f"{defaults.evaluate.metrics_path} for the card")
    parser.add_argument("--per-patient", type=Path, default=None, metavar="CSV",
                        help=f"{defaults.evaluate.per_patient_path}, for the per-volume DSC spread on the card")
    parser.add_argument("--cv", type=Path, default=None, metavar="JSON",
                        help='cross-validation results for the card: {"dsc": [...], "figure": "cv.png"}')
    parser.add_argument("--no-card", dest="card", action="store_false", help=f"skip {CARD_NAME}")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def _export(args: argparse.Namespace) -> tuple[list[Path], ExportCheck | None]:
    """The files ``args`` ask for, written under ``args.output``; the check when one was asked for."""
    out: Path = args.output
    onnx_path = export_onnx(args.model, out / ONNX_NAME, dynamic=not args.static,
                            image_size=args.image_size) if args.onnx else None
    ts_path = export_torchscript(args.model, out / TORCHSCRIPT_NAME,
                                 image_size=args.image_size) if args.torchscript else None
    written = [p for p in (onnx_path, ts_path) if p]
    if args.card:
        metrics = read_metrics(args.metrics, args.per_patient) if args.metrics else {}
        cv = json.loads(args.cv.read_text()) if args.cv else None
        written.append(write_model_card(out / CARD_NAME, checkpoint_meta=read_checkpoint_meta(args.model),
                                        metrics=metrics, cv=cv))
    check = None
    if args.check:
        from unet.predict.scan import read_scan

        check = check_export(args.model, onnx_path, ts_path, read_scan(args.check).images)
        (out / CHECK_NAME).write_text(json.dumps(check.as_dict(), indent=2) + "\n")
        written.append(out / CHECK_NAME)
    return written, check


def _report_check(check: ExportCheck) -> int:
    print(f"check on {check.slices} slices: max |p - eager| TorchScript {sci(check.max_diff_torchscript)}, "
          f"ONNX {sci(check.max_diff_onnx)}; mask agreement TorchScript "
          f"{fmt(check.mask_agreement_torchscript, 5)}, ONNX {fmt(check.mask_agreement_onnx, 5)}")
    if not check.passed():
        print(f"lgg-export: error: the exported model disagrees with PyTorch beyond {MAX_PROBABILITY_DIFF} "
              f"or below {MIN_MASK_AGREEMENT} mask agreement", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        written, check = _export(args)
    except (UserError, OSError) as exc:
        print(f"lgg-export: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(p.name for p in written)} to {args.output}")
    return _report_check(check) if check is not None else 0


if __name__ == "__main__":
    raise SystemExit(main())
