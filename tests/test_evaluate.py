"""Evaluation at the original geometry: an oracle network must score ~1 after the way back."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from unet.config import PrepareConfig, SplitConfig
from unet.evaluate.overlay import overlay_figure
from unet.evaluate.scores import evaluate_patient, per_patient_table, split_metrics
from unet.io.layout import json_safe
from unet.metrics import most_tumour_slices, volume_scores
from unet.predict.segmenter import Segmenter
from unet.prepare.stage import prepare_dataset


class FlairOracle(nn.Module):
    """Logits that say 'tumour' where FLAIR is far above the volume mean: right on the phantom."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 20.0 * (x[:, 1:2] - 1.5)


@pytest.fixture
def prepared(raw_tree, tmp_path):
    config = PrepareConfig(image_size=16, out_dir=tmp_path / "prepared", nifti=False,
                           split=SplitConfig(val_fraction=0.25, test_fraction=0.25, seed=0))
    return prepare_dataset(raw_tree, config), config


@pytest.mark.parametrize("tta", [False, True])
def test_oracle_scores_near_one_at_the_original_geometry(prepared, tta):
    manifest, config = prepared
    rows = manifest[manifest["patient"] == manifest["patient"].iloc[0]]
    result = evaluate_patient(Segmenter(FlairOracle(), image_size=config.image_size, tta=tta), rows)
    assert result.prediction.shape == result.truth.shape == (5, 32, 32)  # the raw 32x32 grid, every slice
    assert result.scores["dsc"] > 0.9 and result.scores["hd95"] <= 1.5
    assert result.prediction[[0, 4]].sum() == 0  # no tumour on the first and last slices


def test_split_metrics_are_flat_and_json_safe(prepared):
    manifest, config = prepared
    results = []
    for _, rows in manifest.groupby("array_dir"):
        results.append(evaluate_patient(Segmenter(FlairOracle(), image_size=config.image_size), rows))
    results[0].prediction[:] = 0  # one patient with nothing predicted: precision undefined there
    results[0].scores = {**volume_scores(results[0].prediction, results[0].truth), "dsc_no_postprocess": 0.0,
                           "dsc_largest_component": 0.0}
    metrics = split_metrics(results)
    assert metrics["n_volumes"] == 4
    assert metrics["precision_excluded"] == {"pred_empty": 1}
    assert 0 <= metrics["tumour_slice_dice"] <= metrics["slice_dice_mean"] <= 1
    text = json.dumps(json_safe({**metrics, "nan": math.nan, "inf": np.float64("inf")}))
    assert '"nan": null' in text and '"inf": null' in text
    table = per_patient_table(results)
    assert list(table.columns[:3]) == ["patient", "split", "dsc"] and len(table) == 4


def test_overlay_picks_the_slices_with_most_tumour(tmp_path):
    truth = np.zeros((8, 16, 16), np.uint8)
    truth[2, 4:8, 4:8] = 1
    truth[5, 2:12, 2:12] = 1
    pred = np.zeros_like(truth)
    pred[6, 4:6, 4:6] = 1
    assert most_tumour_slices(pred, truth, count=2) == [2, 5]
    assert most_tumour_slices(np.zeros_like(truth)) == [4]  # nothing anywhere: the middle slice
    path = overlay_figure(np.zeros((8, 16, 16, 3), np.uint8), pred, tmp_path / "o.png", truth=truth, title="P")
    assert path.stat().st_size > 1000
