"""``lgg-serve``: a trained model behind a bounded HTTP ``/invocations``, from any folder.

    lgg-serve --model models:/lgg-unet@champion --port 5001
    lgg-serve --model models/best.pt --port 5001 --max-mb 64
    curl -X POST localhost:5001/invocations -H 'Content-Type: application/x-npy' --data-binary @slices.npy

The model is a checkpoint or a registered model (``unet.predict.models``: the train stage's, or the
fold ensemble ``lgg-unet-cv``), run by its ``Segmenter`` as ``lgg-predict`` and the MLflow pyfunc run
it: raw (N, H, W, 3) uint8 slices in, the (N, H, W) 0/1 mask out. The app and its bounds:
``unet.serve.app``. Bad arguments exit with status 2 and one line.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from unet.device import DEVICES
from unet.errors import UserError
from unet.predict.cli import resolve_device
from unet.predict.models import load_model
from unet.predict.segmenter import as_slices
from unet.serve.app import create_app

MB = 1024 * 1024
HOST = "127.0.0.1"


class SegmenterModel:
    """A segmenter with the ``predict`` the app calls: raw slices in, the mask out (an InputError for
    input that is not raw slices, which the app answers with 400)."""

    def __init__(self, segmenter) -> None:
        self.segmenter = segmenter

    def predict(self, slices) -> np.ndarray:
        return self.segmenter.segment(as_slices(slices))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lgg-serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models:/lgg-unet@champion", metavar="PATH|URI",
                        help="a checkpoint, or a registered model from MLFLOW_TRACKING_URI's store, else the "
                             "checkout's mlflow.db (default: models:/lgg-unet@champion)")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--max-mb", type=float, default=64.0, help="the largest request body, in MB")
    parser.add_argument("--max-total-mb", type=float, default=None,
                        help="what all requests may hold at once, in MB (default 8 x --max-mb: 4 bodies and their "
                             "arrays)")
    parser.add_argument("--max-waiting", type=int, default=4,
                        help="requests that may wait while one prediction runs; the next get 503")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    import uvicorn

    try:
        with tempfile.TemporaryDirectory(prefix="lgg-serve-model-") as scratch:
            segmenter, described = load_model(args.model, Path(scratch), device=resolve_device(args.device))
    except UserError as exc:
        print(f"lgg-serve: error: {exc}", file=sys.stderr)
        return 2
    app = create_app(SegmenterModel(segmenter), max_bytes=int(args.max_mb * MB),
                     max_total_bytes=int(args.max_total_mb * MB) if args.max_total_mb else None,
                     max_waiting=args.max_waiting)
    print(f"lgg-serve: {described['path']} on http://{HOST}:{args.port}/invocations", file=sys.stderr)
    uvicorn.run(app, host=HOST, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
