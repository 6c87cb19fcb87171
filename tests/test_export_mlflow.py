"""Issue 15 against a real MLflow store: the exports and the card beside the model, the card in the registry.

A SQLite store and artifact folder in tmp_path, a run and a registered version made with
``MlflowClient``, and a tiny random-weights checkpoint (``test_export.save_model``), checked on
slices preprocessed as the prepare stage stores them (raw slices: ``check_export``, tests/test_export.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

from test_export import phantom, save_model  # noqa: E402

from tasks import cards  # noqa: E402
from tasks import export as export_tasks  # noqa: E402
from unet.preprocess import preprocess_volume  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
MODEL = "lgg-unet-export-test"
FILES = {"model.onnx", "model.torchscript.pt", "MODEL_CARD.md", "export_check.json"}


@pytest.fixture
def store(tmp_path, monkeypatch) -> MlflowClient:
    """MLflow pointed at a fresh SQLite store whose artifacts stay under tmp_path; put back afterwards."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    previous = mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield MlflowClient(uri)
    mlflow.set_tracking_uri(previous)


def new_run(client: MlflowClient, root: Path) -> str:
    experiment = client.create_experiment("export-test", artifact_location=(root / "artifacts").as_uri())
    return client.create_run(experiment).info.run_id


def prepared(size: int = 32) -> np.ndarray:
    """A phantom's slices as the prepare stage stores them: (S, size, size, 3) float16, z-scored."""
    volume, _, _ = preprocess_volume(phantom(slices=5), None, size=size, crop_threshold=0.1,
                                     clip_percentiles=(10.0, 99.0), statistics="reference")
    return volume.astype(np.float16)


@pytest.mark.integration  # about 10 s: a fresh SQLite store, two exports, three runtimes
def test_exports_and_card_are_logged_beside_the_model_and_in_the_registry(store, tmp_path):
    run_id = new_run(store, tmp_path)
    checkpoint = save_model(tmp_path / "best.pt")
    metrics = {"split": "test", "n_volumes": 2, "dsc_mean": 0.8, "dsc_median": 0.8,
               "per_volume": [{"patient": "A", "split": "test", "dsc": "0.7"}, {"patient": "B", "split": "test",
                                                                              "dsc": "0.9"}]}
    result = export_tasks.log_exports(run_id, checkpoint, prepared(), tmp_path / "exports", metrics=metrics,
                                      data={"source": "kaggle"}, split={"method": "random", "seed": 42})

    logged = {Path(a.path).name for a in store.list_artifacts(run_id, "export")}
    assert logged == FILES
    card = Path(store.download_artifacts(run_id, "export/MODEL_CARD.md", str(tmp_path / "down"))).read_text()
    assert card == result["card"] and "**0.800 ± 0.141** (mean ± SD, n = 2)" in card
    assert "Research use only. Not a medical device" in card and "method random, seed 42" in card
    check = json.loads(Path(store.download_artifacts(run_id, "export/export_check.json",
                                                     str(tmp_path / "down"))).read_text())
    assert check == result["check"] and check["passed"] is True and check["slices"] == 5

    run = store.get_run(run_id)
    figures = run.data.metrics
    assert figures["export_onnx_max_abs_diff"] == check["max_diff_onnx"] < 1e-4
    assert figures["export_torchscript_max_abs_diff"] == check["max_diff_torchscript"] < 1e-4
    assert figures["export_mask_agreement"] == min(check["mask_agreement_onnx"],
                                                   check["mask_agreement_torchscript"]) > 0.999
    assert figures["export_check_passed"] == 1.0 and figures["export_check_slices"] == 5.0
    assert run.data.tags["export.passed"] == "true"

    store.create_registered_model(MODEL)
    version = store.create_model_version(MODEL, f"{run.info.artifact_uri}/export", run_id=run_id).version
    assert cards.describe_version(MODEL, version, result["card"]) == result["card"]
    assert store.get_model_version(MODEL, version).description == card


def test_a_long_card_is_cut_at_a_line_and_points_at_the_whole_one():
    card = "# Model card\n" + "".join(f"- line {n} of the card\n" for n in range(600))
    description = cards.fit_description(card)
    assert len(description) <= cards.MAX_DESCRIPTION < len(card)
    kept, note = description.split("\n\n_The card is cut here")
    assert card.startswith(kept + "\n") and "export/MODEL_CARD.md" in note
    assert cards.fit_description("short") == "short"


def test_card_inputs_and_prepared_slices_read_the_stages_outputs(tmp_path):
    import pandas as pd

    from unet.config import parse_config
    from unet.io.layout import array_dir, write_prepared

    config = parse_config({"prepare": {"out_dir": str(tmp_path / "prepared")},
                           "evaluate": {"out_dir": str(tmp_path / "metrics")},
                           "cv": {"folds": 3, "metrics_dir": str(tmp_path / "metrics")}})
    ev = config.evaluate
    ev.metrics_path.parent.mkdir(parents=True)
    ev.metrics_path.write_text(json.dumps({"split": "test", "n_volumes": 1, "dsc_mean": 0.9}))
    ev.per_patient_path.write_text("patient,split,dsc\nB,test,0.9\n")
    config.cv.metrics_path.write_text(json.dumps({"fold_dsc_mean": {"0": 0.8, "2": 0.7, "1": 0.9}}))
    inputs = export_tasks.card_inputs(config)
    assert inputs["metrics"]["per_volume"] == [{"patient": "B", "split": "test", "dsc": "0.9"}]
    assert inputs["cv"] == {"dsc": [0.8, 0.9, 0.7]} and inputs["data"] == {"source": "synthetic", "anatomy": "mni152"}
    assert inputs["split"]["method"] == "random"

    images = np.random.default_rng(0).normal(size=(40, 8, 8, 3)).astype(np.float16)
    for patient, part in (("A", "train"), ("B", "test")):
        write_prepared(config.prepare.out_dir, array_dir(patient), images if part == "test" else images[:2],
                       np.zeros((len(images), 8, 8), np.uint8))
    pd.DataFrame({"patient": ["A", "B"], "split": ["train", "test"],
                  "array_dir": [array_dir("A"), array_dir("B")]}).to_parquet(config.prepare.manifest_path)
    slices = export_tasks.prepared_slices(config, limit=32)
    assert slices.dtype == np.float32 and np.array_equal(slices, images[4:36].astype(np.float32))
