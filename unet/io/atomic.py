"""Outputs appear whole or not at all, so DVC never caches a half-written stage output.

A stage writes into a staging folder (or file) beside its target and renames it into place at
the end; on any exception the staging copy is removed. A staging copy left by a killed process
(its name carries the writer's PID) is swept at the next write of the same target. Staged
outputs get the permissions a plain write would give (the umask's), not ``mkdtemp``'s 0700. A full
disk or a read-only folder is one ``OutputError`` naming the folder and the bytes.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from unet.errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)
DIR_MODE, FILE_MODE = 0o777 & ~_UMASK, 0o666 & ~_UMASK
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # no room: the disk, the quota, the largest file allowed
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


class OutputError(UserError, OSError):
    """An output cannot be written (disk full, read-only folder); the message names the folder."""

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno 28]"
        return self.strerror or super().__str__()


def _prefix(target: Path) -> str:
    return f".{target.name}.tmp-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def sweep_stale(target: Path) -> list[Path]:
    """Remove staging copies of ``target`` whose writer process is gone; returns what was removed."""
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.tmp-(\d+)-")
    removed = []
    for path in target.parent.glob(f".{target.name}.tmp-*") if target.parent.is_dir() else []:
        match = pattern.match(path.name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def check_free_space(folder: Path, needed: int) -> None:
    """Refuse to start an output of about ``needed`` bytes that ``folder``'s disk cannot hold."""
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise OutputError(errno.ENOSPC, f"{folder}: needs about {needed:,} bytes but its disk has {free:,} free; "
                                        "free some space or point the stage's out_dir elsewhere")


def _reraise(exc: OSError, target: Path) -> NoReturn:
    """A full disk, or a folder of the output that is read-only, as one line naming the folder; any
    other OSError (a bug, or a file the stage reads) as it was."""
    if isinstance(exc, OutputError):
        raise exc
    ours = exc.filename is None or str(target.parent.resolve()) in str(Path(exc.filename).resolve())
    if exc.errno in _FULL:
        free = shutil.disk_usage(target.parent).free
        why = "no space left" if exc.errno == errno.ENOSPC else f"no room ({exc.strerror})"
        raise OutputError(exc.errno, f"{target.parent}: {why} writing {target.name} "
                                     f"({free:,} bytes free); free some space and rerun") from exc
    if exc.errno in _READ_ONLY and ours:
        raise OutputError(exc.errno, f"{target.parent}: cannot write {target.name} there ({exc.strerror}); "
                                     "make the folder writable or point the stage's out_dir elsewhere") from exc
    raise exc


def _os_error_behind(exc: BaseException) -> OSError | None:
    """The OSError a writer's own exception hides: torch.save turns a failed write into a RuntimeError
    ("unexpected pos") raised while the OSError is handled, so the OSError is its context."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _reraise_behind(exc: Exception, target: Path) -> NoReturn:
    """A full disk or a read-only folder under another exception, as ``_reraise`` says them; else as it was."""
    behind = _os_error_behind(exc)
    if behind is not None:
        try:
            _reraise(behind, target)
        except OutputError:
            raise
        except OSError:
            pass  # not the output's (a bug, or a file the stage reads): the exception as it was
    raise exc


@contextmanager
def staging_dir(target: Path, *, expected_bytes: int | None = None) -> Iterator[Path]:
    """An empty folder beside ``target`` (stale ones of dead writers swept first), removed at the end.

    ``expected_bytes`` (when known) is checked against the free space before anything is written.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(target)
        if expected_bytes:
            check_free_space(target.parent, expected_bytes)
        staging = Path(tempfile.mkdtemp(prefix=_prefix(target), dir=target.parent))
        staging.chmod(DIR_MODE)
    except OSError as exc:
        _reraise(exc, target)
    try:
        yield staging
    except OSError as exc:
        _reraise(exc, target)
    except Exception as exc:  # noqa: BLE001 (re-raised as it was unless an OSError of the output is behind it)
        _reraise_behind(exc, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def atomic_dir(target: Path, *, expected_bytes: int | None = None) -> Iterator[Path]:
    """Yield an empty staging folder beside ``target``; on success it replaces ``target``.

    On any exception the staging folder is removed and ``target`` is left as it was.
    """
    target = Path(target)
    with staging_dir(target, expected_bytes=expected_bytes) as staging:
        yield staging
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)


@contextmanager
def atomic_file(target: Path, mode: str = "wb") -> Iterator:
    """Open a temporary file beside ``target``; it is renamed onto ``target`` only on success."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(target)
        fd, tmp = tempfile.mkstemp(prefix=_prefix(target), dir=target.parent)
        os.chmod(tmp, FILE_MODE)
    except OSError as exc:
        _reraise(exc, target)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        _reraise(exc, target)
    except Exception as exc:  # noqa: BLE001
        Path(tmp).unlink(missing_ok=True)
        _reraise_behind(exc, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
