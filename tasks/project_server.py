"""The project's own Prefect server: the first stage that needs one starts it, the next ones reuse it.

Without ``PREFECT_API_URL`` every Prefect process starts a temporary server of its own: 8-20 s a
stage, and on a busy machine it misses Prefect's start-up limit and the stage dies. Instead the
stages, the pipeline flow, ``make deploy`` and the tests share one server a project, whose files
live in the project's Prefect home (``<project>/.prefect/``, or ``PREFECT_HOME`` when set):

    server.json     pid (of the supervisor, ``python -m flows.server run``: ``tasks.server_supervisor``),
                    port and API URL
    server.lock     held while a process looks for the server or starts it: stages started at
                    once start one server, not three
    server.log      what the server printed
    auth            the server's auth string (user:token, mode 0600): ``make ui`` makes a random one
                    and prints it once; every server of this home then asks for it, and the stages,
                    ``make deploy`` and the workers they start send it (``reporting``)
    clients/<pid>   one file a process using the server; the supervisor stops the server when no
                    client is left and none came for ``idle_minutes`` (never while ``server.keep``
                    exists: ``make ui``)

Two clones have two homes, so two servers on two free ports: they do not clash. A DVC experiment's
temporary copy (``.dvc/tmp/exps/...``) uses the server of the repository it was copied from.
Nothing here imports Prefect: a stage finds its server before it pays for that import.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from tasks.server import AUTH_FILE, HOST, answers, asks_for_auth, check_prefect_api, make_auth, stored_auth
from unet.errors import EnvironmentMismatch

STATE, LOCK, LOG, CLIENTS, KEEP = "server.json", "server.lock", "server.log", "clients", "server.keep"
LAST_CLIENT = ".last"  # touched when a client leaves: the idle time counts from then
IDLE_MINUTES = 15
START_WAIT_S = 900  # a stage waits this long for a server that is still starting (a busy machine: minutes)
SAY_EVERY_S = 10
STARTS = 3  # another process may take the free port first: try that many ports

Say = Callable[[str], None]


@dataclass(frozen=True)
class Server:
    pid: int
    port: int
    started: float

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/api"

    @property
    def ui(self) -> str:
        return f"http://{HOST}:{self.port}"


# ---------------------------------------------------------------- where

def project_root(start: Path) -> Path:
    """The repository a stage runs in: the nearest folder with ``dvc.yaml``; a DVC experiment's
    temporary copy (``<repo>/.dvc/tmp/exps/<run>/``) is taken as the repository it was copied from."""
    start = start.resolve()
    for folder in (start, *start.parents):
        if folder.name == "exps" and folder.parent.name == "tmp" and folder.parent.parent.name == ".dvc":
            return folder.parent.parent.parent
    return next((f for f in (start, *start.parents) if (f / "dvc.yaml").is_file()), start)


def project_home(cwd: Path, environ: Mapping[str, str]) -> Path:
    """Where the project's server keeps its database and these files: ``PREFECT_HOME`` when set."""
    if home := environ.get("PREFECT_HOME"):
        return Path(home).expanduser().resolve()
    return project_root(cwd) / ".prefect"


# ---------------------------------------------------------------- state

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: not ours
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    return not cmdline.exists() or b"flows.server" in cmdline.read_bytes()  # a reused pid is not our server


