"""The project's Prefect server (``tasks.project_server``; locked down as ``tasks.server`` says).

    python -m flows.server start [--port 4200] [--keep] [--no-auth]   # unless it runs; prints its UI, API
    python -m flows.server status
    python -m flows.server stop
    python -m flows.server run --port P --home DIR --idle-minutes N   # the supervisor ``start`` spawns
    python -m flows.server [--port 4200] [--home DIR]     # a server in the foreground, nothing else
A stage without ``PREFECT_API_URL`` starts it; ``make ui`` runs ``start --keep`` (auth: ``.prefect/auth``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tasks import project_server, server_supervisor
from tasks.server import server_command, server_environment

REPO = Path(__file__).resolve().parents[1]


def home() -> Path:  # <project>/.prefect, or PREFECT_HOME
    return project_server.project_home(Path.cwd(), os.environ)


def start(args: argparse.Namespace) -> int:
    project_server.ensure(home(), code_dir=REPO, port=args.port, keep=args.keep, client=False, auth=not args.no_auth,
                          say=lambda line: print(line, file=sys.stderr))
    return status(args)


def status(_: argparse.Namespace) -> int:
    print(project_server.describe(home()))
    return 0 if project_server.running(home()) else 1


def stop(_: argparse.Namespace) -> int:
    print("stopped the project's Prefect server" if project_server.stop(home())
          else f"no project Prefect server ran (home {home()})")
    return 0


def run(args: argparse.Namespace) -> int:
    return server_supervisor.supervise(args.home, args.port, idle_minutes=args.idle_minutes)


def foreground(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=4200)
    parser.add_argument("--home", type=Path, default=REPO / ".prefect", help="PREFECT_HOME (default: .prefect/)")
    args = parser.parse_args(argv)
    args.home.mkdir(parents=True, exist_ok=True)
    command = server_command(sys.executable, args.port)
    os.execve(command[0], command, server_environment(args.port, args.home))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("start", "status", "stop", "run"):
        return foreground(argv)  # exec: it does not return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    begin = commands.add_parser("start", help="start the project's server unless it runs")
    begin.add_argument("--port", type=int, default=None, help="start on this port when it is free")
    begin.add_argument("--keep", action="store_true", help="never stop when idle (until `stop`)")
    begin.add_argument("--no-auth", action="store_true", help="no auth string (any local user can reach the API)")
    for name, about in (("status", "where the project's server runs"), ("stop", "stop the project's server")):
        commands.add_parser(name, help=about)
    supervisor = commands.add_parser("run", help="the supervisor that `start` spawns")
    supervisor.add_argument("--port", type=int, required=True)
    supervisor.add_argument("--home", type=Path, required=True)
    supervisor.add_argument("--idle-minutes", type=float, default=project_server.IDLE_MINUTES)
    args = parser.parse_args(argv)
    return {"start": start, "status": status, "stop": stop, "run": run}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
