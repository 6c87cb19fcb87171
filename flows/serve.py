"""``python -m flows.serve`` is ``lgg-serve`` (``unet/serve/cli.py``), the console script that works from any
folder: a trained model behind a bounded ``/invocations``.

    python -m flows.serve --model models:/lgg-unet@champion --port 5001 --max-mb 64
    curl -X POST localhost:5001/invocations -H 'Content-Type: application/x-npy' --data-binary @slices.npy
"""

from __future__ import annotations

import sys

from unet.serve.cli import main

if __name__ == "__main__":
    sys.exit(main())
