"""Kaggle credentials: whether there are any, and what to set when there are none.

The kaggle client (2.x) and kagglesdk read ``KAGGLE_API_TOKEN``, ``KAGGLE_USERNAME`` with
``KAGGLE_KEY``, or a file in ``KAGGLE_CONFIG_DIR``, ``~/.kaggle`` or ``$XDG_CONFIG_HOME/kaggle``.
``check_kaggle_credentials`` looks for any of them before a stage imports or starts anything; the
client's own ``authenticate`` decides later whether they are good. Standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from unet.errors import UserError

CREDENTIAL_FILES = ("kaggle.json", "access_token", "access_token.txt", "credentials.json")


class KaggleCredentialsError(UserError, RuntimeError):
    """No usable Kaggle credentials: the user has to set some up (never retried)."""


def credentials_help(config_file: str) -> str:
    return (
        "no Kaggle credentials found. Set one of: the KAGGLE_API_TOKEN environment variable (a token "
        "from https://www.kaggle.com/settings/api); the file ~/.kaggle/kaggle.json (read here from "
        f'{config_file}, or set KAGGLE_CONFIG_DIR) holding {{"username": ..., "key": ...}}; or the '
        "KAGGLE_USERNAME and KAGGLE_KEY environment variables. Without an account, download the zip "
        "by hand and use data.source 'archive'"
    )


def check_kaggle_credentials(environ: Mapping[str, str]) -> None:
    """Raise ``KaggleCredentialsError`` (saying what to set) when no credentials are anywhere."""
    if environ.get("KAGGLE_API_TOKEN") or (environ.get("KAGGLE_USERNAME") and environ.get("KAGGLE_KEY")):
        return
    home = Path(environ.get("HOME") or Path.home())
    folders = [Path(environ["KAGGLE_CONFIG_DIR"])] if environ.get("KAGGLE_CONFIG_DIR") else []
    folders += [home / ".kaggle", Path(environ.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"]
    if not any((folder / name).is_file() for folder in folders for name in CREDENTIAL_FILES):
        raise KaggleCredentialsError(credentials_help(str(folders[0] / "kaggle.json")))
