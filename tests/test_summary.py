"""What `make demo` prints at its end (flows/summary.py): the figures, where to look, what to load."""

from __future__ import annotations

import json

import pytest

from unet.config import parse_config

from conftest import outputs_under

TRAIN = {"best_val_dsc": 0.88, "best_epoch": 10, "epochs": 10, "selected": "last", "device": "cpu",
         "precision": "fp32", "kernels": "AVX2", "threads": 2, "images_per_s": 90.0}
EVALUATION = {"split": "test", "n_volumes": 3, "dsc_mean": 0.9, "dsc_median": 0.91, "global_dice": 0.92}


@pytest.mark.parametrize(("registry", "says", "never"), [
    ({"model_name": "lgg-s", "version": 1, "decision": "first", "champion_version": 1},
     ["champion is version 1", "use it: mlflow.pyfunc.load_model('models:/lgg-s@champion')"], ["no champion"]),
    ({"model_name": "lgg-s", "version": 1, "decision": "below-floor", "champion_version": None,
      "why": "DSC 0.300 is under registry.champion_floor 0.5"},
     ["below-floor (DSC 0.300 is under registry.champion_floor 0.5); no champion yet",
      "no champion to use yet; the newest: mlflow.pyfunc.load_model('models:/lgg-s@challenger')"], ["@champion"]),
])
def test_the_summary_says_what_to_load_and_where_to_look(tmp_path, capsys, registry, says, never):
    from flows import summary

    config = parse_config(outputs_under(tmp_path) | {
        "cv": {"folds": 0}, "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "lgg-s"}})
    for path, record in ((config.train.metrics_path, TRAIN), (config.evaluate.metrics_path, EVALUATION),
                         (config.registry.record_path, registry)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
    summary.run(config)
    printed = capsys.readouterr().out
    for phrase in [*says, "per-volume DSC mean 0.900", "trained on cpu in fp32 with AVX2 kernels",
                   f"offline {config.train.curve_path} and {config.evaluate.per_patient_figure}"]:
        assert phrase in printed, (phrase, printed)
    for phrase in never:
        assert phrase not in printed, (phrase, printed)
