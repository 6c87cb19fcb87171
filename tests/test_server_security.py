"""The project's Prefect server against a web page that rebinds its name to 127.0.0.1, and against
clients without its auth string (issue 24, point 2). A real server throughout: started as a stage
starts it (no auth string), then restarted by ``make ui``'s ``start`` with a random one.
"""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tasks import project_server
from tasks.server import (
    ALLOWED_HOSTS,
    AUTH_FILE,
    asks_for_auth,
    check_prefect_api,
    make_auth,
    server_environment,
    stored_auth,
)
from unet.errors import EnvironmentMismatch

from conftest import REPO

pytestmark = pytest.mark.integration


def status(url: str, host: str | None = None, auth: str | None = None) -> int:
    """The HTTP status of GET ``url``, sent with this Host header and auth string."""
    request = urllib.request.Request(url)
    if host:
        request.add_header("Host", host)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """(server as a stage starts it, the same project's server after ``start --auth``, its home, what
    ``start`` said), stopped at the end."""
    home = tmp_path_factory.mktemp("secured") / ".prefect"
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING")}
    said: list[str] = []
    try:
        plain = project_server.ensure(home, code_dir=REPO, environ=env, client=False, say=lambda _: None)
        plain_checks = {
            "forged": status(f"{plain.url}/health", host="rebound.attacker.example"),
            "own": status(f"{plain.url}/health"),
            "asked": asks_for_auth(plain.url),
        }
        secured = project_server.ensure(home, code_dir=REPO, environ=env, client=False, auth=True, say=said.append)
        yield plain, plain_checks, secured, home, said
    finally:
        project_server.stop(home)


def test_a_rebound_host_name_gets_400_on_every_route(servers):
    plain, plain_checks, secured, home, _ = servers
    auth = stored_auth(home)
    assert plain_checks["forged"] == 400 and plain_checks["own"] == 200  # also the server a stage starts
    for path in ("/api/health", "/api/csrf-token?client=page", "/api/admin/version", "/"):
        assert status(f"{secured.ui}{path}", host="rebound.attacker.example", auth=auth) == 400, path
        assert status(f"{secured.ui}{path}", host=f"rebound.attacker.example:{secured.port}", auth=auth) == 400
    for host in (f"127.0.0.1:{secured.port}", f"localhost:{secured.port}"):
        assert status(f"{secured.url}/admin/version", host=host, auth=auth) == 200, host


def test_make_ui_gives_the_server_a_random_auth_string_shown_once(servers):
    plain, plain_checks, secured, home, said = servers
    assert plain_checks["asked"] is False  # a stage's server had none ...
    assert secured.port == plain.port and secured.pid != plain.pid  # ... so start restarted it, same port
    path = home / AUTH_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    auth = stored_auth(home)
    assert auth.startswith("lgg:") and len(auth) > 30
    assert sum(auth in line for line in said) == 1 and any("restarting" in line for line in said)
    assert status(f"{secured.url}/admin/version") == 401
    assert status(f"{secured.url}/admin/version", auth="lgg:guess") == 401
    assert status(f"{secured.url}/admin/version", auth=auth) == 200
    assert status(f"{secured.url}/health") == 200  # health stays open: the stages' wait for a start
    again: list[str] = []
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING")}
    same = project_server.ensure(home, code_dir=REPO, environ=env, client=False, auth=True, say=again.append)
    assert same == secured and not any(auth in line for line in again)  # printed once only
    assert "auth string in" in project_server.describe(home)


