"""``make ui``'s Prefect server: ``python -m flows.server [--port 4200]`` (see ``tasks.server``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tasks.server import server_command, server_environment

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=4200)
    parser.add_argument("--home", type=Path, default=REPO / ".prefect", help="PREFECT_HOME (default: .prefect/)")
    args = parser.parse_args(argv)
    args.home.mkdir(parents=True, exist_ok=True)
    command = server_command(sys.executable, args.port)
    os.execve(command[0], command, server_environment(args.port, args.home))


if __name__ == "__main__":
    main()
