"""Training on tiny hand-built data: sampling, one epoch, NaN guard, checkpoints, resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unet.config import TrainConfig
from unet.device import select_device
from unet.models.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from unet.models.forward import same_size_logits
from unet.models.unet import build_model
from unet.train.data import SliceArrays, sampling_weights, volumes
from unet.train.loader import CpuBatches, steps_per_epoch
from unet.train.loop import TrainingDiverged, check_resumable, fit, train_one_epoch
from unet.train.losses import CombinedLoss
from unet.transforms.batch import AugmentParams

SIZE = 32


def squares(patients: int = 3, slices: int = 6, seed: int = 0) -> SliceArrays:
    """Volumes of noise with a bright square (the 'tumour') on the middle slices."""
    rng = np.random.default_rng(seed)
    n = patients * slices
    images = rng.normal(0, 0.3, (n, 3, SIZE, SIZE)).astype(np.float16)
    masks = np.zeros((n, 1, SIZE, SIZE), np.uint8)
    for row in range(n):
        if 0 < row % slices < slices - 1:
            y, x = rng.integers(4, SIZE - 14, 2)
            masks[row, 0, y : y + 10, x : x + 10] = 1
            images[row, 1, y : y + 10, x : x + 10] += 2.0
    patient = np.repeat([f"P{k}" for k in range(patients)], slices).astype(object)
    index = np.tile(np.arange(slices), patients)
    return SliceArrays(images, masks, np.ones_like(masks, dtype=np.float16), patient, index, np.zeros(n, np.int64))


def tiny_config(**overrides) -> TrainConfig:
    base = dict(epochs=2, batch_size=4, steps_per_epoch=3, lr=1e-3, device="cpu", amp=False,
                augment={"scale": 0.0, "rotate_deg": 0.0, "flip_p": 0.5})
    return TrainConfig(**{**base, **overrides})


def tiny_model():
    return build_model("reference", features=4, depth=2)


def test_sampling_follows_tumour_area_within_a_patient():
    arrays = squares(patients=1, slices=4)
    arrays.masks[:] = 0
    arrays.masks[1, 0, :2, :2] = 1  # area 4
    arrays.masks[2, 0, :4, :3] = 1  # area 12
    p = sampling_weights(arrays, tumour_share=10 / 11)
    np.testing.assert_allclose(p, [1 / 44, 1 / 44 + 10 / 11 * 4 / 16, 1 / 44 + 10 / 11 * 12 / 16, 1 / 44])
    arrays.masks[:] = 0
    np.testing.assert_allclose(sampling_weights(arrays), 0.25)  # no tumour at all: uniform


def test_patients_are_drawn_in_proportion_to_their_slices():
    arrays = squares(patients=2, slices=6)
    keep = np.r_[0:6, 6:8]  # patient P0 keeps 6 slices, P1 only 2
    arrays = SliceArrays(*(a[keep] for a in (arrays.images, arrays.masks, arrays.weights, arrays.patient,
                                              arrays.slice_index, arrays.copy)))
    p = sampling_weights(arrays)
    assert math.isclose(p[arrays.patient == "P0"].sum(), 6 / 8)


@pytest.mark.parametrize(("rows", "batch", "steps", "world", "expected"),
                         [(100, 16, None, 1, 7), (100, 16, None, 2, 4), (10, 16, None, 1, 1), (100, 16, 5, 1, 5)])
def test_steps_per_epoch(rows, batch, steps, world, expected):
    assert steps_per_epoch(rows, batch, steps, world) == expected


def test_one_epoch_returns_finite_metrics():
    model, arrays = tiny_model(), squares()
    batches = CpuBatches(arrays, batch_size=4, steps=3, tumour_share=10 / 11)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    metrics = train_one_epoch(model, batches, CombinedLoss(1.0, 0.5), optimizer, torch.device("cpu"), epoch=1,
                              augment=AugmentParams(), progress=False, generator=torch.Generator().manual_seed(0))
    assert {"loss", "loss_dice", "loss_ce", "images_per_s", "lr"} <= set(metrics)
    assert math.isfinite(metrics["loss"]) and metrics["images_per_s"] > 0


def test_a_nan_loss_names_epoch_and_step():
    model, arrays = tiny_model(), squares()
    arrays.images[5:] = np.nan
    batches = CpuBatches(arrays, batch_size=4, steps=3, tumour_share=0.0, seed=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    with pytest.raises(TrainingDiverged, match=r"at epoch 7, step \d"):
        train_one_epoch(model, batches, CombinedLoss(), optimizer, torch.device("cpu"), epoch=7,
                        augment=AugmentParams.none(), progress=False)


def test_fit_writes_checkpoints_that_rebuild_the_model(tmp_path):
    arrays, config = squares(), tiny_config(out_dir=tmp_path)
    model = tiny_model()
    batches = CpuBatches(arrays, batch_size=4, steps=3, tumour_share=10 / 11)
    seen = []
    state = fit(model, batches, arrays, config, torch.device("cpu"), on_epoch=lambda e, m: seen.append(e))
    assert seen == [1, 2] and state["epoch"] == 2 and len(state["history"]) == 2
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert checkpoint["epoch"] == 2 and checkpoint["model_config"]["features"] == 4
    assert {"optimizer", "scheduler", "rng", "best_score", "train_config"} <= set(checkpoint)
    rebuilt = model_from_checkpoint(tmp_path / "best.pt")
    x = torch.from_numpy(arrays.images[:2].astype(np.float32))
    best = load_checkpoint(tmp_path / "best.pt")
    model.load_state_dict(best["model"])
    torch.testing.assert_close(rebuilt(x), model.eval()(x))


def test_resume_continues_after_the_last_finished_epoch(tmp_path):
    arrays = squares()
    batches = CpuBatches(arrays, batch_size=4, steps=2, tumour_share=10 / 11)
    fit(tiny_model(), batches, arrays, tiny_config(epochs=2, out_dir=tmp_path), torch.device("cpu"))
    saved = load_checkpoint(tmp_path / "checkpoint.pt")
    epochs = []
    state = fit(tiny_model(), batches, arrays, tiny_config(epochs=4, out_dir=tmp_path), torch.device("cpu"),
                resume_state=saved, on_epoch=lambda e, m: epochs.append(e))
    assert epochs == [3, 4]
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3, 4]


def test_resume_refuses_another_recipe(tmp_path):
    model = tiny_model()
    state = {"model_config": model.config, "train_config": tiny_config().model_dump(mode="json")}
    check_resumable(state, model.config, tiny_config(epochs=50))  # more epochs: fine
    with pytest.raises(ValueError, match="train.lr"):
        check_resumable(state, model.config, tiny_config(lr=0.5))
    with pytest.raises(ValueError, match="model"):
        check_resumable(state, build_model("reference", features=8, depth=2).config, tiny_config())


def test_checkpoints_are_written_atomically_and_read_safely(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", {"model": {}, "model_config": {"variant": "reference"}})
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable lgg-unet checkpoint"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="dvc repro train"):
        load_checkpoint(tmp_path / "missing.pt")


def test_paper_net_gives_logits_at_the_input_size():
    model = build_model("paper", features=4, depth=2)
    logits = same_size_logits(model, torch.randn(2, 3, SIZE, SIZE))
    assert logits.shape == (2, 2, SIZE, SIZE)


def test_volumes_group_rows_by_patient_in_slice_order():
    arrays = squares(patients=2, slices=3)
    arrays.slice_index[:3] = [2, 0, 1]
    assert [(p, list(rows)) for p, rows in volumes(arrays)] == [("P0", [1, 2, 0]), ("P1", [3, 4, 5])]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_asking_for_cuda_without_a_gpu_is_an_error():
    assert select_device("auto").type == "cpu"
    with pytest.raises(RuntimeError, match="no CUDA device"):
        select_device("cuda")


def test_paper_recipe_trains_with_sgd_and_the_weight_map_loss(tmp_path):
    arrays = squares()
    arrays.weights[:] = 3.0
    config = tiny_config(optimizer="sgd", lr=1e-2, dice_weight=0.0, ce_weight=1.0, epochs=1, grad_clip=1.0,
                         out_dir=tmp_path)
    batches = CpuBatches(arrays, batch_size=2, steps=2, tumour_share=10 / 11)
    state = fit(build_model("paper", features=4, depth=2), batches, arrays, config, torch.device("cpu"))
    (epoch,) = state["history"]
    assert math.isfinite(epoch["loss_ce"]) and "loss_dice" not in epoch
    assert load_checkpoint(tmp_path / "checkpoint.pt")["model_config"]["variant"] == "paper"


def test_a_deferred_nan_check_still_names_the_step():
    from unet.train.loop import check_finite

    losses = [torch.tensor(0.5), torch.tensor(0.4), torch.tensor(float("nan")), torch.tensor(float("inf"))]
    with pytest.raises(TrainingDiverged, match="loss is nan at epoch 7, step 12"):
        check_finite(losses, 10, 7)
    check_finite(losses[:2], 10, 7)  # all finite: nothing
    check_finite([], 1, 1)
