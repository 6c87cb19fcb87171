"""The pipeline flow and its deployments: overrides checked before DVC starts, and one real run.

The real run goes the way a user's does: ``python -m flows.deploy`` serves the deployments
against the session's Prefect test server, a flow run is created through the client (what the
UI's "Run" button does), the runner runs ``dvc exp run`` in a tiny temporary repository, and
afterwards DVC is clean and the stages' artifacts are on the server.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from flows import pipeline
from flows.deploy import DEPLOYMENTS, deployments
from tasks import experiment
from tasks import overrides as checks
from tasks.reports import prepare_report, publish, table
from unet.config import ConfigError

from conftest import merged

REPO = Path(__file__).resolve().parents[1]
COPIED = ["flows", "tasks", "unet", "dvc.yaml", "params.yaml", ".dvc/config", ".dvc/plots"]
TINY = {
    "data": {"synthetic": {"anatomy": "phantom", "n_patients": 5, "min_slices": 4, "max_slices": 5,
                           "image_size": 32}},
    "prepare": {"image_size": 32, "workers": 1, "split": {"val_fraction": 0.2, "test_fraction": 0.2}},
}
PARAMS = REPO / "params.yaml"


# -- overrides: checked against the typed config before anything runs -------------------------

@pytest.mark.parametrize("overrides, message", [
    ({"train.epochs": "-3"}, "train.epochs: -3: Input should be greater than 0"),
    ({"data.source": "s3"}, "data.source: 's3' is not allowed; use one of 'synthetic'"),
    ({"train.epoch": "3"}, "train.epoch: unknown key; train has epochs,"),
    ({"trian.epochs": "3"}, "params.yaml has no section 'trian'; sections: data, prepare"),
    ({"train.lr": "1e-4,1e-3"}, "a sweep of several values; give one value"),
    ({"train.lr": "[1"}, "DVC cannot parse the value"),
    ({"epochs": "3"}, "not a dotted params key; write section.key"),
    ({"prepare.image_size": "40"}, "prepare.image_size 40 cannot be halved"),
])
def test_a_bad_override_names_key_value_and_fix(overrides, message):
    with pytest.raises(ConfigError, match="with the run's overrides") as error:
        checks.validate_overrides(PARAMS, overrides)
    assert message in str(error.value)


@pytest.mark.parametrize("overrides, key, expected", [
    ({"train.lr": "1e-4"}, ("train", "lr"), 1e-4),              # Hydra reads 1e-4 as a float (YAML would not)
    ({"train.augment.scale": "0.1"}, ("train", "augment"), 0.1),
    ({"prepare.clip_percentiles": "[5,95]"}, ("prepare", "clip_percentiles"), (5.0, 95.0)),
    ({"train.scheduler": "cosine"}, ("train", "scheduler"), "cosine"),
])
def test_good_overrides_reach_the_typed_config(overrides, key, expected):
    config = checks.validate_overrides(PARAMS, overrides)
    value = getattr(getattr(config, key[0]), key[1])
    assert (value.scale if key[1] == "augment" else value) == pytest.approx(expected)


@pytest.mark.parametrize("typed, overrides, expected", [
    ({"epochs": 3, "lr": None}, None, {"train.epochs": "3"}),
    ({"lr": 1e-5, "data_source": "kaggle"}, {"train.seed": "1"},
     {"train.seed": "1", "train.lr": "1e-05", "data.source": "kaggle"}),
    ({"epochs": 3}, {"train.epochs": "3"}, {"train.epochs": "3"}),
])
def test_typed_parameters_become_params_keys(typed, overrides, expected):
    assert checks.collect_overrides(typed, overrides) == expected


def test_a_typed_parameter_and_an_override_that_disagree_are_refused():
    with pytest.raises(ConfigError, match="epochs=3 and overrides train.epochs=4 disagree"):
        checks.collect_overrides({"epochs": 3}, {"train.epochs": "4"})


@pytest.mark.parametrize("mode, overrides, targets, name, force, expected", [
    ("experiment", {}, [], None, False, ["exp", "run"]),
    ("experiment", {"train.epochs": "3", "data.path": "/a b.zip"}, ["augment"], "short", True,
     ["exp", "run", "--name", "short", "--force", "-S", "train.epochs=3", "-S", "data.path=/a b.zip", "augment"]),
    ("repro", {"train.epochs": "3"}, ["train"], None, False, ["repro", "train"]),
])
def test_the_dvc_command(mode, overrides, targets, name, force, expected):
    command = experiment.build_command(mode, overrides, targets, name, force)
    assert command[:3] == [sys.executable, "-m", "dvc"] and command[3:] == expected


def test_unknown_stages_and_modes_are_refused():
    with pytest.raises(ConfigError, match="no stage 'trian'; stages: check, download, prepare"):
        experiment.check_targets(REPO / "dvc.yaml", ["trian"])
    with pytest.raises(ConfigError, match="'repro' records no experiment"):
        experiment.build_command("repro", {}, [], "name")


def test_run_dvc_streams_lines_and_reads_what_ran(tmp_path):
    script = "print('Running stage \\'prepare\\':'); print(\"Stage 'download' didn't change, skipping\"); exit(3)"
    lines = []
    result = experiment.run_dvc([sys.executable, "-c", script], tmp_path, lines.append)
    assert result.returncode == 3 and len(lines) == 2
    assert (result.ran, result.reused, list(result.tail)) == (["prepare"], ["download"], lines)


def test_a_bad_value_fails_the_flow_run_before_dvc_starts(prefect_api, monkeypatch):
    started = []
    monkeypatch.setattr(experiment, "run_dvc", lambda *args: started.append(args))
    state = pipeline.pipeline_flow(epochs=-3, overrides={"data.source": "s3"}, return_state=True)
    assert state.is_failed() and not started
    with pytest.raises(ConfigError) as error:
        state.result()
    assert "train.epochs: -3" in str(error.value) and "data.source: 's3'" in str(error.value)


def fake_dvc(returncode: int, lines: list[str], calls: list):
    def run(command, cwd, log):
        calls.append(command)
        result = experiment.DvcResult(returncode=returncode, ran=["train"])
        result.tail.extend(lines)
        return result
    return run


def test_repro_mode_writes_the_overrides_into_params_yaml_keeping_its_comments(tmp_path, prefect_api, monkeypatch):
    for name in ("params.yaml", "dvc.yaml"):
        (tmp_path / name).write_bytes((REPO / name).read_bytes())
    calls = []
    monkeypatch.setattr(experiment, "run_dvc", fake_dvc(0, [], calls))
    monkeypatch.setattr(pipeline, "REPO", tmp_path)  # a copy: the real params.yaml stays as it is
    summary = pipeline.workspace_flow(overrides={"train.epochs": "2", "train.scheduler": "cosine"},
                                      targets=["train"], mode="repro", experiment_name=None, force=False)
    assert calls[0][3:] == ["repro", "train"] and summary["ran"] == ["train"]
    text = (tmp_path / "params.yaml").read_text()
    assert "epochs: 2 " in text and "scheduler: cosine " in text and "# the reference trains 100" in text


def test_a_failing_dvc_fails_the_run_with_its_last_lines(tmp_path, prefect_api, monkeypatch):
    monkeypatch.setattr(experiment, "run_dvc", fake_dvc(1, ["Running stage 'train':", "ERROR: boom"], []))
    state = pipeline.pipeline_flow(return_state=True)
    assert state.is_failed()
    said = "dvc exp run --temp failed \\(exit 1\\); its last lines:\nRunning stage 'train':\nERROR: boom"
    with pytest.raises(RuntimeError, match=said):
        state.result()


# -- reports -----------------------------------------------------------------------------------

def test_prepare_report_is_a_table_of_the_split():
    summary = {"patients": 5, "slices": 20, "tumour_slice_fraction": 0.5, "image_size": 32,
               "splits": {"val": {"patients": 1, "slices": 4, "tumour_slices": 2},
                          "train": {"patients": 4, "slices": 16, "tumour_slices": 8}}}
    text = prepare_report(summary)
    assert "| train | 4 | 16 | 8 |\n| val | 1 | 4 | 2 |\n| **all** | 5 | 20 | 10 |" in text
    assert table(["a", "b"], [("x|y", 0.123456)]) == "| a | b |\n| --- | ---: |\n| x\\|y | 0.1235 |"


@pytest.mark.parametrize("key", ["LGG-train", "lgg_train", "lgg--train", "-lgg", ""])
def test_artifact_keys_must_be_lowercase_dash(key):
    with pytest.raises(ValueError, match="lowercase letters, digits and single dashes"):
        publish(key, "# x")


def test_the_deployments_and_their_defaults():
    served = {d.name: d for d in deployments()}
    assert set(served) == set(DEPLOYMENTS) == {"dvc-experiment", "train-only"}
    assert served["train-only"].parameters == {"targets": ["train"]}
    assert served["dvc-experiment"].entrypoint == "flows.pipeline.pipeline_flow"
    # the run form names its choices and says what params.yaml holds now (the UI shows both)
    form = served["dvc-experiment"]._parameter_openapi_schema.properties
    now = yaml.safe_load(PARAMS.read_text())
    assert form["epochs"]["description"].endswith(f"params.yaml now: {now['train']['epochs']} (empty keeps it)")
    assert [c["title"] for c in form["data_source"]["anyOf"]] == ["set", f"keep {now['data']['source']}"]
    assert form["data_source"]["anyOf"][0]["enum"] == ["synthetic", "kaggle", "archive", "local"]  # a dropdown
    assert [c["title"] for c in form["targets"]["anyOf"]] == ["these stages", "all stages"]
    with pytest.raises(ValueError, match="no deployment nope"):
        deployments(["nope"])


# -- one real deployment run -------------------------------------------------------------------

@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("deploy-repo")
    for name in COPIED:
        src, dst = REPO / name, root / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=lambda *_: ["__pycache__"])
        else:
            dst.write_bytes(src.read_bytes())
    params = merged(yaml.safe_load((root / "params.yaml").read_text()), TINY)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "init"]):
        subprocess.run([*git, *args], cwd=root, check=True)
    return root


@pytest.fixture(scope="module")
def runner(repo, prefect_api):
    """``python -m flows.deploy`` in the repo, as ``make deploy`` starts it, polling every second."""
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_RUNNER_POLL_FREQUENCY": "1",
           "PREFECT_LOGGING_LEVEL": "INFO",  # the session's WARNING would keep DVC's lines from the run's logs
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    log = repo.parent / "runner.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "flows.deploy", "--only", "dvc-experiment"],
                                   cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT)
    yield process, log
    process.terminate()  # SIGTERM: the runner pauses its deployments and exits
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_for(check, timeout: float, what: str, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (found := check()) is not None:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{what} after {timeout} s; runner log:\n{log.read_text()[-4000:]}")


def dvc(repo: Path, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_run_started_through_the_client_is_a_dvc_experiment(repo, runner, prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        FlowRunFilterStartTime,
        LogFilter,
        LogFilterFlowRunId,
        LogFilterTextSearch,
    )
    from prefect.exceptions import ObjectNotFound

    process, log = runner
    started = datetime.now(UTC)

    def deployment():
        assert process.poll() is None, f"the runner exited:\n{log.read_text()[-4000:]}"
        try:
            return client.read_deployment_by_name("lgg-pipeline/dvc-experiment")
        except ObjectNotFound:
            return None

    with get_client(sync_client=True) as client:
        served = wait_for(deployment, 60, "no deployment lgg-pipeline/dvc-experiment", log)
        flow_run = client.create_flow_run_from_deployment(served.id, parameters={
            "image_size": 16, "overrides": {"augment.copies": "1"}, "targets": ["augment"],
            "experiment_name": "from-the-ui"})
        def finished():
            run = client.read_flow_run(flow_run.id)
            return run if run.state.is_final() else None

        final = wait_for(finished, 240, "the flow run did not finish", log)
        assert final.state.is_completed(), f"{final.state.message}\n{log.read_text()[-4000:]}"

        def streamed():  # DVC's and the stages' lines, in this run's logs (the API takes them in batches)
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id]),
                                              text=LogFilterTextSearch(query='"Running stage"')))
            return True if any("Running stage 'augment'" in entry.message for entry in logs) else None

        wait_for(streamed, 20, "DVC's output is not in the run's logs", log)
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(
            any_=["lgg-pipeline", "lgg-prepare", "lgg-weightmaps", "lgg-augment"])))
        # the stages DVC ran are the pipeline run's children, in its graph, not runs beside it
        stages = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run.id])))
        nested = {client.read_flow(run.flow_id).name: run.state.type.value for run in stages}
        since = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            start_time=FlowRunFilterStartTime(after_=started)))
        top_level = {client.read_flow(run.flow_id).name for run in since if run.parent_task_run_id is None}

    assert "from-the-ui" in dvc(repo, "exp", "list", "--name-only")
    # the run was an experiment in a copy: the workspace is as it was until the user applies it
    params = yaml.safe_load((repo / "params.yaml").read_text())
    copies = yaml.safe_load(PARAMS.read_text())["augment"]["copies"]
    assert (params["prepare"]["image_size"], params["augment"]["copies"]) == (32, copies)
    assert not (repo / "data").exists()
    recorded = dvc(repo, "exp", "show", "--json")  # the experiment holds the run's params and outputs
    assert '"from-the-ui"' in recorded and '"image_size": 16' in recorded and '"copies": 1' in recorded

    assert nested == dict.fromkeys(["download", "prepare", "weightmaps", "augment"], "COMPLETED")
    assert top_level == {"lgg-pipeline"}
    ours = {a.key: a.data for a in artifacts if a.created >= started}
    assert set(ours) == {"lgg-pipeline", "lgg-prepare", "lgg-weightmaps", "lgg-augment"}
    assert "| download | ran |" in ours["lgg-pipeline"] and "| augment | ran |" in ours["lgg-pipeline"]
    assert "`dvc exp run --temp --name from-the-ui -S augment.copies=1 -S prepare.image_size=16 augment`" \
        in ours["lgg-pipeline"]
    assert "# prepare: 5 patients" in ours["lgg-prepare"] and "at 16 px" in ours["lgg-prepare"]
    assert "| class weight, tumour |" in ours["lgg-weightmaps"]
    for key in ("lgg-weightmaps", "lgg-augment"):  # the stage's picture itself, not a path on the runner
        (picture,) = re.findall(r"\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", ours[key])
        assert base64.b64decode(picture).startswith(b"\x89PNG\r\n\x1a\n"), key
    assert "# augment: 1 copies of" in ours["lgg-augment"]


# -- what an attacker who reaches the API cannot do ------------------------------------------------

@pytest.mark.parametrize("key, value", [("prepare.out_dir", "/home/someone/important"), ("data.path", "/tmp/x"),
                                        ("train.out_dir", "../elsewhere"), ("augment.preview", "/etc/passwd"),
                                        ("mlflow.tracking_uri", "http://evil.example:5000"),
                                        ("cv.executor", "pool"), ("cv.pool.deployment", "other-flow/theirs")])
def test_a_run_cannot_point_the_pipeline_at_another_folder_or_store(key, value, prefect_api, monkeypatch):
    started = []
    monkeypatch.setattr(experiment, "run_dvc", lambda *args: started.append(args))
    state = pipeline.pipeline_flow(overrides={key: value}, return_state=True)
    assert state.is_failed() and not started
    with pytest.raises(ConfigError, match=f"cannot set {key}"):
        state.result()


@pytest.mark.parametrize("key, value, said", [
    ("registry.model_name", "${oc.env:KAGGLE_KEY}", "interpolation"),  # DVC would resolve the serving user's secret
    ("mlflow.experiment", "x-${oc.env:HOME}", "interpolation"),
    ("registry.model_name", "a" * 200_000, "at most 256"),  # once: "Argument list too long"
    ("registry.model_name", "lgg/../unet", "should match pattern"),
    ("data.kaggle_dataset", "../../etc", "is not 'owner/name'")])
def test_a_run_cannot_smuggle_interpolation_or_huge_or_odd_text(key, value, said, prefect_api, monkeypatch):
    started = []
    monkeypatch.setattr(experiment, "run_dvc", lambda *args: started.append(args))
    state = pipeline.pipeline_flow(overrides={key: value}, return_state=True)
    assert state.is_failed() and not started
    with pytest.raises(ConfigError, match=said):
        state.result()


@pytest.mark.parametrize("name", ["--force", "x; rm -rf ~", "../up", "a b"])
def test_an_experiment_name_cannot_smuggle_options(name):
    with pytest.raises(ConfigError, match="experiment_name"):
        experiment.build_command("temp", {}, [], name)


def test_the_flow_takes_no_folder_or_command_parameter():
    import inspect

    names = set(inspect.signature(pipeline.pipeline_flow.fn).parameters)
    assert not names & {"repo", "data_path", "mode", "command", "cwd"}, names


@pytest.fixture(scope="module")
def locked_server(tmp_path_factory):
    """``python -m flows.server`` (what make ui starts) with an auth string, on a free port."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = tmp_path_factory.mktemp("prefect-home")
    env = {**os.environ, "PREFECT_API_AUTH_STRING": "lgg:s3cret"}
    env.pop("PREFECT_API_URL", None)
    log = home / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "flows.server", "--port", str(port), "--home", str(home)],
                                   cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(f"{url}/api/health"), 90, "the locked server did not come up", log)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def _answers(url: str) -> bool | None:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return None


