"""Real data sources of the `download` stage: the Kaggle API, a downloaded zip, a local folder.

Each source leaves one `<dest>/kaggle_3m/` tree in the Kaggle layout (patient folders `TCGA_*`
holding `<patient>_<n>.tif` and `<patient>_<n>_mask.tif`, plus `data.csv`). Every source builds
its tree in a staging folder beside the target (`unet.io.atomic`) and renames it into place at the
end, so a failure never leaves a half-written `dest/kaggle_3m`.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import re
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Protocol, TypeVar

from unet.download.credentials import KaggleCredentialsError, credentials_help
from unet.errors import InputError, MissingInputError, UserError
from unet.io.atomic import atomic_dir

logger = logging.getLogger(__name__)

DATASET_DIR = "kaggle_3m"
PATIENT_PREFIX = "TCGA_"
MAX_SEARCH_DEPTH = 4
_DATASET_REF = re.compile(r"^[\w.-]+/[\w.-]+(/versions/\d+)?$")
_DRIVE = re.compile(r"^[A-Za-z]:")


class DownloadError(UserError, RuntimeError):
    """A network or server fault while talking to Kaggle: worth retrying."""


class UnsafeArchiveError(InputError):
    """An archive entry would land outside the extraction folder."""


# ---------------------------------------------------------------- finding the tree


class _Node(Protocol):
    """What the search needs of a folder: `pathlib.Path` and `zipfile.Path` both fit."""

    name: str

    def is_dir(self) -> bool: ...
    def iterdir(self) -> Iterator[_Node]: ...


N = TypeVar("N", bound=_Node)


def _subdirs(node: N) -> list[N]:
    children = [c for c in node.iterdir() if c.is_dir()]
    kept = [c for c in children if not c.name.startswith(".") and c.name != "__MACOSX"]
    return sorted(kept, key=lambda c: c.name)


def _holds_patients(node: _Node) -> bool:
    return any(c.name.startswith(PATIENT_PREFIX) for c in _subdirs(node))


def _shallowest_roots(top: N) -> list[N]:
    """The folders holding `TCGA_*` patient folders at the smallest depth under `top`."""
    level = [top]
    for _ in range(MAX_SEARCH_DEPTH + 1):
        hits = [node for node in level if _holds_patients(node)]
        if hits:
            return hits
        level = [c for node in level for c in _subdirs(node) if not c.name.startswith(PATIENT_PREFIX)]
    return []


def _single_root(roots: list[N], where: object) -> N:
    if not roots:
        raise InputError(
            f"no '{DATASET_DIR}' tree in {where}: found no folder holding {PATIENT_PREFIX}* patient "
            f"folders within {MAX_SEARCH_DEPTH} levels; point data.path at the Kaggle "
            f"'lgg-mri-segmentation' zip or at its extracted '{DATASET_DIR}' folder"
        )
    if len(roots) > 1:
        names = ", ".join(str(r) for r in roots)
        raise InputError(
            f"ambiguous dataset in {where}: several folders at the same depth hold "
            f"{PATIENT_PREFIX}* patient folders ({names}); keep one and retry"
        )
    return roots[0]


def find_dataset_root(folder: Path) -> Path:
    """The folder holding the `TCGA_*` patient folders: `folder` itself or the shallowest one below.

    A nested duplicate copy (as in the Kaggle zip) is deeper, so the top copy wins.
    """
    if not folder.is_dir():
        raise MissingInputError(f"dataset folder not found: {folder} is not a folder; set data.path to one")
    return _single_root(_shallowest_roots(folder), folder)


# ---------------------------------------------------------------- archive


def _unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    name = info.filename.replace("\\", "/")
    if stat.S_ISLNK(info.external_attr >> 16):
        return "is a symbolic link"
    if name.startswith("/") or _DRIVE.match(name):
        return "has an absolute path"
    if ".." in PurePosixPath(name).parts:
        return "climbs out of the target folder with '..'"
    return None


def _check_members(zf: zipfile.ZipFile, archive: Path) -> None:
    for info in zf.infolist():
        reason = _unsafe_reason(info)
        if reason:
            raise UnsafeArchiveError(
                f"refusing to extract {archive}: entry {info.filename!r} {reason}; "
                "download the archive again from Kaggle"
            )


def _open_zip(archive: Path) -> zipfile.ZipFile:
    if not archive.is_file():
        raise MissingInputError(
            f"archive not found: {archive}; set data.path to the zip downloaded from "
            "https://www.kaggle.com/datasets/mateuszbuda/lgg-mri-segmentation"
        )
    if not zipfile.is_zipfile(archive):
        raise InputError(f"{archive} is not a zip archive; data.source 'archive' needs the zip from Kaggle")
    return zipfile.ZipFile(archive)


def _write_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> None:
    if info.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with zf.open(info) as source, open(path, "wb") as out:
        shutil.copyfileobj(source, out)


def extract_archive(archive: Path, dest: Path) -> Path:
    """Extract the dataset tree of a Kaggle zip to `dest/kaggle_3m` and return that path.

    Every entry is checked first (no `..`, absolute paths, drive letters or symlinks); only the
    shallowest tree holding patient folders is extracted, so a nested duplicate copy is skipped.
    """
    target = dest / DATASET_DIR
    with _open_zip(archive) as zf:
        _check_members(zf, archive)
        prefix = _single_root(_shallowest_roots(zipfile.Path(zf)), archive).at  # "" for a top-level tree
        members = [i for i in zf.infolist() if i.filename.startswith(prefix) and i.filename != prefix]
        logger.info("extracting %d entries under %r from %s", len(members), prefix or "/", archive)
        with atomic_dir(target) as staging:
            for info in members:
                try:
                    _write_member(zf, info, staging / info.filename[len(prefix):])
                except zipfile.BadZipFile as exc:
                    raise InputError(f"{archive} is corrupt ({exc}); download it again") from exc
    logger.info("dataset ready at %s", target)
    return target


# ---------------------------------------------------------------- local folder


def _link(root: Path, target: Path) -> None:
    """Point `target` at `root` with a symlink made beside it and renamed into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.tmp-", dir=target.parent) as scratch:
        link = Path(scratch) / "link"
        link.symlink_to(root, target_is_directory=True)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(link, target)


