"""The Prefect server ``make ui`` starts, locked down: this project's state, its own UI, CSRF on.

What is exposed: the server binds 127.0.0.1 only. It answers only requests whose ``Host`` header is
one of its own names (127.0.0.1, localhost, a cluster's machine name): a web page whose name an
attacker points at 127.0.0.1 (DNS rebinding) gets 400, so it can neither read the CSRF token nor
start a run. Its API accepts cross-origin requests from its own UI only
(``PREFECT_SERVER_CORS_ALLOWED_ORIGINS``) and refuses state-changing requests without a CSRF token
(``PREFECT_SERVER_CSRF_PROTECTION_ENABLED``). With an auth string it asks every client for it
(Prefect's basic auth; the UI asks once per browser): ``PREFECT_API_AUTH_STRING=user:password`` in
the shell, else the project home's ``auth`` file, which ``make ui`` creates with a random string
(0600, printed once). The stages, ``make deploy`` and the workers they start send the same string.
Without one, any local user of the machine can reach the API and start the served deployments,
whose parameters are checked against the typed config and can name no folder, store or command
(``tasks.experiment``).
"""

from __future__ import annotations

import base64
import os
import secrets
import stat
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from unet.errors import EnvironmentMismatch

HOST = "127.0.0.1"
ALLOWED_HOSTS = "LGG_PREFECT_ALLOWED_HOSTS"  # the server's own names, comma-separated (run_prefect_server)
CODE = Path(__file__).resolve().parents[1]  # the repository: the server's command imports tasks.server
AUTH_FILE = "auth"  # in the Prefect home: the project server's auth string, user:token, mode 0600


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
        ALLOWED_HOSTS: ",".join(dict.fromkeys([HOST, "localhost", name])),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(CODE), environ.get("PYTHONPATH")])),  # run_prefect_server
    }
    if auth := environ.get("PREFECT_API_AUTH_STRING") or stored_auth(home):
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth
    return env


def server_command(python: str, port: int, bind: str = HOST) -> list[str]:
    """``prefect server start`` on ``bind`` (127.0.0.1) behind the Host check (``run_prefect_server``),
    run through ``flows`` (its analytics switches)."""
    launch = "import flows; from tasks.server import run_prefect_server; run_prefect_server()"
    return [python, "-c", launch, "server", "start", "--host", bind, "--port", str(port)]


def run_prefect_server() -> None:
    """``prefect server start`` whose app first checks the ``Host`` header against the names in
    ``LGG_PREFECT_ALLOWED_HOSTS`` (starlette's TrustedHostMiddleware: 400 for any other name).

    Prefect builds its app in ``prefect.cli._server_utils._run_in_foreground``, which imports
    ``create_app`` at call time; wrapping the module's function is how the check gets in front of
    every route, the UI's included (tests/test_server_security.py fails if a Prefect upgrade changes
    that)."""
    import prefect.server.api.server as api_server
    from prefect.cli import app
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    hosts = [h for h in os.environ.get(ALLOWED_HOSTS, f"{HOST},localhost").split(",") if h]
    create_app = api_server.create_app

    def checked_app(*args, **kwargs):
        return TrustedHostMiddleware(create_app(*args, **kwargs), allowed_hosts=hosts, www_redirect=False)

    api_server.create_app = checked_app
    sys.argv[0] = "prefect"
    app()


# ---------------------------------------------------------------- the auth string

def stored_auth(home: Path) -> str | None:
    """The auth string in ``home/auth``, if there is one; refused when others may read it."""
    path = home / AUTH_FILE
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise EnvironmentMismatch(f"{path} (the Prefect server's auth string) can be read by other users "
                                  f"(mode {stat.S_IMODE(mode):o}): chmod 600 {path}, or delete it to get a new one")
    auth = path.read_text().strip()
    if ":" not in auth:
        raise EnvironmentMismatch(f"{path} holds no user:password auth string: delete it to get a new one")
    return auth


def make_auth(home: Path) -> tuple[str, bool]:
    """The auth string in ``home/auth``, made (random, mode 0600) when there is none; True if made now."""
    if auth := stored_auth(home):
        return auth, False
    home.mkdir(parents=True, exist_ok=True)
    auth = f"lgg:{secrets.token_urlsafe(24)}"
    descriptor = os.open(home / AUTH_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(auth + "\n")
    return auth, True


def asks_for_auth(api_url: str, auth: str | None = None, timeout: float = 5.0) -> bool:
    """True when the API refuses ``auth`` (or no auth string) with 401."""
    request = urllib.request.Request(f"{api_url.rstrip('/')}/admin/version")
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return False
    except urllib.error.HTTPError as exc:
        return exc.code == 401
    except (urllib.error.URLError, OSError):
        return False


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


def check_server(api_url: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """The API must be a server that stays up: runs started from its UI are what ``make deploy`` runs."""
    if not api_url:
        raise EnvironmentMismatch("PREFECT_API_URL is not set: start a server (make ui) and "
                                  "export PREFECT_API_URL=http://127.0.0.1:4200/api")
    check_prefect_api(api_url, environ.get("PREFECT_API_AUTH_STRING"))  # reporting() set it for the project's
    return api_url


def check_prefect_api(api_url: str | None, auth: str | None = None) -> None:
    """A ``PREFECT_API_URL`` that does not answer within seconds, or refuses ``auth``: one line, not a
    hang or a 401 traceback later."""
    if not api_url:
        return
    if why := answers(f"{api_url.rstrip('/')}/health"):
        raise EnvironmentMismatch(f"PREFECT_API_URL={api_url} does not answer ({why}): start the server "
                                  "(make ui), or unset PREFECT_API_URL to let each stage start its own")
    if asks_for_auth(api_url, auth):
        given = "refuses PREFECT_API_AUTH_STRING" if auth else "asks for an auth string and PREFECT_API_AUTH_STRING is unset"
        raise EnvironmentMismatch(f"PREFECT_API_URL={api_url} {given}: export PREFECT_API_AUTH_STRING=user:password "
                                  "as the server has it (the project's own server keeps it in .prefect/auth)")

