"""The process beside the project's Prefect server: it runs ``prefect server start`` and stops it when
no client has used it for ``idle_minutes`` (``python -m flows.server run``, spawned by
``tasks.project_server.ensure``; the files it reads are described there).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from tasks.project_server import CLIENTS, KEEP, LAST_CLIENT, STATE, clients, locked, running
from tasks.server import server_command, server_environment


def _idle_for(home: Path, since: float) -> float:
    last = home / CLIENTS / LAST_CLIENT
    left = last.stat().st_mtime if last.exists() else 0.0
    return time.time() - max(since, left)


def _terminate(process: subprocess.Popen, timeout_s: float = 20.0) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def supervise(home: Path, port: int, *, idle_minutes: float, python: str = sys.executable,
              environ: Mapping[str, str] = os.environ, poll_s: float = 2.0) -> int:
    """Run ``prefect server start`` and stop it when idle (or on SIGTERM); returns its exit status.

    The server stays in the supervisor's process group (``spawn`` made it a session of its own), so
    ``stop`` can end both at once if the supervisor does not answer."""
    server = subprocess.Popen(server_command(python, port), env=server_environment(port, home, environ),
                              stdin=subprocess.DEVNULL)
    stopping = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stopping.append(True))
    busy_since = time.time()
    try:
        while not stopping and server.poll() is None:
            time.sleep(poll_s)
            if clients(home) or (home / KEEP).exists() or idle_minutes <= 0:
                busy_since = time.time()
            elif _idle_for(home, busy_since) > idle_minutes * 60:
                with locked(home, lambda _: None, "stop its Prefect server"):
                    if not clients(home):  # checked again under the lock: a stage may have come meanwhile
                        if running(home) and running(home).pid == os.getpid():
                            (home / STATE).unlink(missing_ok=True)
                        print(f"no client for {idle_minutes:g} minutes: stopping", flush=True)
                        break
    finally:
        _terminate(server)
    return server.returncode or 0
