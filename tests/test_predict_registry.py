"""lgg-predict on a registered model (models:/NAME@ALIAS), from a folder outside the checkout, in a fresh
process: the train stage's single model and the cv stage's fold ensemble, against a real MLflow registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from mlflow import MlflowClient
from test_predict import box_volume, save_model, write_folder

from unet.errors import InputError
from unet.predict import registry
from unet.predict.ensemble import EnsembleSegmenter
from unet.predict.scan import read_scan
from unet.predict.segmenter import Segmenter

LGG_PREDICT = Path(sys.executable).with_name("lgg-predict")


def register(name: str, log) -> None:
    """A run in the current store, the model ``log(run_id)`` logs in it, registered as ``name``@champion."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name("lgg-predict-registry") or client.get_experiment(
        client.create_experiment("lgg-predict-registry"))
    run_id = client.create_run(experiment.experiment_id).info.run_id
    info = log(run_id)
    client.set_terminated(run_id)
    version = client.create_model_version(name, info.model_uri, run_id) if client.search_registered_models(
        f"name = '{name}'") else None
    if version is None:
        client.create_registered_model(name)
        version = client.create_model_version(name, info.model_uri, run_id)
    client.set_registered_model_alias(name, "champion", version.version)


@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> dict:
    """Two registered models in a store of their own, which this process and the commands it starts
    (through MLFLOW_TRACKING_URI) both use, whatever an earlier test left MLflow pointing at."""
    import mlflow

    root = tmp_path_factory.mktemp("registered")
    store, before = f"sqlite:///{root}/mlflow.db", mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", store)
        mlflow.set_tracking_uri(store)
        try:
            yield register_models(root)
        finally:
            mlflow.set_tracking_uri(before)


def register_models(root: Path) -> dict:
    from tasks import mlflow_model

    single = save_model(root / "best.pt", seed=1)
    folds = [save_model(root / f"fold-{k}" / "best.pt", seed=10 + k) for k in range(2)]  # one name, two folders
    rule = root / "ensemble.json"
    rule.write_text(json.dumps({"largest_component": False}))
    example = box_volume()[:2]
    register("lgg-reg", lambda run_id: mlflow_model.log_model(run_id, single, example, name="lgg-reg"))
    register("lgg-reg-cv", lambda run_id: mlflow_model.log_ensemble(run_id, folds, example, "lgg-reg-cv", rule=rule))
    return {"single": single, "folds": folds}


def lgg_predict(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(LGG_PREDICT), *args], cwd=cwd, env=os.environ, capture_output=True, text=True,
                          timeout=300)


def mask_of(out: Path) -> np.ndarray:
    return np.moveaxis(np.asarray(nib.load(out / "mask.nii.gz").dataobj), 2, 0)  # (H, W, S) -> (S, H, W)


@pytest.mark.parametrize("uri", ["models:/lgg-reg@champion", "models:/lgg-reg-cv@champion"])
def test_lgg_predict_takes_a_registered_model_from_any_folder(tmp_path, registered, uri):
    (folder,) = write_folder(tmp_path)
    images = read_scan([folder]).images
    if uri.startswith("models:/lgg-reg-cv"):
        expected = EnsembleSegmenter.from_checkpoints(registered["folds"], largest_component=False).segment(images)
    else:
        expected = Segmenter.from_checkpoint(registered["single"]).segment(images)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = lgg_predict(elsewhere, "--model", uri, "--input", str(folder), "--output", "out")
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(mask_of(elsewhere / "out"), expected)
    summary = json.loads((elsewhere / "out" / "summary.json").read_text())
    assert summary["model"]["path"] == uri
    assert summary["largest_component"] is (not uri.startswith("models:/lgg-reg-cv"))  # the ensemble's own rule
    assert len(summary["model"]["sha256"]) == (2 if "-cv" in uri else 64)  # the folds' digests, or the one


def test_a_model_the_registry_does_not_hold_is_one_line(tmp_path, registered):
    (folder,) = write_folder(tmp_path)
    result = lgg_predict(tmp_path, "--model", "models:/lgg-reg@nobody", "--input", str(folder), "--output", "out")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("lgg-predict: error: --model models:/lgg-reg@nobody: MLflow store ")
    assert "nobody" in result.stderr and not (tmp_path / "out").exists()


def test_the_store_is_the_environment_s_else_the_checkout_s(tmp_path, monkeypatch):
    assert registry.tracking_store({"MLFLOW_TRACKING_URI": "http://mlflow:5000"}) == "http://mlflow:5000"
    monkeypatch.setattr(registry, "CHECKOUT_STORE", tmp_path / "mlflow.db")
    with pytest.raises(InputError, match="export MLFLOW_TRACKING_URI"):
        registry.tracking_store({})
    (tmp_path / "mlflow.db").touch()
    assert registry.tracking_store({}) == f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.mark.parametrize(("text", "uri"), [("models:/lgg-unet@champion", True), ("models:/lgg-unet/3", True),
                                           ("runs:/0123abcd/lgg-unet", True), ("models/best.pt", False),
                                           ("models:/", False), ("s3://bucket/best.pt", False)])
def test_what_counts_as_a_registry_uri(text, uri):
    assert registry.is_model_uri(text) is uri
