"""The train stage as users run it: the flows in order on a tiny set, then a killed run resumed.

The kill is real: ``python -m flows.train`` in a subprocess, SIGKILL once its first checkpoint is
on disk, then the same command with ``train.resume: true`` continues after that epoch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from unet.config import parse_config
from unet.io import nifti
from unet.models.checkpoint import load_checkpoint, model_from_checkpoint

from conftest import make_raw_tree, tiny_stage_params

REPO = Path(__file__).resolve().parents[1]


def params_for(root: Path, **train) -> dict:
    return tiny_stage_params(root, **train)


@pytest.fixture(scope="module")
def stage_root(tmp_path_factory, prefect_api) -> Path:
    """Raw tree -> prepare -> weightmaps -> augment, through the flows themselves."""
    from flows import augment, prepare, weightmaps

    root = tmp_path_factory.mktemp("stages")
    make_raw_tree(root / "raw/kaggle_3m", patients=6, slices=6, size=32)
    config = parse_config(params_for(root))
    prepare.run(config)
    weightmaps.run(config)
    augment.run(config)
    return root


def test_train_flow_writes_checkpoints_curves_and_metrics(stage_root):
    from flows import train

    summary = train.run(parse_config(params_for(stage_root)))
    models = stage_root / "models"
    assert summary["epochs"] == 2 and summary["device"] == "cpu" and 0 <= summary["best_val_dsc"] <= 1
    history = pd.read_csv(stage_root / "metrics/train_history.csv")
    assert list(history["epoch"]) == [1, 2] and {"loss", "val_dsc"} <= set(history.columns)
    written = json.loads((stage_root / "metrics/train.json").read_text())
    assert written["best_epoch"] == summary["best_epoch"] and summary["images_per_s"] > 0
    # how fast it ran is the machine's: logged, never in what DVC and git keep (the same bytes on a rerun)
    assert not {"images_per_s", "epoch_seconds"} & (set(history.columns) | set(written))
    assert not {"images_per_s", "epoch_seconds"} & set(load_checkpoint(models / "checkpoint.pt")["history"][0])
    checkpoint = load_checkpoint(models / "checkpoint.pt")
    assert checkpoint["train_config"]["lr"] == 1e-3 and checkpoint["model_config"]["depth"] == 2
    assert model_from_checkpoint(models / "best.pt").config["features"] == 4
    assert (stage_root / "metrics/train_curve.png").read_bytes()[:4] == b"\x89PNG"  # readable offline


def test_evaluate_flow_writes_metrics_predictions_and_overlays(stage_root):
    from flows import evaluate, train

    config = parse_config(params_for(stage_root))
    if not (stage_root / "models/best.pt").exists():
        train.run(config)
    metrics = evaluate.run(config)
    saved = json.loads((stage_root / "metrics/eval.json").read_text())
    assert saved["split"] == "test" and saved["n_volumes"] >= 1 and "val" in saved
    assert {"dsc_mean", "dsc_median", "hd95_mean", "global_dice", "tumour_slice_dice"} <= set(saved)
    assert saved["dsc_mean"] == pytest.approx(metrics["dsc_mean"])
    table = pd.read_csv(stage_root / "metrics/per_patient.csv")
    assert set(table["split"]) == {"test", "val"}
    assert (stage_root / "metrics/per_patient.png").read_bytes()[:4] == b"\x89PNG"  # readable offline
    predictions = sorted((stage_root / "predictions").glob("*_pred.nii.gz"))
    assert len(predictions) == len(table)
    volume, _ = nifti.read_volume(predictions[0])
    assert volume.shape == (6, 32, 32)  # the raw geometry: 6 slices of 32x32
    assert 1 <= len(list((stage_root / "overlays").glob("*.png"))) <= 2


def run_train(params: Path, api: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_API_URL": api, "PYTHONPATH": str(REPO), "PREFECT_LOGGING_LEVEL": "INFO"}
    return subprocess.Popen([sys.executable, "-m", "flows.train", "--params", str(params)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_killed_run_resumes_after_its_last_checkpoint(stage_root, prefect_api, tmp_path):
    out = tmp_path / "models"
    params = params_for(stage_root, epochs=200, out_dir=str(out), metrics_dir=str(tmp_path / "metrics"))
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    process = run_train(path, prefect_api, REPO)
    deadline = time.monotonic() + 300
    while not (out / "checkpoint.pt").exists():
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint within 5 minutes"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = load_checkpoint(out / "checkpoint.pt")["epoch"]
    assert 1 <= done < 200

    params["train"].update(resume=True, epochs=done + 2)
    path.write_text(yaml.safe_dump(params))
    resumed = run_train(path, prefect_api, REPO)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert f"resuming after epoch {done}" in output
    history = pd.read_csv(tmp_path / "metrics/train_history.csv")
    assert list(history["epoch"]) == list(range(1, done + 3))
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == done + 2


def test_resume_with_another_recipe_is_refused(stage_root, prefect_api, tmp_path):
    from flows import train

    params = params_for(stage_root, epochs=1, out_dir=str(tmp_path / "models"), metrics_dir=str(tmp_path / "m"))
    train.run(parse_config(params))
    params["train"].update(resume=True, epochs=2, lr=0.5)
    with pytest.raises(ValueError, match="train.lr"):
        train.run(parse_config(params))


def test_a_failed_resume_leaves_the_finished_run_as_it_was(stage_root, tmp_path):
    """A truncated checkpoint stops the stage before any MLflow run is reopened or the run file rewritten."""
    from mlflow import MlflowClient

    from flows import train
    from unet.errors import InputError

    params = params_for(stage_root, epochs=1, out_dir=str(tmp_path / "models"), metrics_dir=str(tmp_path / "m"))
    train.run(parse_config(params))
    run_file = tmp_path / "models/mlflow_run.json"
    record = json.loads(run_file.read_text())
    assert "model_uri" in record
    checkpoint = tmp_path / "models/checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # truncated, as by a full disk
    params["train"].update(resume=True, epochs=2)
    with pytest.raises(InputError, match="not a readable lgg-unet checkpoint"):
        train.run(parse_config(params))
    assert json.loads(run_file.read_text()) == record
    assert MlflowClient().get_run(record["run_id"]).info.status == "FINISHED"


def test_resuming_after_a_finished_run_opens_a_new_run_linked_to_it(stage_root, tmp_path):
    from mlflow import MlflowClient

    from flows import train

    params = params_for(stage_root, epochs=1, out_dir=str(tmp_path / "models"), metrics_dir=str(tmp_path / "m"))
    train.run(parse_config(params))
    first = json.loads((tmp_path / "models/mlflow_run.json").read_text())["run_id"]
    params["train"].update(resume=True, epochs=2)
    train.run(parse_config(params))
    second = json.loads((tmp_path / "models/mlflow_run.json").read_text())["run_id"]
    client = MlflowClient()
    assert second != first and client.get_run(second).data.tags["resumed_from"] == first
    assert client.get_run(first).info.status == "FINISHED" and client.get_run(second).info.status == "FINISHED"
    assert "model_uri" in json.loads((tmp_path / "models/mlflow_run.json").read_text())


def test_no_elastic_copies_still_draws_the_stage_picture_dvc_declares(stage_root, tmp_path):
    """``augment.copies: 0`` is allowed (training deforms on the fly): the stage still writes its picture,
    the slices and their weight maps, since dvc.yaml declares it (a missing output failed the stage)."""
    from flows import augment

    params = params_for(stage_root)
    params["augment"].update(copies=0, out_dir=str(tmp_path / "augmented"), preview=str(tmp_path / "grid.png"))
    summary = augment.run(parse_config(params))
    assert summary["copies"] == 0 and summary["bytes"] == 0
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
