"""A stage starts fast and never dies of a slow server: mistakes before servers, one server a project.

``python -m flows <stage>`` checks params and the stage's inputs before it imports Prefect or torch
(``unet.inputs``); then it finds or starts the project's Prefect server (``tasks.project_server``),
which the next stages reuse and which stops itself when idle. Real servers throughout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tasks import project_server
from unet.config import parse_config
from unet.errors import MissingInputError
from unet.inputs import NEEDS, check_inputs

from conftest import REPO, make_raw_tree, merged, outputs_under, tiny_stage_params


def stage_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return {**env, "PREFECT_HOME": str(home), "PYTHONPATH": str(REPO), **extra}


def quiet(_: str) -> None:
    pass


# ---------------------------------------------------------------- mistakes before servers

def params_under(tmp_path: Path) -> Path:
    """params whose every output lies under tmp_path: nothing there yet."""
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(outputs_under(tmp_path)))
    return path


@pytest.mark.parametrize("stage, first", [
    ("prepare", "download"), ("weightmaps", "prepare"), ("augment", "prepare"), ("train", "prepare"),
    ("evaluate", "prepare"), ("register", "prepare"), ("cv", "prepare"), ("radiogenomics", "download"),
])
def test_each_stage_names_the_stage_to_run_first(stage, first, tmp_path):
    config = parse_config(merged(outputs_under(tmp_path), {"cv": {"folds": 2}}))
    with pytest.raises(MissingInputError, match=f"run the {first} stage first"):
        check_inputs(stage, config)


def test_every_stage_of_dvc_yaml_has_its_inputs_listed():
    stages = set(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]) - {"check"}
    assert stages <= set(NEEDS), f"unet/inputs.py has no entry for {sorted(stages - set(NEEDS))}"


def test_kaggle_without_credentials_is_said_before_anything_starts(tmp_path):
    config = parse_config({"data": {"source": "kaggle"}})
    with pytest.raises(Exception, match="no Kaggle credentials found"):
        check_inputs("download", config, {"HOME": str(tmp_path)})
    check_inputs("download", config, {"HOME": str(tmp_path), "KAGGLE_API_TOKEN": "t"})  # present: the client decides


@pytest.mark.integration
def test_three_stages_with_mistakes_at_once_each_say_one_line_and_start_no_server(tmp_path):
    """As DVC or a user would start them, with no server configured: each says its error: line at
    once, with no traceback, and no Prefect server is started (or waited for)."""
    home = tmp_path / "home"
    params = params_under(tmp_path)
    started = time.perf_counter()
    runs = [subprocess.Popen([sys.executable, "-m", "flows", stage, "--params", str(params)], cwd=tmp_path,
                             env=stage_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for stage in ("weightmaps", "train", "evaluate")]
    outputs = [run.communicate(timeout=120) for run in runs]
    seconds = time.perf_counter() - started
    for run, (out, err) in zip(runs, outputs):
        assert run.returncode == 1, err
        assert err.count("error: ") == 1 and "run the prepare stage first" in err and "Traceback" not in err + out
    assert not (home / project_server.STATE).exists()  # no server started for a mistake
    print(f"three stages with mistakes, at once: {seconds:.1f} s")


@pytest.mark.integration
def test_a_mistake_inside_a_running_flow_is_one_line_too(tmp_path, prefect_api):
    """Past the quick checks (the raw folder exists but a mask is not binary), the stage's Prefect
    run fails with the message said once: the engine's traceback is not printed."""
    import numpy as np
    import tifffile

    raw = make_raw_tree(tmp_path / "raw" / "kaggle_3m")
    first = sorted(p for p in raw.iterdir() if p.is_dir())[0]
    tifffile.imwrite(first / f"{first.name}_2_mask.tif", np.full((32, 32), 7, np.uint8))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_stage_params(tmp_path)))
    result = subprocess.run([sys.executable, "-m", "flows", "prepare", "--params", str(params)], cwd=tmp_path,
                            env={**stage_env(tmp_path / "home"), "PREFECT_API_URL": prefect_api,
                                 "PREFECT_LOGGING_LEVEL": "INFO"}, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "not binary" in output, output[-2000:]
    assert "Traceback" not in output and output.count("error: ") == 1


# ---------------------------------------------------------------- the project's server

def test_a_dvc_experiment_copy_uses_the_repository_it_came_from(tmp_path):
    repo = tmp_path / "repo"
    (repo / ".dvc" / "tmp" / "exps" / "tmpab12").mkdir(parents=True)
    (repo / "dvc.yaml").write_text("stages: {}\n")
    (repo / ".dvc" / "tmp" / "exps" / "tmpab12" / "dvc.yaml").write_text("stages: {}\n")
    (repo / "sub").mkdir()
    assert project_server.project_root(repo / ".dvc" / "tmp" / "exps" / "tmpab12") == repo.resolve()
    assert project_server.project_root(repo / "sub") == repo.resolve()
    assert project_server.project_home(repo, {}) == repo.resolve() / ".prefect"
    assert project_server.project_home(repo, {"PREFECT_HOME": str(tmp_path / "h")}) == (tmp_path / "h").resolve()


def test_a_server_that_is_not_there_is_not_taken_for_one(tmp_path):
    """A server.json left by a killed server (its pid gone) or a foreign process names no server."""
    tmp_path.joinpath(project_server.STATE).write_text(json.dumps({"pid": 2**22 + 7, "port": 1, "started": 0}))
    assert project_server.running(tmp_path) is None
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        tmp_path.joinpath(project_server.STATE).write_text(json.dumps({"pid": sleeper.pid, "port": 1, "started": 0}))
        assert project_server.running(tmp_path) is None  # alive, but not flows.server: a reused pid
    finally:
        sleeper.kill()


@pytest.mark.integration
def test_the_first_stage_starts_the_server_and_the_next_reuse_it(tmp_path):
    """Three processes at once in one project start one server; a later one finds it at once."""
    home = tmp_path / "home"
    starts = [subprocess.Popen([sys.executable, "-m", "flows.server", "start"], cwd=REPO, env=stage_env(home),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    try:
        outputs = [p.communicate(timeout=600) for p in starts]
        assert all(p.returncode == 0 for p in starts), outputs
        lines = {out.strip() for out, _ in outputs}
        assert len({line.split("(pid ")[1].split(",")[0] for line in lines}) == 1, lines  # one server
        assert sum("starting this project's Prefect server" in err for _, err in outputs) == 1
        server = project_server.running(home)
        started = time.perf_counter()
        again = project_server.ensure(home, code_dir=REPO, say=quiet, client=False)
        assert again == server and time.perf_counter() - started < 5
        assert project_server.answers(f"{server.url}/health") is None
    finally:
        project_server.stop(home)
    assert project_server.running(home) is None and not (home / project_server.STATE).exists()


@pytest.mark.integration
def test_two_projects_get_two_servers_and_an_idle_one_stops_itself(tmp_path):
    """Two homes (two clones) never share a port; with no client left for ``idle_minutes`` a server
    stops by itself, while one with a client (a stage still running) stays."""
    busy, idle = tmp_path / "busy", tmp_path / "idle"
    client = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    (busy / project_server.CLIENTS).mkdir(parents=True)
    (busy / project_server.CLIENTS / str(client.pid)).touch()  # a stage that is still running
    try:
        a = project_server.ensure(busy, code_dir=REPO, say=quiet, client=False, idle_minutes=0.05)
        b = project_server.ensure(idle, code_dir=REPO, say=quiet, client=False, idle_minutes=0.05)
        assert a.port != b.port
        deadline = time.monotonic() + 60
        while project_server.running(idle) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert project_server.running(idle) is None and not (idle / project_server.STATE).exists()
        assert project_server.running(busy) == a  # its client still runs
        client.kill()
        client.wait()
        deadline = time.monotonic() + 60
        while project_server.running(busy) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert project_server.running(busy) is None  # the client ended: idle, so it stopped
    finally:
        client.kill()
        project_server.stop(busy)
        project_server.stop(idle)


@pytest.mark.integration
def test_runs_on_the_projects_server_send_no_heartbeats_and_another_server_keeps_its_settings(prefect_api):
    """Heartbeats only feed a zombie-run automation, which the project's own server lacks, and Prefect
    waits up to a second for their thread at every run's end; a server the user points at keeps them."""
    from prefect import flow
    from prefect.settings import get_current_settings

    from conftest import SESSION_PREFECT_HOME

    @flow
    def heartbeat_setting() -> int | None:
        return get_current_settings().flows.heartbeat_frequency

    default = get_current_settings().flows.heartbeat_frequency
    own = {"PREFECT_HOME": str(SESSION_PREFECT_HOME), "PREFECT_API_URL": prefect_api}
    with project_server.reporting(code_dir=REPO, environ=own) as url:
        assert url == prefect_api
        assert heartbeat_setting() is None  # a run on the real server, inside its settings
    # the same real server under another of its names: to reporting() a server the user chose
    other = {"PREFECT_HOME": str(SESSION_PREFECT_HOME), "PREFECT_API_URL": prefect_api.replace("127.0.0.1", "localhost")}
    with project_server.reporting(code_dir=REPO, environ=other) as url:
        assert url == other["PREFECT_API_URL"]
        assert get_current_settings().flows.heartbeat_frequency == default is not None