def _post(url: str, headers: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers)


def test_the_ui_server_refuses_a_foreign_page_and_a_caller_without_credentials(locked_server):
    import base64

    api = f"{locked_server}/api/deployments/filter"
    auth = {"Authorization": "Basic " + base64.b64encode(b"lgg:s3cret").decode()}
    evil = {"Origin": "http://evil.example"}
    status, headers = _post(api, evil)
    assert status in (401, 403)  # a foreign page without anything: refused
    assert headers.get("access-control-allow-origin") not in ("*", "http://evil.example")
    status, headers = _post(api, {**evil, **auth})
    assert status == 403  # even with the credentials, no CSRF token: what a page in the user's browser could send
    assert headers.get("access-control-allow-origin") not in ("*", "http://evil.example")
    client = "test-client"
    token_request = urllib.request.Request(f"{locked_server}/api/csrf-token?client={client}", headers=auth)
    with urllib.request.urlopen(token_request, timeout=10) as response:
        csrf = {"Prefect-Csrf-Token": json.loads(response.read())["token"], "Prefect-Csrf-Client": client}
    assert _post(api, csrf)[0] == 401  # a token without the credentials: refused
    assert _post(api, {**auth, **csrf})[0] == 200  # the UI's and the clients' own way in still works


def served_deployment(client, process, log: Path):
    """The pipeline's deployment once the runner has registered it; None until then."""
    from prefect.exceptions import ObjectNotFound

    assert process.poll() is None, f"the runner exited:\n{log.read_text()[-4000:]}"
    try:
        return client.read_deployment_by_name("lgg-pipeline/dvc-experiment")
    except ObjectNotFound:
        return None