def test_the_projects_clients_send_the_auth_string(servers, monkeypatch):
    """``reporting`` (every stage, the pipeline flow, ``make deploy``) sends it, and so do its children."""
    _, _, secured, home, _ = servers
    from prefect.client.orchestration import get_client

    environ = {"PREFECT_HOME": str(home)}
    with project_server.reporting(code_dir=REPO, environ=environ) as url:
        assert url == secured.url and environ["PREFECT_API_AUTH_STRING"] == stored_auth(home)
        with get_client(sync_client=True) as client:
            assert isinstance(client.read_flows(limit=1), list)  # an authenticated call: 401 raises
            assert client.hello().status_code == 200
    pointed = {"PREFECT_HOME": str(home), "PREFECT_API_URL": secured.url}  # make ui's URL exported
    with project_server.reporting(code_dir=REPO, environ=pointed):
        assert pointed["PREFECT_API_AUTH_STRING"] == stored_auth(home)


def test_check_names_a_missing_or_wrong_auth_string_in_one_line(servers, tmp_path):
    _, _, secured, home, _ = servers
    with pytest.raises(EnvironmentMismatch, match="asks for an auth string and PREFECT_API_AUTH_STRING is unset"):
        check_prefect_api(secured.url)
    with pytest.raises(EnvironmentMismatch, match="refuses PREFECT_API_AUTH_STRING"):
        check_prefect_api(secured.url, "lgg:wrong")
    check_prefect_api(secured.url, stored_auth(home))
    # the check stage itself, from a shell that exported the URL but not the string of another home
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_AUTH_STRING"}
    env |= {"PREFECT_API_URL": secured.url, "PREFECT_HOME": str(tmp_path / "other"), "PYTHONPATH": str(REPO),
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"}
    result = subprocess.run([sys.executable, "-m", "flows.check", "--params", str(params)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "asks for an auth string" in result.stderr
    assert "Traceback" not in result.stderr
    env["PREFECT_HOME"] = str(home)  # the project's own home: the stage finds the string itself
    result = subprocess.run([sys.executable, "-m", "flows.check", "--params", str(params)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_allowed_names_and_the_auth_file(tmp_path):
    env = server_environment(4300, tmp_path, {}, name="gpu-01.lab")
    assert env[ALLOWED_HOSTS] == "127.0.0.1,localhost,gpu-01.lab"
    assert "PREFECT_SERVER_API_AUTH_STRING" not in env
    auth, made = make_auth(tmp_path)
    assert made and make_auth(tmp_path) == (auth, False)
    assert server_environment(4300, tmp_path, {})["PREFECT_SERVER_API_AUTH_STRING"] == auth
    assert server_environment(4300, tmp_path, {"PREFECT_API_AUTH_STRING": "me:mine"})[
        "PREFECT_SERVER_API_AUTH_STRING"] == "me:mine"
    (tmp_path / AUTH_FILE).chmod(0o644)
    with pytest.raises(EnvironmentMismatch, match=r"can be read by other users \(mode 644\): chmod 600"):
        stored_auth(tmp_path)
    (tmp_path / AUTH_FILE).chmod(0o600)
    (tmp_path / AUTH_FILE).write_text("no-colon\n")
    with pytest.raises(EnvironmentMismatch, match="no user:password"):
        stored_auth(tmp_path)


def test_make_serve_registers_its_deployments_on_the_secured_server(servers, tmp_path):
    """``make deploy`` from a shell with neither PREFECT_API_URL nor the string: it finds both."""
    _, _, secured, home, _ = servers
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING")}
    env |= {"PREFECT_HOME": str(home), "PYTHONPATH": str(REPO)}
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "flows.deploy", "--only", "train-only"], cwd=REPO, env=env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        updates = {PREFECT_API_URL: secured.url, PREFECT_API_AUTH_STRING: stored_auth(home)}
        with temporary_settings(updates=updates), get_client(sync_client=True) as client:
            deadline = time.monotonic() + 120
            while not client.read_deployments() and process.poll() is None and time.monotonic() < deadline:
                time.sleep(1)
            names = [d.name for d in client.read_deployments()]
        assert names == ["train-only"], log.read_text()[-3000:]
        assert "401" not in log.read_text() and "Traceback" not in log.read_text()
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)
