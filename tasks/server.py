"""The Prefect server ``make ui`` starts, locked down: this project's state, its own UI, CSRF on.

What is exposed: the server binds 127.0.0.1 only. Its API accepts cross-origin requests from its
own UI only (``PREFECT_SERVER_CORS_ALLOWED_ORIGINS``), refuses state-changing requests without a
CSRF token (``PREFECT_SERVER_CSRF_PROTECTION_ENABLED``, so a web page in the user's browser cannot
start a run), and with ``PREFECT_API_AUTH_STRING=user:password`` set in the shell asks every
client for it (Prefect's basic auth; ``make serve`` and the stages send the same variable). Without
an auth string, any local user of the machine can reach the API and start the served deployments,
whose parameters are checked against the typed config and can name no folder, store or command
(``tasks.experiment``).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from unet.errors import EnvironmentMismatch

HOST = "127.0.0.1"


def server_environment(port: int, home: Path, environ: Mapping[str, str] = os.environ,
                       name: str = HOST) -> dict[str, str]:
    """The environment of a Prefect server on ``port`` keeping its state under ``home``; ``name``:
    the host its UI and clients reach it by (a cluster's server: the machine's name)."""
    origin = f"http://{name}:{port}"
    env = {
        **environ,
        "PREFECT_HOME": str(home),  # this project's runs only, not those of ~/.prefect
        "PREFECT_UI_API_URL": f"{origin}/api",  # the UI talks to this server, whatever the port
        "PREFECT_SERVER_CORS_ALLOWED_ORIGINS": origin,
        "PREFECT_SERVER_CSRF_PROTECTION_ENABLED": "true",
    }
    if auth := environ.get("PREFECT_API_AUTH_STRING"):
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth
    return env


def server_command(python: str, port: int, bind: str = HOST) -> list[str]:
    """``prefect server start`` on ``bind`` (127.0.0.1), run through ``flows`` (its analytics switches)."""
    return [*prefect_command(python), "server", "start", "--host", bind, "--port", str(port)]


def prefect_command(python: str) -> list[str]:
    """The ``prefect`` command line, with Prefect's and DVC's analytics off (``flows/__init__.py``)."""
    return [python, "-c", "import flows; import sys; from prefect.cli import app; sys.argv[0] = 'prefect'; app()"]


def answers(url: str, timeout: float = 5.0) -> str | None:
    """None when ``url`` answers within ``timeout`` seconds, else why not (also for a server that
    accepts the connection and never replies)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return None
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))


def check_server(api_url: str | None) -> str:
    """The API must be a server that stays up: runs started from its UI are what ``make serve`` runs."""
    if not api_url:
        raise EnvironmentMismatch("PREFECT_API_URL is not set: start a server (make ui) and "
                                  "export PREFECT_API_URL=http://127.0.0.1:4200/api")
    check_prefect_api(api_url)
    return api_url


def check_prefect_api(api_url: str | None) -> None:
    """A ``PREFECT_API_URL`` that does not answer within seconds: one line, not a hang."""
    if api_url and (why := answers(f"{api_url.rstrip('/')}/health")):
        raise EnvironmentMismatch(f"PREFECT_API_URL={api_url} does not answer ({why}): start the server "
                                  "(make ui), or unset PREFECT_API_URL to let each stage start its own")