def running(home: Path) -> Server | None:
    """The server ``server.json`` names, if its supervisor still runs (it may still be starting)."""
    try:
        server = Server(**json.loads((home / STATE).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return server if _alive(server.pid) else None


def clients(home: Path) -> list[int]:
    """The processes that use the server now; files of processes that ended are removed."""
    live = []
    for path in (home / CLIENTS).glob("[0-9]*"):
        pid = int(path.name)
        try:
            os.kill(pid, 0)
            live.append(pid)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except PermissionError:
            live.append(pid)
    return live


def register_client(home: Path) -> None:
    """Count this process as a client until it exits (a killed one is noticed by its pid)."""
    folder = home / CLIENTS
    folder.mkdir(parents=True, exist_ok=True)
    mine = folder / str(os.getpid())
    mine.touch()

    def leave() -> None:
        mine.unlink(missing_ok=True)
        (folder / LAST_CLIENT).touch()

    atexit.register(leave)


@contextmanager
def locked(home: Path, say: Say, what: str) -> Iterator[None]:
    """``server.lock`` held: one process at a time looks for, starts or stops the server."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / LOCK, "a") as handle:
        waited, told = time.monotonic(), False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told and time.monotonic() - waited > 1:
                    say(f"waiting for another process of this project to {what} ({home / LOCK})")
                    told = True
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def describe(home: Path) -> str:
    """One line: where the project's server runs, its clients, whether it stops when idle."""
    server = running(home)
    if server is None:
        return f"no project Prefect server runs (home {home})"
    kept = "kept until `python -m flows.server stop`" if (home / KEEP).exists() else "stops when idle"
    auth = f"auth string in {home / AUTH_FILE}" if (home / AUTH_FILE).exists() else "no auth string"
    return (f"Prefect UI {server.ui}  API {server.url}  (pid {server.pid}, {len(clients(home))} client(s) now, "
            f"{kept}; {auth}; home {home})")


# ---------------------------------------------------------------- start, wait, stop

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def port_free(port: int) -> bool:
    """Nobody listens on ``port`` (a port left in TIME_WAIT by a server just stopped counts as free:
    the server binds with SO_REUSEADDR, as uvicorn does)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
        return True


def spawn(home: Path, port: int, *, python: str, code_dir: Path, idle_minutes: float,
          environ: Mapping[str, str]) -> tuple[Server, subprocess.Popen]:
    """Start the supervisor in a session of its own (it outlives this stage) and record it."""
    command = [python, "-m", "flows.server", "run", "--port", str(port), "--home", str(home),
               "--idle-minutes", str(idle_minutes)]
    env = {**environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(code_dir), environ.get("PYTHONPATH")]))}
    env.pop("PREFECT_API_URL", None)
    with open(home / LOG, "a") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}: starting on port {port} ---\n")
        log.flush()
        process = subprocess.Popen(command, cwd=code_dir, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(pid=process.pid, port=port, started=time.time())
    (home / STATE).write_text(json.dumps(asdict(server)))
    return server, process


def log_tail(home: Path, lines: int = 15) -> str:
    try:
        return "\n".join((home / LOG).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_until_healthy(server: Server, home: Path, say: Say, alive: Callable[[], bool],
                       wait_s: float = START_WAIT_S) -> bool:
    """True once the API answers; False when the server process ended (``alive()`` turned False). A
    slow start is waited for (and said every few seconds), up to ``wait_s``: on a busy machine a
    start takes minutes."""
    health = f"{server.url}/health"
    next_word = time.monotonic() + SAY_EVERY_S
    while True:
        if answers(health, timeout=2.0) is None:
            return True
        if not alive():
            return False
        waited = time.time() - server.started
        if waited > wait_s:
            raise EnvironmentMismatch(
                f"the project's Prefect server ({server.url}, pid {server.pid}) did not answer in {waited:.0f} s; "
                f"its log is {home / LOG}; stop it (python -m flows.server stop) and retry, or point "
                "PREFECT_API_URL at a running server")
        if time.monotonic() >= next_word:
            say(f"still waiting for the project's Prefect server at {server.ui} ({waited:.0f} s so far; a busy "
                f"machine takes longer; log {home / LOG})")
            next_word = time.monotonic() + SAY_EVERY_S
        time.sleep(0.5)


def ensure(home: Path, *, python: str = sys.executable, code_dir: Path, environ: Mapping[str, str] = os.environ,
           say: Say = print, idle_minutes: float = IDLE_MINUTES, port: int | None = None, keep: bool = False,
           client: bool = True, auth: bool = False) -> Server:
    """The project's server, started if none runs; this process counts as its client while it lives.

    ``port``: the port to start on when it is free (``make ui``: 4200), else a free one. ``keep``:
    the server stops only when told to (``python -m flows.server stop``). ``auth``: the server asks
    for an auth string (``make ui``): ``PREFECT_API_AUTH_STRING`` if set, else ``home/auth``, made
    here with a random one; a running server without one is restarted with it when no client uses it.
    """
    with locked(home, say, "start its Prefect server"):
        if client:
            register_client(home)  # before relying on the server: it does not stop while we are here
        if keep:
            (home / KEEP).touch()
        if auth and not environ.get("PREFECT_API_AUTH_STRING"):
            secret, made = make_auth(home)
            if made:
                say(f"the Prefect UI and API ask for this auth string (shown this once; kept in {home / AUTH_FILE}, "
                    f"mode 0600, and sent by this project's stages): {secret}\n"
                    f"  a shell of yours: export PREFECT_API_AUTH_STRING=$(cat {home / AUTH_FILE})")
        server = running(home)
        if server is not None and wait_until_healthy(server, home, say, alive=lambda: _alive(server.pid)):
            if not auth or asks_for_auth(server.url):
                return server
            if clients(home):
                say(f"the project's Prefect server at {server.ui} was started without an auth string and "
                    f"{len(clients(home))} process(es) use it: it keeps running without one; restart it when "
                    "they are done (make ui-stop; make ui)")
                return server
            say(f"restarting the project's Prefect server at {server.ui}: it was started without an auth string")
            _terminate(server)
            port = port or server.port
        for attempt in range(STARTS):
            chosen = port if port and attempt == 0 and port_free(port) else free_port()
            server, process = spawn(home, chosen, python=python, code_dir=code_dir, idle_minutes=idle_minutes,
                                    environ=environ)
            say(f"starting this project's Prefect server at {server.ui} (log {home / LOG}); the next stages reuse "
                f"it, and it stops after {idle_minutes:g} idle minutes (python -m flows.server stop)"
                if not keep else f"starting this project's Prefect server at {server.ui} (log {home / LOG})")
            if wait_until_healthy(server, home, say, alive=lambda p=process: p.poll() is None):
                return server
        (home / STATE).unlink(missing_ok=True)
        raise EnvironmentMismatch(f"the project's Prefect server did not start ({STARTS} tries); the end of "
                                  f"{home / LOG}:\n{log_tail(home)}")


def stop(home: Path, say: Say = print, timeout_s: float = 30.0) -> bool:
    """Stop the project's server (and forget ``server.keep``); False when none ran."""
    with locked(home, say, "stop its Prefect server"):
        (home / KEEP).unlink(missing_ok=True)
        server = running(home)
        if server is not None:
            _terminate(server, timeout_s)
        (home / STATE).unlink(missing_ok=True)
        return server is not None


def _terminate(server: Server, timeout_s: float = 30.0) -> None:
    """End the supervisor (it stops its server), killing the group if it does not answer; the lock is held."""
    os.kill(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(server.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(server.pid):
        os.killpg(server.pid, signal.SIGKILL)


@contextmanager
def reporting(*, code_dir: Path, environ: dict[str, str] = os.environ) -> Iterator[str]:
    """The Prefect API this process reports to: ``PREFECT_API_URL``, else the project's own server
    (found or started here), never a temporary server of this process's own. Children (DVC, the
    stages it runs) inherit the variable.

    On the project's own server a flow run sends no heartbeats: they only feed an automation that
    marks silent runs as crashed (docs: "detect zombie flows"), which this server does not have, and
    Prefect 3.9 waits up to a second at the end of every run for its heartbeat thread, half of a
    stage's overhead. A server you point ``PREFECT_API_URL`` at keeps your settings. The project's
    own server also gets its auth string (``home/auth``, unless ``PREFECT_API_AUTH_STRING`` is set),
    here and in the children, through ``PREFECT_API_AUTH_STRING``.
    """
    home = project_home(Path.cwd(), environ)
    if url := environ.get("PREFECT_API_URL"):
        own = running(home)
        if own is None or own.url != url:
            check_prefect_api(url, environ.get("PREFECT_API_AUTH_STRING"))  # one line in seconds, not a hang
            with _settings(url, heartbeats=True):
                yield url
            return
    else:
        url = ensure(home, code_dir=code_dir, environ=environ, say=lambda line: print(line, file=sys.stderr)).url
        environ["PREFECT_API_URL"] = url
    if auth := client_auth(url, home, environ):  # the project's own server: its auth string, here and in children
        environ["PREFECT_API_AUTH_STRING"] = auth
    with _settings(url, heartbeats=False, auth=auth):
        yield url


def client_auth(url: str | None, home: Path, environ: Mapping[str, str]) -> str | None:
    """The auth string a client of ``url`` sends: ``PREFECT_API_AUTH_STRING``, else, for the
    project's own server, the one in ``home/auth``."""
    if auth := environ.get("PREFECT_API_AUTH_STRING"):
        return auth
    own = running(home)
    return stored_auth(home) if own is not None and own.url == url else None


@contextmanager
def _settings(url: str, *, heartbeats: bool, auth: str | None = None) -> Iterator[None]:
    """Prefect's settings for this process's runs (Prefect loads here, after the variable is set)."""
    from prefect.settings import (
        PREFECT_API_AUTH_STRING,
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        temporary_settings,
    )

    updates = ({PREFECT_API_URL: url} | ({} if heartbeats else {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
               | ({PREFECT_API_AUTH_STRING: auth} if auth else {}))
    with temporary_settings(updates=updates):
        yield
