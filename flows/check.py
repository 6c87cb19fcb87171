"""The ``check`` stage: params.yaml and the servers the stages talk to, before any stage runs.

Every stage depends on this stage's output, so ``dvc repro`` runs it first whenever params.yaml
changed: a typo, a duplicate key or an MLflow/Prefect server that does not answer is one line here,
before DVC removes any other stage's outputs. Its output never changes (it reruns nothing).
No Prefect run: it starts in a second.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tasks import project_server
from tasks.server import check_prefect_api
from tasks.tracking import check_store
from unet.config import load_config
from unet.errors import UserError
from unet.io.atomic import atomic_file

STAMP = "params.yaml and the servers checked; this file never changes, so it reruns nothing\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    try:
        config = load_config(args.params)
        check_store(config.mlflow)
        url = os.environ.get("PREFECT_API_URL")
        home = project_server.project_home(Path.cwd(), os.environ)
        check_prefect_api(url, project_server.client_auth(url, home, os.environ))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    with atomic_file(config.checked_path, "w") as handle:
        handle.write(STAMP)
    return 0


if __name__ == "__main__":
    sys.exit(main())