def named_revisions(shown, name: str) -> list[dict]:
    """The revisions called ``name`` anywhere in ``dvc exp show --json``'s nesting."""
    if isinstance(shown, list):
        return [rev for item in shown for rev in named_revisions(item, name)]
    if not isinstance(shown, dict):
        return []
    found = [shown] if shown.get("name") == name and "data" in shown else []
    return found + [rev for key in ("experiments", "revs") for rev in named_revisions(shown.get(key) or [], name)]


def test_a_ui_run_reports_its_own_scores_and_says_a_fold_that_did_not_learn(repo, runner, prefect_api):
    """Issue 23, points 1 and 3, as a user meets them: a run started on the served deployment reports the
    experiment's scores (equal to ``dvc exp show``'s for it), not the workspace's (planted here at 0.999),
    and its cross-validation, whose 2-step folds cannot learn, says so in both reports."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    process, log = runner
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    planted = {"metrics/train.json": {"best_val_dsc": 0.999}, "metrics/eval.json": {"split": "test", "dsc_mean": 0.999},
               "metrics/cv.json": {"folds": 2, "dsc_mean": 0.999, "failed_folds": []}}
    for path, content in planted.items():  # the workspace's scores, committed: what a wrong report would show
        (repo / path).parent.mkdir(exist_ok=True)
        (repo / path).write_text(json.dumps(content))
    subprocess.run([*git, "add", "-f", "metrics"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "the workspace's scores"], cwd=repo, check=True)
    started = datetime.now(UTC)
    with get_client(sync_client=True) as client:
        served = wait_for(lambda: served_deployment(client, process, log), 60,
                          "no deployment lgg-pipeline/dvc-experiment", log)
        flow_run = client.create_flow_run_from_deployment(served.id, parameters={
            "image_size": 16, "epochs": 1, "targets": ["evaluate", "cv"], "experiment_name": "scores-of-its-own",
            "overrides": {"augment.copies": "0", "model.features": "4", "model.depth": "2", "train.batch_size": "4",
                          "train.steps_per_epoch": "2", "cv.folds": "2", "cv.epochs": "1",
                          "evaluate.overlay_patients": "1"}})
        final = wait_for(lambda: (r := client.read_flow_run(flow_run.id)) and (r if r.state.is_final() else None),
                         480, "the flow run did not finish", log)
        assert final.state.is_completed(), f"{final.state.message}\n{log.read_text()[-4000:]}"
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["lgg-pipeline",
                                                                                                  "lgg-cv"])))
        reports = {a.key: a.data for a in sorted(found, key=lambda a: a.created) if a.created >= started}
    (row,) = named_revisions(json.loads(dvc(repo, "exp", "show", "--json")), "scores-of-its-own")
    shown = {path.split("/")[-1]: data["data"] for path, data in row["data"]["metrics"].items() if "data" in data}
    report = reports["lgg-pipeline"]
    assert "Scores of this run (experiment scores-of-its-own, refs/exps/" in report and "0.999" not in report
    for figure in (shown["train.json"]["best_val_dsc"], shown["eval.json"]["dsc_mean"], shown["cv.json"]["dsc_mean"]):
        assert f"| {figure:.4g}" in report or f"| {figure}" in report, (figure, report)
    assert "| CV folds that did not learn |" in report, report  # 2 steps a fold: none learns
    assert "did not learn" in reports["lgg-cv"] and "not made champion" in reports["lgg-cv"]


def test_the_served_deployment_refuses_a_parameter_it_does_not_know(repo, runner, prefect_api):
    from prefect.client.orchestration import get_client

    process, log = runner
    with get_client(sync_client=True) as client:
        served = wait_for(lambda: client.read_deployment_by_name("lgg-pipeline/dvc-experiment"), 60,
                          "no deployment lgg-pipeline/dvc-experiment", log)
        experiments = dvc(repo, "exp", "list", "--name-only")
        assert served.parameter_openapi_schema.get("additionalProperties") is False
        runs = len(client.read_flow_runs())
        for parameters in ({"repo": "/tmp/someone-elses-repo"}, {"mode": "repro"}, {"epochs": "many"},
                           {"epochs": 3, "unknown_knob": 1}):
            with pytest.raises(Exception) as refused:  # the API refuses it outright: no run to crash later
                client.create_flow_run_from_deployment(served.id, parameters=parameters)
            assert re.search("(?i)parameter|validation|schema", str(refused.value)), refused.value
        assert len(client.read_flow_runs()) == runs  # not one run was created
    assert dvc(repo, "exp", "list", "--name-only") == experiments  # nothing ran


def test_every_bad_value_is_reported_at_once_with_a_suggestion():
    with pytest.raises(ConfigError) as error:
        checks.validate_overrides(PARAMS, {"train.epoch": "3", "train.epochs": "0", "trian.lr": "1"})
    message = str(error.value)
    assert "3 invalid" in message and "train.epochs: 0" in message
    assert "did you mean 'epochs'?" in message and "did you mean 'train'?" in message


def test_a_failed_run_says_its_message_once_without_a_traceback(prefect_api, monkeypatch):
    monkeypatch.setattr(experiment, "run_dvc", lambda *args: pytest.fail("DVC must not start"))
    state = pipeline.pipeline_flow(overrides={"train.epoch": "3"}, return_state=True)
    assert state.is_failed() and "did you mean 'epochs'?" in state.message and "Traceback" not in state.message
    assert state.message.count("train.epoch") == 1


def test_reports_read_like_reports_without_python_reprs():
    from tasks.reports import registry_report

    text = registry_report({"model_name": "lgg-unet", "decision": "kept", "aliases": ["challenger"],
                            "previous_champion_version": None}, "[abc](http://127.0.0.1:5000/#/x)")
    assert "| aliases | challenger |" in text and "| previous champion version | - |" in text
    assert "[" not in text.split("|")[-1] or "['" not in text  # no list repr
    assert "None" not in text and "The model's MLflow run: [abc](http://127.0.0.1:5000/#/x)" in text


def test_a_stages_lines_are_stamped_once_in_the_pipeline_log(tmp_path):
    """The pipeline's logger stamps and names each line itself: a stage's line keeps neither its own stamp
    nor its own run's (or logger's) name, only the stage's."""
    stage_lines = ["20:34:04.671 | INFO    | Flow run 'x' - Finished in state Completed()",
                   "Running stage 'cv':",
                   "20:34:05.001 | INFO    | Task run 'fold-0' - fold 0, epoch 3: loss 0.9724",
                   "20:34:06.002 | WARNING | unet.cv.stage - cross-validation: 1 patient(s) missed",
                   "> python -m flows cv", "ERROR: failed to reproduce 'cv': a - b"]
    script = "\n".join(f"print({line!r})" for line in stage_lines)
    lines = []
    experiment.run_dvc([sys.executable, "-c", script], tmp_path, lines.append)
    assert lines == ["Flow run 'x' - Finished in state Completed()",  # before any stage: as it came
                     "Running stage 'cv':", "cv: fold 0, epoch 3: loss 0.9724",
                     "cv: cross-validation: 1 patient(s) missed", "> python -m flows cv",
                     "ERROR: failed to reproduce 'cv': a - b"]