def use_local(folder: Path, dest: Path, *, copy: bool = True) -> Path:
    """Copy (or symlink, with `copy=False`) an extracted dataset folder to `dest/kaggle_3m`.

    `folder` is the `kaggle_3m` folder itself or any folder containing one.
    """
    root = find_dataset_root(folder).resolve()
    target = dest / DATASET_DIR
    if not target.is_symlink() and target.resolve() == root:
        logger.info("%s already is the dataset folder; nothing to do", target)
        return target
    if not target.is_symlink() and target.resolve() in root.parents:
        raise InputError(f"data.path {folder} lies inside the output {target}; move the dataset elsewhere")
    if copy:
        with atomic_dir(target) as staging:
            shutil.copytree(root, staging, dirs_exist_ok=True)
    else:
        _link(root, target)
    logger.info("dataset ready at %s (%s %s)", target, "copied from" if copy else "linked to", root)
    return target


# ---------------------------------------------------------------- Kaggle API


@functools.cache
def _kaggle_api_class() -> type:
    """KaggleApi whose client honours KAGGLE_API_ENVIRONMENT, as kagglesdk's own client does.

    kaggle 2.2.5's KaggleApi picks its endpoint from its argument list and only reads
    KAGGLE_API_ENVIRONMENT=LOCALHOST; kagglesdk's `get_env()` also knows TEST (localhost:7777).
    Importing `kaggle` authenticates once and prints a help text without credentials: callers
    import it with stdout captured.
    """
    from kaggle.api.kaggle_api_extended import KaggleApi
    from kagglesdk import KaggleClient
    from kagglesdk.kaggle_env import get_env

    class EnvAwareKaggleApi(KaggleApi):
        def build_kaggle_client(self) -> KaggleClient:
            return KaggleClient(
                env=get_env(),
                verbose="--verbose" in self.args,
                username=self.config_values.get(self.CONFIG_NAME_USER),
                password=self.config_values.get(self.CONFIG_NAME_KEY),
                api_token=self.config_values.get(self.CONFIG_NAME_TOKEN),
                response_processor=self.get_response_processor(),
            )

    return EnvAwareKaggleApi


