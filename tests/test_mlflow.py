"""MLflow for real: a SQLite store in a temporary folder, the stages' flows on a tiny set, the registry,
the champion loaded in a fresh process and served over HTTP.

The tiny set is raw 32x32 slices: the pyfunc model takes any slice size (it resizes inside), so
the (N, 256, 256, 3) -> (N, 256, 256) contract of the Kaggle data is checked here as
(N, 32, 32, 3) -> (N, 32, 32).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tasks import evaluate as evaluate_tasks
from tasks import tracking, trained
from tasks import train as train_tasks
from unet.config import MlflowConfig, parse_config
from unet.models.checkpoint import weights_digest
from unet.register.decision import decide, run_score

from conftest import make_raw_tree, tiny_stage_params

MODEL = "lgg-unet-test"


def params_for(root: Path, metrics_dir: str = "metrics") -> dict:
    return {**tiny_stage_params(root, metrics_dir=metrics_dir, overlay_patients=1),
            "registry": {"model_name": MODEL, "out_dir": str(root / metrics_dir), "champion_floor": 0.0,
                         "receipt_path": str(root / metrics_dir / "registered.json")},
            "mlflow": {"experiment": "lgg-test"}}


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, prefect_api):
    """Raw tree -> prepare -> weightmaps -> augment -> train -> evaluate -> register, into a tmp store."""
    from flows import augment, evaluate, prepare, register, train, weightmaps

    root = tmp_path_factory.mktemp("tracked")
    make_raw_tree(root / "raw/kaggle_3m", patients=6, slices=6, size=32)
    config = parse_config(params_for(root))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        patch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
        for stage in (prepare, weightmaps, augment, train, evaluate):
            stage.run(config)
        register.run(config)
        yield root, config


def client():
    from mlflow import MlflowClient

    return MlflowClient(os.environ["MLFLOW_TRACKING_URI"])


@pytest.mark.parametrize(("environ", "configured", "expected"), [
    ({}, None, "sqlite:///{root}/mlflow.db"),
    ({"DVC_ROOT": "/elsewhere"}, None, "sqlite:////elsewhere/mlflow.db"),  # dvc exp run --temp: the real repo
    ({}, "sqlite:///runs/m.db", "sqlite:///{root}/runs/m.db"),  # relative: from the repo, not the CWD
    ({}, "sqlite:////abs/m.db", "sqlite:////abs/m.db"),
    ({}, "http://tracking:5000", "http://tracking:5000"),
    ({"MLFLOW_TRACKING_URI": "http://env:5000"}, "http://tracking:5000", "http://env:5000"),
])
def test_tracking_uri_env_then_params_then_the_repo_sqlite(tmp_path, environ, configured, expected):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "flows").mkdir()
    uri = tracking.tracking_uri(MlflowConfig(tracking_uri=configured), environ, cwd=tmp_path / "flows")
    assert uri == expected.format(root=tmp_path.resolve())


@pytest.mark.parametrize(("evaluation", "expected"), [
    ({"split": "test", "tta": False, "dsc_mean": 0.9, "n_volumes": 3, "val": {"dsc_mean": 0.8}},
     {"test_dsc_mean": 0.9, "test_n_volumes": 3.0, "val_dsc_mean": 0.8}),
    ({"split": "val", "dsc_mean": 0.7, "hd95_mean": None}, {"val_dsc_mean": 0.7}),  # reference split: no test
])
def test_evaluation_metrics_are_prefixed_by_split(evaluation, expected):
    assert evaluate_tasks.evaluation_metrics(evaluation) == expected


@pytest.mark.parametrize(("version", "score", "champion", "decision"), [
    ("1", 0.5, None, "first"),
    ("2", 0.9, ("1", 0.8), "promoted"),
    ("2", 0.8, ("1", 0.8), "kept"),  # a tie keeps the champion
    ("2", 0.7, ("1", 0.8), "kept"),
    ("1", 0.8, ("1", 0.8), "unchanged"),
])
def test_decide_moves_champion_only_on_a_better_score(version, score, champion, decision):
    assert decide(version, score, champion) == decision


@pytest.mark.parametrize(("score", "champion", "held", "decision"), [
    (0.33, None, None, "below-floor"),  # the demo's first CV ensemble once: never champion, not even the first
    (0.95, ("1", 0.8), None, "promoted"),
    (0.49, ("1", 0.3), None, "below-floor"),  # better than a weak champion, still under the floor
    (0.90, None, "1 fold(s) did not learn", "held"),
])
def test_a_champion_must_meet_the_floor_and_have_no_failed_fold(score, champion, held, decision):
    assert decide("2", score, champion, floor=0.5, held=held) == decision


@pytest.mark.parametrize(("metrics", "expected"), [
    ({"val_dsc_mean": 0.8, "best_val_dsc": 0.9}, ("val_dsc_mean", 0.8)),
    ({"epoch_val_dsc_shipped": 0.9, "loss": 0.1}, ("epoch_val_dsc_shipped", 0.9)),
    ({"best_val_dsc": 0.9, "loss": 0.1}, ("best_val_dsc", 0.9)),  # a run logged before the name changed
])
def test_run_score_prefers_evaluate_over_train(metrics, expected):
    assert run_score(metrics) == expected


def test_run_score_without_scores_says_what_to_run():
    with pytest.raises(ValueError, match="dvc repro evaluate"):
        run_score({"loss": 0.1})


def test_the_printed_mlflow_link_opens_the_experiments_runs_in_the_model_training_view(tmp_path):
    from mlflow import MlflowClient

    config = MlflowConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="lgg-link")
    environ = {"MLFLOW_PORT": "5123"}
    assert tracking.experiment_link(config, environ) == "http://127.0.0.1:5123"  # no experiment yet: the UI's home
    experiment_id = MlflowClient(config.tracking_uri).create_experiment("lgg-link")  # this process's MLflow untouched
    assert tracking.experiment_link(config, environ) == \
        f"http://127.0.0.1:5123/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    served = MlflowConfig(tracking_uri="http://mlflow.example:5555/", experiment="lgg-link")
    assert tracking.ui_base(served.tracking_uri, environ) == "http://mlflow.example:5555"


def test_the_printed_link_shows_the_runs_in_a_browser(tmp_path):
    """The summary's link, opened in headless Chromium against a real ``mlflow server`` (as ``make ui``
    starts it): the experiment's runs table, with the run in it. The experiment's bare page opens the
    GenAI view, where the run is not listed: why the link names ``workflowType=machine_learning``."""
    from mlflow import MlflowClient

    from browser import rendered

    store = MlflowConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="lgg-link")
    client = MlflowClient(store.tracking_uri)
    experiment_id = client.create_experiment(store.experiment, tags=tracking.EXPERIMENT_TAGS,
                                             artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(experiment_id, run_name="reference-32px-probe")
    client.log_metric(run.info.run_id, "val_dsc_mean", 0.5)
    client.set_terminated(run.info.run_id)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", store.tracking_uri, "--artifacts-destination", str(tmp_path / "a")],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "server.log").open("w"), start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
                time.sleep(0.5)
        link = tracking.experiment_link(store, {"MLFLOW_PORT": str(port)})
        assert "workflowType=machine_learning" in link
        assert "reference-32px-probe" in rendered(link)
        assert "reference-32px-probe" not in rendered(f"http://127.0.0.1:{port}/#/experiments/{experiment_id}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.mark.parametrize(("nfiles", "source"), [(2, "dvc.lock"), (3, "manifest.parquet")])
def test_data_hash_from_dvc_lock_only_while_it_matches_the_folder(tmp_path, nfiles, source):
    prepared = tmp_path / "data/prepared"
    prepared.mkdir(parents=True)
    (prepared / "manifest.parquet").write_bytes(b"manifest")
    (prepared / "summary.json").write_bytes(b"{}")
    out = {"path": "data/prepared", "md5": "0123456789abcdef0123456789abcdef.dir", "size": 10, "nfiles": nfiles}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"stages": {"prepare": {"outs": [out]}}}))
    digest, found = tracking.prepared_data_hash(prepared, tmp_path)
    assert found == source
    assert digest == (out["md5"] if source == "dvc.lock" else hashlib.md5(b"manifest").hexdigest())


def test_train_and_evaluate_log_into_one_run(tracked):
    root, config = tracked
    record = json.loads(config.train.run_path.read_text())
    runs = client().search_runs([client().get_experiment_by_name(config.mlflow.experiment).experiment_id])
    assert [r.info.run_id for r in runs] == [trained.train_record(config)["run_id"]]  # found by its weights
    run = runs[0]
    assert run.data.tags[trained.WEIGHTS_TAG] == weights_digest([config.train.best_path])
    assert (run.data.tags["model_id"], run.data.tags["model_uri"]) == (record["model_id"], record["model_uri"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.001" and run.data.params["model.features"] == "4"
    assert run.data.params["data.path"] == "null" and run.data.params["prepare.clip_percentiles"] == "[10.0, 99.0]"
    manifest_md5 = hashlib.md5((root / "prepared/manifest.parquet").read_bytes()).hexdigest()
    assert run.data.tags["data.digest"] == manifest_md5  # prepared outside DVC: the manifest's digest
    if commit := train_tasks.git_commit(tracking.repo_root()):  # pytest started inside the git checkout
        assert run.data.tags["mlflow.source.git.commit"] == commit
    experiment = client().get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the model-training view
    assert run.info.run_name == "reference-32px-2ep" and "train stage" in run.data.tags["mlflow.note.content"]
    # the split parts as the run's datasets, each with its context, digested as the data version
    inputs = sorted((d.dataset.name, d.dataset.digest, [(t.key, t.value) for t in d.tags])
                    for d in run.inputs.dataset_inputs)
    assert inputs == [(f"lgg-prepared-{part}", manifest_md5, [("mlflow.data.context", context)])
                      for part, context in (("test", "test"), ("train", "training"), ("val", "validation"))]
    manifest = pd.read_parquet(root / "prepared/manifest.parquet")
    assert json.loads(next(d.dataset.profile for d in run.inputs.dataset_inputs
                           if d.dataset.name == "lgg-prepared-test"))["num_rows"] == (manifest.split == "test").sum()
    # the logged model's figures name the data they were measured on: its page lists those datasets
    model = client().get_logged_model(record["model_id"])
    named = {m.key: m.dataset_name for m in model.metrics}
    assert named["test_dsc_mean"] == "lgg-prepared-test" and named["val_dsc_mean"] == "lgg-prepared-val"
    assert named["epoch_val_dsc_shipped"] == "lgg-prepared-val" and named["mean_images_per_s"] is None
    assert {m.dataset_digest for m in model.metrics if m.dataset_name} == {manifest_md5}
    for name in ("loss", "epoch_val_dsc", "epoch_val_dsc_median", "images_per_s"):  # per-epoch curves: no step-0 point
        assert [m.step for m in client().get_metric_history(run.info.run_id, name)] == [1, 2]
    # one name, one figure: val_* is only the evaluate stage's (original grid), never mixed with the curve
    assert [m.step for m in client().get_metric_history(run.info.run_id, "val_dsc_median")] == [0]
    assert {k for k in run.data.metrics if "val_dsc" in k and not k.startswith(("val_", "epoch_val_"))} == set()
    assert run.data.metrics["mean_images_per_s"] > 0
    assert any(key.startswith("system/") for key in run.data.metrics)
    evaluation = json.loads((root / "metrics/eval.json").read_text())
    assert run.data.metrics["test_dsc_mean"] == pytest.approx(evaluation["dsc_mean"])
    assert run.data.metrics["val_dsc_mean"] == pytest.approx(evaluation["val"]["dsc_mean"])
    artifacts = {a.path for folder in ("figures", "metrics", "evaluate", "evaluate/overlays")
                 for a in client().list_artifacts(run.info.run_id, folder)}
    assert {"figures/grid.png", "metrics/train_history.csv", "evaluate/eval.json",
            "evaluate/per_patient.csv"} <= artifacts and any(p.startswith("evaluate/overlays/") for p in artifacts)
    assert record["model_uri"] == f"models:/{record['model_id']}"
    assert (root / "mlartifacts/lgg-test").is_dir()  # artifacts beside the store, not in the CWD


def test_a_killed_training_resumed_goes_on_in_its_own_run(tracked, tmp_path):
    from flows import train

    root, _ = tracked
    params = params_for(root)
    params["train"].update(epochs=1, out_dir=str(tmp_path / "models"), metrics_dir=str(tmp_path / "metrics"))
    train.run(parse_config(params))
    first = json.loads((tmp_path / "models/mlflow_run.json").read_text())["run_id"]
    client().update_run(first, status="RUNNING")  # as a SIGKILL leaves it: the run never finished
    params["train"].update(epochs=2, resume=True)
    train.run(parse_config(params))
    record = json.loads((tmp_path / "models/mlflow_run.json").read_text())
    assert record["run_id"] == first and "model_uri" in record
    assert [m.step for m in client().get_metric_history(first, "epoch_val_dsc")] == [1, 2]
    run = client().get_run(first)
    assert run.data.params["train.epochs"] == "1" and run.data.tags["resume.train.epochs"] == "2"


def fake_run(root: Path, config, name: str, score: float, same_weights: bool = False) -> object:
    """Another finished run with a chosen validation DSC, as the register stage sees it: its own
    weights (the trained ones, nudged by a seed from ``name``), or the same ones (``same_weights``)."""
    import torch

    from tasks import mlflow_model
    from unet.models.checkpoint import load_checkpoint, save_checkpoint

    experiment = client().get_experiment_by_name(config.mlflow.experiment).experiment_id
    run_id = client().create_run(experiment).info.run_id
    tracking.log_metrics(run_id, {"val_dsc_mean": score})
    state = load_checkpoint(config.train.best_path)
    if not same_weights:
        generator = torch.Generator().manual_seed(int(hashlib.sha256(name.encode()).hexdigest()[:8], 16))
        state["model"] = {k: v + 1e-4 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
                          for k, v in state["model"].items()}
    checkpoint = save_checkpoint(root / name / "models/best.pt", state)
    slices = np.stack([np.zeros((32, 32, 3), np.uint8)] * 2)
    info = mlflow_model.log_model(run_id, checkpoint, slices)
    trained.tag_trained_weights(run_id, checkpoint, {"model_id": info.model_id, "model_uri": info.model_uri})
    client().set_terminated(run_id)
    params = params_for(root, metrics_dir=name)
    params["train"]["out_dir"] = str(root / name / "models")
    return parse_config(params)


def test_register_keeps_the_champion_unless_a_version_scores_better(tracked):
    from flows import register

    root, config = tracked
    first = {**json.loads((root / "metrics/registry.json").read_text()), "run_id": trained.train_record(config)["run_id"]}
    assert (first["version"], first["decision"], first["aliases"]) == (1, "first", ["challenger", "champion"])
    assert first["score_metric"] == "val_dsc_mean"
    score = first["score"]
    version = client().get_model_version(MODEL, "1")
    assert "Intended use" in version.description  # the model card is the version's description
    exported = {a.path for a in client().list_artifacts(first["run_id"], "export")}
    assert {"export/model.onnx", "export/model.torchscript.pt", "export/MODEL_CARD.md"} <= exported
    assert first["export"]["passed"] and client().get_run(first["run_id"]).data.metrics["export_mask_agreement"] > 0.99
    tags = client().get_model_version(MODEL, "1").tags  # the figure decided on, under its own name
    assert float(tags["val_dsc_mean"]) == score and tags["score_metric"] == "val_dsc_mean"
    assert "val_dsc" not in tags  # that name is the per-epoch curve at the network's grid
    model_id = trained.train_record(config)["model_id"]
    shown = {m.key: m.value for m in client().get_logged_model(model_id).metrics}
    assert shown["val_dsc_mean"] == pytest.approx(score) and "test_dsc_mean" in shown

    worse = register.run(fake_run(root, config, "worse", max(score - 0.1, 0.0)))
    assert (worse["version"], worse["decision"], worse["aliases"]) == (2, "kept", ["challenger"])
    assert worse["champion_version"] == 1 and worse["previous_champion_score"] == pytest.approx(score)

    better_config = fake_run(root, config, "better", score + 0.1)
    better = register.run(better_config)
    assert (better["version"], better["decision"], better["aliases"]) == (3, "promoted", ["challenger", "champion"])
    assert json.loads((root / "better/registry.json").read_text()) == {k: v for k, v in better.items() if k != "run_id"}
    again = register.run(better_config)  # the same run again: no new version
    assert (again["version"], again["decision"]) == (3, "unchanged")
    aliases = client().get_registered_model(MODEL).aliases
    assert aliases == {"champion": 3, "challenger": 3}
    rerun = register.run(fake_run(root, config, "rerun", score + 0.2, same_weights=True))  # a rerun, same weights
    # the first run that trained these weights is the one scored and registered: version 1 again, not a copy
    # as 4, with its own score (the rerun's 0.2 more goes nowhere), so the better version 3 stays champion
    assert (rerun["version"], rerun["run_id"], rerun["score"]) == (1, first["run_id"], pytest.approx(score))
    assert rerun["decision"] == "kept" and len(client().search_model_versions(f"name = '{MODEL}'")) == 3
    assert client().get_registered_model(MODEL).aliases == {"champion": 3, "challenger": 1}


def test_a_version_under_the_default_floor_is_never_champion(tracked):
    """registry.champion_floor at its default (0.5 DSC): a model under it is registered as challenger only
    ("no champion yet", said with why), and the first one over it becomes champion."""
    from flows import register
    from unet.config import RegistryConfig

    root, config = tracked
    floor = RegistryConfig().champion_floor
    assert floor == 0.5

    def with_default_floor(run_config):
        registry = run_config.registry.model_copy(update={"model_name": "lgg-test-floor",
                                                          "champion_floor": floor})
        return run_config.model_copy(update={"registry": registry})

    weak = register.run(with_default_floor(fake_run(root, config, "weak", 0.3)))
    assert (weak["decision"], weak["aliases"], weak["champion_version"]) == ("below-floor", ["challenger"], None)
    assert weak["why"] == "DSC 0.300 is under registry.champion_floor 0.5"
    assert "champion" not in client().get_registered_model("lgg-test-floor").aliases
    good = register.run(with_default_floor(fake_run(root, config, "good", 0.6)))
    assert (good["decision"], good["aliases"]) == ("first", ["challenger", "champion"])


def test_an_export_that_fails_moves_no_alias(tracked, tmp_path):
    """The export runs before the aliases: a version whose export fails is no champion, nor challenger."""
    from flows import register
    from unet.errors import UserError

    root, config = tracked
    before = client().get_registered_model(MODEL).aliases
    best = max(float(v.tags[v.tags.get("score_metric", "val_dsc_mean")])
               for v in client().search_model_versions(f"name = '{MODEL}'"))
    fake_run(root, config, "broken-export", best + 0.5)  # it would be promoted
    (tmp_path / "best.pt").write_bytes(b"not a checkpoint")  # what the export reads
    params = params_for(root, metrics_dir="broken-export")
    params["train"]["out_dir"] = str(tmp_path)
    with pytest.raises(UserError):
        register.run(parse_config(params))
    assert client().get_registered_model(MODEL).aliases == before
    assert not (root / "broken-export/registry.json").exists()


@pytest.fixture(scope="module")
def patient(tracked):
    """One raw patient volume (6, 32, 32, 3) uint8 and the mask the checkpoint gives it in-process."""
    from unet.io.kaggle import read_image
    from unet.predict.segmenter import Segmenter

    root, _ = tracked
    manifest = pd.read_parquet(root / "prepared/manifest.parquet")
    rows = manifest[manifest["patient"] == manifest["patient"].iloc[0]].sort_values("index")
    slices = np.stack([read_image(Path(p)) for p in rows["image_path"]])
    return slices, Segmenter.from_checkpoint(root / "models/best.pt").segment(slices)


def test_the_champion_segments_raw_slices_in_a_fresh_process(tracked, patient, tmp_path):
    slices, expected = patient
    np.save(tmp_path / "slices.npy", slices)
    code = ("import sys, mlflow, numpy as np; model = mlflow.pyfunc.load_model(f'models:/{sys.argv[1]}@champion'); "
            "np.save(sys.argv[3], model.predict(np.load(sys.argv[2])))")
    subprocess.run([sys.executable, "-c", code, MODEL, tmp_path / "slices.npy", tmp_path / "mask.npy"],
                   cwd=tmp_path, env=os.environ, check=True, timeout=120)
    mask = np.load(tmp_path / "mask.npy")
    assert mask.dtype == np.uint8 and mask.shape == slices.shape[:3] and set(np.unique(mask)) <= {0, 1}
    np.testing.assert_array_equal(mask, expected)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_models_serve_answers_with_the_mask(tracked, patient, tmp_path):
    slices, expected = patient
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{MODEL}@champion",
               "--env-manager", "local", "--host", "127.0.0.1", "-p", str(port)]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # uvicorn
    server = subprocess.Popen(command, cwd=tmp_path, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "w"))
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "no /ping answer in 120 s:\n" + (tmp_path / "serve.log").read_text()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.3)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                         data=json.dumps({"inputs": slices.tolist()}).encode(),
                                         headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
        refused = {}  # wrong input: a 4xx that says what the model takes, never a confident wrong mask
        zscored = (slices - slices.mean()) / slices.std()
        for name, bad in {"normalised floats": (slices / 255.0).tolist(),
                          "z-scored floats": np.clip(zscored, -0.99, None).tolist(),  # > -1: cast, not overflowed
                          "out of range": (slices.astype(np.int64) * 2).tolist(),
                          "one channel": slices[..., 0].tolist()}.items():
            wrong = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                           data=json.dumps({"inputs": bad}).encode(),
                                           headers={"Content-Type": "application/json"})
            with pytest.raises(urllib.error.HTTPError) as error:
                urllib.request.urlopen(wrong, timeout=60)
            refused[name] = (error.value.code, error.value.read().decode())
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # the CLI and the uvicorn it started, in their own session
        server.wait(timeout=30)
    np.testing.assert_array_equal(np.asarray(answer["predictions"], np.uint8), expected)
    assert all(400 <= code < 500 for code, _ in refused.values()), refused
    assert "normalised" in refused["normalised floats"][1]
    assert "z-scored" in refused["z-scored floats"][1], refused["z-scored floats"]


@pytest.mark.parametrize("bad, message", [(lambda s: (s / 255.0).astype(np.float32), "dtype"),
                                          (lambda s: (s > 128).astype(np.uint8), "within 0..1 only")])
def test_the_model_refuses_what_is_not_raw_slices(tracked, patient, bad, message):
    import mlflow
    from mlflow.exceptions import MlflowException

    slices, expected = patient
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    with pytest.raises(MlflowException, match=message):
        model.predict(bad(slices))


@pytest.mark.parametrize("values, message", [(np.full((2, 4, 4, 3), 0.5), "values 0.5..0.5"),
                                             (np.full((2, 4, 4, 3), 300), "values 300..300"),
                                             (np.ones((2, 4, 4, 3)), "within 0..1 only"),
                                             (np.arange(2 * 4 * 4 * 3).reshape(2, 4, 4, 3) % 6, "within 0..5 only")])
def test_raw_slices_are_whole_values_0_to_255(values, message):
    from unet.errors import InputError
    from unet.predict.segmenter import as_slices

    with pytest.raises(InputError, match=message):
        as_slices(values)
    assert as_slices(np.full((1, 2, 2, 3), 200.0)).dtype == np.uint8


def test_the_model_is_logged_as_code_not_as_a_pickle(tracked):
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}@champion"))
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert (local / "pyfunc_model.py").is_file() and not (local / "python_model.pkl").exists()


def test_a_model_pickled_before_the_pyfunc_became_code_still_loads(tracked, patient, monkeypatch):
    """Registered models from before pickled ``tasks.mlflow_model.LggUnetModel``; they load from the checkout."""
    import mlflow
    from mlflow.models import Model

    from tasks import mlflow_model, pyfunc_model

    root, config = tracked
    experiment = client().get_experiment_by_name(config.mlflow.experiment).experiment_id
    run_id = client().create_run(experiment).info.run_id
    monkeypatch.setattr(pyfunc_model.LggUnetModel, "__module__", "tasks.mlflow_model")  # the old class's home
    info = Model.log(artifact_path=None, name="old-style", flavor=mlflow.pyfunc, run_id=run_id,
                     python_model=pyfunc_model.LggUnetModel(), artifacts={"checkpoint": str(config.train.best_path)},
                     signature=mlflow_model.SIGNATURE, pip_requirements=mlflow_model.requirements())
    monkeypatch.undo()
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri))
    assert b"tasks.mlflow_model" in (local / "python_model.pkl").read_bytes()
    slices, expected = patient
    np.testing.assert_array_equal(mlflow.pyfunc.load_model(info.model_uri).predict(slices), expected)


def test_the_bounded_server_takes_npy_and_json_and_refuses_what_it_must(tracked, patient):
    import io

    import mlflow
    from starlette.testclient import TestClient

    from unet.serve.app import NPY, create_app

    slices, expected = patient
    client_ = TestClient(create_app(mlflow.pyfunc.load_model(f"models:/{MODEL}@champion"), max_bytes=1_000_000),
                         base_url="http://127.0.0.1")
    body = io.BytesIO()
    np.save(body, slices)
    answer = client_.post("/invocations", content=body.getvalue(), headers={"Content-Type": NPY, "Accept": NPY})
    assert answer.status_code == 200
    np.testing.assert_array_equal(np.load(io.BytesIO(answer.content)), expected)
    as_json = client_.post("/invocations", json={"inputs": slices.tolist()})
    np.testing.assert_array_equal(np.asarray(as_json.json()["predictions"], np.uint8), expected)
    assert len(body.getvalue()) < len(json.dumps({"inputs": slices.tolist()})) / 3  # the compact way
    normalised = client_.post("/invocations", json={"inputs": (slices / 255.0).tolist()})
    assert normalised.status_code == 400 and "0..255" in normalised.json()["message"]
    too_big = client_.post("/invocations", content=b"0" * 1_000_001, headers={"Content-Type": NPY})
    assert too_big.status_code == 413 and "at most 1,000,000" in too_big.json()["message"]
    assert client_.post("/invocations", content=b"junk", headers={"Content-Type": NPY}).status_code == 400


@pytest.mark.parametrize(("key", "part"), [
    ("val_dsc_mean", "val"), ("epoch_val_dsc", "val"), ("epoch_val_dsc_shipped", "val"), ("best_val_dsc", "val"),
    ("test_hd95_median", "test"), ("cv_dsc_mean", "all"),
    ("train_rows", "train"), ("loss", "train"), ("mean_images_per_s", None), ("export_max_abs_diff", None),
])
def test_each_metric_names_the_split_part_it_is_measured_on(key, part):
    assert tracking.dataset_for(key) == part


def test_split_datasets_are_the_parts_rows_under_one_data_version(tmp_path):
    manifest = pd.DataFrame({"patient": list("aabbc"), "split": ["train", "train", "val", "val", "train"]})
    datasets = tracking.split_datasets(manifest, tmp_path, "0123456789abcdef0123456789abcdef.dir")
    assert sorted(datasets) == ["all", "train", "val"]  # no test part here: no empty dataset
    assert {d.digest for d in datasets.values()} == {"0123456789abcdef0123456789abcdef"}
    assert [json.loads(datasets[p].profile)["num_rows"] for p in ("train", "val", "all")] == [3, 2, 5]
    assert datasets["val"].name == "lgg-prepared-val" and datasets["val"].source == json.dumps({"uri": str(tmp_path)})