def test_a_temp_experiment_reports_its_own_scores_not_the_workspaces(tmp_path):
    """``dvc exp run --temp`` runs in a copy that is gone afterwards: the report reads the scores from
    the experiment's commit (a real DVC repo), not the workspace's metrics files."""
    from tasks.reports import pipeline_report
    from unet.config import PipelineConfig

    repo = tmp_path / "repo"
    (repo / "metrics").mkdir(parents=True)
    train = ("import json, yaml; p = yaml.safe_load(open('params.yaml')); "
             "json.dump({'best_val_dsc': p['score']}, open('metrics/train.json', 'w'))")
    evaluate = ("import json; t = json.load(open('metrics/train.json')); "
                "json.dump({'split': 'test', 'dsc_mean': t['best_val_dsc'] / 2}, open('metrics/eval.json', 'w'))")
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "train": {"cmd": f'{sys.executable} -c "{train}"', "params": ["score"],
                  "metrics": [{"metrics/train.json": {"cache": False}}]},
        "evaluate": {"cmd": f'{sys.executable} -c "{evaluate}"', "deps": ["metrics/train.json"],
                     "metrics": [{"metrics/eval.json": {"cache": False}}]}}}))
    (repo / "params.yaml").write_text("score: 0.9\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    dvc(repo, "init", "-q")
    dvc(repo, "repro")  # the workspace's scores: 0.9 and 0.45
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "baseline"], cwd=repo, check=True)
    summary = experiment.run_experiment(repo, PipelineConfig(), {"score": "0.2"}, [], mode="temp", name="low",
                                        force=False, log=lambda _: None)
    assert summary["status"] == "ok" and summary["experiment"] == "low", summary["tail"]
    assert summary["metrics"] == {"best val DSC": 0.2, "test DSC mean": 0.1}  # the experiment's, not 0.9 / 0.45
    assert json.loads((repo / "metrics/train.json").read_text())["best_val_dsc"] == 0.9  # workspace untouched
    shown = json.loads(dvc(repo, "exp", "show", "--json"))
    assert "0.2" in json.dumps(shown) and summary["metrics_from"].startswith("refs/exps/")
    assert "Scores of this run (experiment low, refs/exps/" in pipeline_report(summary)