def _redact(text: str, secrets: list[str]) -> str:
    text = re.sub(r"(?im)^(\s*(proxy-)?authorization:).*$", r"\1 ***", text)
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _secrets(api: object) -> list[str]:
    config = getattr(api, "config_values", {})
    values = [os.environ.get(name) for name in ("KAGGLE_KEY", "KAGGLE_API_TOKEN")]
    values += [config.get("key"), config.get("token")]
    return [v for v in values if v and len(v) >= 4]


def _http_failure(exc: Exception, dataset: str, secrets: list[str]) -> Exception:
    """Sort a requests exception into the error the caller can act on."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    detail = _redact(f"{type(exc).__name__}: {exc}", secrets) + (f" (HTTP {status})" if status else "")
    if status in (401, 403):
        return KaggleCredentialsError(
            f"Kaggle refused the credentials for {dataset!r} (HTTP {status}): check that the token or "
            "key is current and that you accepted the dataset's terms on kaggle.com"
        )
    if status == 404:
        return InputError(f"Kaggle has no dataset {dataset!r} (HTTP 404); check data.kaggle_dataset")
    return DownloadError(f"downloading {dataset!r} from Kaggle failed: {detail}")


def _authenticated_api() -> object:
    import_output = io.StringIO()
    with contextlib.redirect_stdout(import_output):
        api_class = _kaggle_api_class()
    logger.debug("kaggle import said: %s", _redact(import_output.getvalue().strip(), _secrets(None)))
    api = api_class()
    with contextlib.redirect_stdout(io.StringIO()):  # the client's own help text: replaced below
        try:
            api.authenticate()
        except SystemExit:
            raise KaggleCredentialsError(credentials_help(api.config)) from None
    return api


def _fetch_zip(dataset: str, folder: Path) -> Path:
    import requests

    try:
        api = _authenticated_api()
    except requests.RequestException as exc:  # checking an access token needs the network
        raise _http_failure(exc, dataset, _secrets(None)) from exc
    secrets = _secrets(api)
    output = io.StringIO()
    try:
        with contextlib.redirect_stdout(output):
            api.dataset_download_files(dataset, path=str(folder), force=True, quiet=True, unzip=False)
    except requests.RequestException as exc:
        raise _http_failure(exc, dataset, secrets) from exc
    except ValueError as exc:  # the client's check that the file size matches Content-Length
        raise DownloadError(f"downloading {dataset!r} from Kaggle was cut short: {exc}") from exc
    finally:
        for line in _redact(output.getvalue(), secrets).splitlines():
            if line.strip():
                logger.info("kaggle: %s", line.strip())
    zips = sorted(folder.glob("*.zip"))
    if len(zips) != 1:
        raise DownloadError(f"Kaggle download of {dataset!r} left {len(zips)} zip files in {folder}, not one")
    return zips[0]


def download_kaggle(dataset: str, dest: Path) -> Path:
    """Download `owner/slug` with the user's Kaggle token and extract it to `dest/kaggle_3m`."""
    if not _DATASET_REF.match(dataset):
        raise InputError(
            f"data.kaggle_dataset {dataset!r} is not a Kaggle dataset reference; "
            "write it as 'owner/slug', e.g. 'mateuszbuda/lgg-mri-segmentation'"
        )
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=dest) as scratch:
        archive = _fetch_zip(dataset, Path(scratch))
        logger.info("downloaded %s (%d bytes)", archive.name, archive.stat().st_size)
        return extract_archive(archive, dest)
