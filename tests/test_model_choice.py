"""Which model ships and how its masks are post-processed: decided once, recorded with the model,
applied the same way by everything that segments (Segmenter, the ensemble, lgg-predict, evaluate, cv)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from test_train import squares, tiny_config, tiny_model

from unet.config import TrainConfig
from unet.cv.stage import ensemble_rule, read_ensemble_rule
from unet.models.checkpoint import load_checkpoint
from unet.predict.ensemble import EnsembleSegmenter
from unet.predict.segmenter import Segmenter, postprocess_rule
from unet.train.loader import CpuBatches
from unet.train.loop import fit, postprocess_decision, shipped_score

# two blobs: the large one is a false positive, the small one the tumour
PROBS = np.zeros((3, 16, 16), np.float32)
PROBS[1, 2:10, 2:10] = 0.9   # 64 voxels, false
PROBS[1, 12:14, 12:14] = 0.9  # 4 voxels, true
TRUTH = np.zeros((3, 16, 16), np.uint8)
TRUTH[1, 12:14, 12:14] = 1


@pytest.mark.parametrize("with_it, without, margin, keep", [
    (0.9, 0.6, 0.0, True),      # the component step helps: keep it (the reference protocol)
    (0.7, 0.7, 0.0, True),      # a tie keeps the reference's step
    (0.0, 0.5, 0.0, False),     # it drops the tumour for a larger false blob: off
    (0.8598, 0.8649, 0.0, False),   # a loss of 0.005 on two volumes, taken at face value: off ...
    (0.8598, 0.8649, 0.01, True),   # ... within the margin: noise, the step stays (the grid's case)
    (0.0, 0.5, 0.01, False),    # a real loss is still a loss
])
def test_the_largest_component_is_kept_unless_validation_shows_a_real_loss(with_it, without, margin, keep):
    decision = postprocess_decision({"val_dsc": with_it, "val_dsc_no_postprocess": without, "val_volumes": 2}, margin)
    assert decision["largest_component"] is keep and decision["margin"] == margin
    # the score a model ships with is its validation DSC under its own rule
    shipped = shipped_score({"val_dsc": with_it, "val_dsc_no_postprocess": without}, margin)
    assert shipped == (with_it if keep else without)


@pytest.mark.parametrize("metadata, keep", [({}, True), ({"postprocess": {"largest_component": False}}, False),
                                            ({"postprocess": {"largest_component": True}}, True)])
def test_a_checkpoint_says_its_rule_and_older_ones_keep_the_reference_protocol(metadata, keep):
    assert postprocess_rule(metadata) is keep


def test_a_segmenter_and_an_ensemble_apply_their_rule_unless_told_otherwise():
    model = tiny_model()
    keeps = Segmenter(model, 16, largest_component=True)
    drops = Segmenter(model, 16, largest_component=False)
    assert keeps.mask(PROBS).sum() == 64 and drops.mask(PROBS).sum() == 68
    assert keeps.mask(PROBS, largest_component=False).sum() == 68  # an explicit choice wins
    assert EnsembleSegmenter([keeps, drops], largest_component=False).mask(PROBS).sum() == 68


def test_fit_ships_the_last_epoch_or_the_best_and_records_its_rule(tmp_path):
    arrays = squares()
    batches = CpuBatches(arrays, batch_size=4, steps=3, tumour_share=10 / 11)
    last = fit(tiny_model(), batches, arrays, tiny_config(epochs=3, out_dir=tmp_path / "last", select="last"),
               torch.device("cpu"))
    shipped = load_checkpoint(tmp_path / "last" / "best.pt")
    assert last["best_epoch"] == 3 and shipped["epoch"] == 3
    rule = shipped["metadata"]["postprocess"]
    final = last["history"][-1]
    margin = tiny_config(epochs=3, out_dir=tmp_path / "last", select="last").postprocess_margin
    assert rule == postprocess_decision(final, margin) and rule["val_volumes"] == 3 and rule["margin"] == margin
    assert last["best_score"] == pytest.approx(shipped_score(final, margin))

    best = fit(tiny_model(), batches, arrays, tiny_config(epochs=3, out_dir=tmp_path / "best", select="best"),
               torch.device("cpu"))
    scores = [shipped_score(h, margin) for h in best["history"]]
    assert best["best_epoch"] == 1 + int(np.argmax(scores))  # the first epoch with the best score
    assert load_checkpoint(tmp_path / "best" / "best.pt")["epoch"] == best["best_epoch"]


def test_early_stopping_needs_the_best_epoch_to_ship():
    with pytest.raises(ValueError, match="select is 'last'"):
        TrainConfig(early_stopping=5, select="last")
    TrainConfig(early_stopping=5, select="best")


def test_the_ensemble_rule_is_decided_on_every_out_of_fold_patient(tmp_path):
    table = pd.DataFrame({"dsc_largest_component": [0.9, 0.0, 0.8], "dsc_no_postprocess": [0.7, 0.6, 0.7]})
    rule = ensemble_rule(table)
    assert rule["largest_component"] is False and rule["patients"] == 3  # 0.567 with it, 0.667 without
    path = tmp_path / "ensemble.json"
    path.write_text(json.dumps(rule))
    assert read_ensemble_rule(path) is False and read_ensemble_rule(tmp_path / "none.json") is None


def test_the_model_card_says_the_rule_and_its_margin():
    from unet.cards.model import _postprocess_text

    kept = _postprocess_text({"largest_component": True, "val_dsc_largest_component": 0.80,
                              "val_dsc_no_postprocess": 0.805, "val_volumes": 2, "margin": 0.01})
    assert kept.startswith("the largest 3-D connected component") and "unless it costs more than 0.010 DSC" in kept
    dropped = _postprocess_text({"largest_component": False, "val_dsc_largest_component": 0.60,
                                 "val_dsc_no_postprocess": 0.81, "val_volumes": 2, "margin": 0.01})
    assert dropped.startswith("every region above it") and "margin of 0.010" in dropped
