"""The study end to end on the anatomical synthetic set: the planted association found, the null ones not."""

from __future__ import annotations

import json

import pytest

from unet.config import parse_config
from unet.prepare.stage import prepare_dataset
from unet.radiogenomics import stage
from unet.synthetic.generate import PLANTED, write_synthetic_dataset

PATIENTS = 60


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    write_synthetic_dataset(root / "raw/kaggle_3m", n_patients=PATIENTS, min_slices=12, max_slices=16,
                            image_size=64, seed=11, anatomy="mni152")
    config = parse_config({
        "data": {"raw_dir": str(root / "raw")},
        "prepare": {"image_size": 32, "out_dir": str(root / "prepared"), "nifti": False, "workers": 1},
        "cv": {"folds": 0},
        "radiogenomics": {"out_dir": str(root / "metrics"), "figure": str(root / "rg.png"),
                          "receipt_path": str(root / "rg-logged.json")},
    })
    prepare_dataset(config.data.raw_root, config.prepare)
    return config, stage.run(config)


def test_the_planted_association_is_found_in_the_manual_masks(study):
    """An irregular margin lowers the bounding-ellipsoid ratio and spreads the radial distances: the
    planted cluster is found through BEVR and ASD (both pre-registered with RNASeqCluster, as in the paper)."""
    config, result = study
    column = PLANTED[0]
    for feature in ("bevr", "asd"):
        found = next(t for t in result["tests"] if (t["feature"], t["variable"], t["masks"]) == (feature, column,
                                                                                                  "manual"))
        assert found["preregistered"] and found["significant"] and found["p"] < 0.005, found
    assert json.loads(config.radiogenomics.metrics_path.read_text())["tests"][0].keys() >= {
        "feature", "variable", "masks", "n", "p", "p_adjusted", "significant", "preregistered"}
    assert config.radiogenomics.figure.read_bytes()[:4] == b"\x89PNG"


def test_the_clusters_that_do_not_shape_the_lesion_are_not_found(study):
    """Six clusters x three features are null by construction: at Bonferroni alpha 0.05 over the 21
    tests the chance of even one false positive is at most 5%; the test allows none."""
    _, result = study
    nulls = [t for t in result["tests"] if t["variable"] != PLANTED[0]]
    assert len(nulls) == 18 and not [t for t in nulls if t["significant"]], \
        [(t["feature"], t["variable"], t["p"]) for t in nulls if t["significant"]]


def test_features_and_aucs_per_patient(study):
    config, result = study
    import pandas as pd

    features = pd.read_csv(config.radiogenomics.features_path)
    assert len(features) == PATIENTS and set(features["masks"]) == {"manual"}
    assert {"bevr", "mf", "asd", "volume_ml"} <= set(features.columns)
    assert (features["bevr"].between(0, 1)).all()
    assert {a["feature"] for a in result["aucs"]} == {"bevr", "mf", "asd"}


def test_the_report_states_the_family_the_p_values_were_corrected_over(study):
    """The report's "Bonferroni over those m" is the m the stage multiplied by: the manual tests run."""
    from tasks.radiogenomics_report import radiogenomics_report

    _, result = study
    manual = [t for t in result["tests"] if t["masks"] == "manual"]
    m = sum(t["p"] == t["p"] for t in manual)
    assert m == len(manual) == 21 and result["alpha"] == 0.05
    for t in manual:
        assert t["p_adjusted"] == pytest.approx(min(1.0, t["p"] * m))
        assert t["significant"] == (t["p_adjusted"] < result["alpha"])
    found = sum(t["significant"] for t in manual)
    report = radiogenomics_report(result)
    assert f"**manual masks**: {found} of {m} tests significant, Bonferroni over those {m} (p x {m} < 0.05)" in report


def test_a_patient_missing_from_data_csv_is_said_not_dropped_silently(study, tmp_path, caplog):
    """The tests join masks and data.csv: a patient without a row is named in the log, the metrics
    and the report."""
    config, result = study
    from tasks.radiogenomics_report import radiogenomics_report

    assert result["patients_without_clinical_row"] == []
    rows = (config.data.raw_root / "data.csv").read_text().splitlines()
    gone = rows[3].split(",")[0]
    (tmp_path / "raw/kaggle_3m").mkdir(parents=True)
    (tmp_path / "raw/kaggle_3m/data.csv").write_text("\n".join(rows[:3] + rows[4:]) + "\n")
    short = parse_config({
        "data": {"raw_dir": str(tmp_path / "raw")},
        "prepare": {"image_size": 32, "out_dir": str(config.prepare.out_dir), "nifti": False, "workers": 1},
        "cv": {"folds": 0},
        "radiogenomics": {"out_dir": str(tmp_path / "metrics"), "figure": str(tmp_path / "rg.png"),
                          "receipt_path": str(tmp_path / "rg-logged.json")},
    })
    with caplog.at_level("WARNING"):
        again = stage.run(short)
    assert again["patients_without_clinical_row"] == [gone]
    assert gone in caplog.text and "left out of every test" in caplog.text
    assert json.loads(short.radiogenomics.metrics_path.read_text())["patients_without_clinical_row"] == [gone]
    assert max(t["n"] for t in again["tests"]) == PATIENTS - 1
    assert f"1 patient(s) have no row in data.csv and are in no test:** {gone}" in radiogenomics_report(again)
