"""Serve a registered model, bounded and compact: ``python -m flows.serve [--model URI] [--port 5001]``.

    python -m flows.serve --model models:/lgg-unet@champion --port 5001 --max-mb 64
    curl -X POST localhost:5001/invocations -H 'Content-Type: application/x-npy' --data-binary @slices.npy

See ``tasks.serving`` (JSON as ``mlflow models serve`` takes it, or a .npy body; 413 past the bound
on one body, 503 with Retry-After past the bounds on waiting requests and on bytes held at once).
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models:/lgg-unet@champion", help="an MLflow model URI")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--max-mb", type=float, default=64.0, help="the largest request body, in MB")
    parser.add_argument("--max-total-mb", type=float, default=None,
                        help="what all requests may hold at once, in MB (default 8 x --max-mb: 4 bodies and their arrays)")
    parser.add_argument("--max-waiting", type=int, default=4,
                        help="requests that may wait while one prediction runs; the next get 503")
    args = parser.parse_args(argv)
    import mlflow
    import uvicorn

    from tasks.serving import create_app
    from tasks.tracking import use_store
    from unet.config import MlflowConfig

    use_store(MlflowConfig())  # the repository's store unless MLFLOW_TRACKING_URI says otherwise
    mb = 1024 * 1024
    app = create_app(mlflow.pyfunc.load_model(args.model), max_bytes=int(args.max_mb * mb),
                     max_total_bytes=int(args.max_total_mb * mb) if args.max_total_mb else None,
                     max_waiting=args.max_waiting)
    uvicorn.run(app, host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
