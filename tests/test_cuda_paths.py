"""The CUDA-only code paths, exercised without a GPU.

Where the CUDA path differs from the CPU path only in where the tensors live, it runs here on CPU
tensors, so that its logic is tested in CI: ``DeviceBatches`` (the split held on the device, batches
as index draws), the batched on-device augmentation fed by it, a training epoch and ``fit`` on
resident data, the stage's choice between the two batch sources, the device batch sizes of the
elastic copies and of prediction, and the precision rule for a CUDA device. Every test also runs
on a CUDA device when there is one (the ``[cuda]`` cases, which the GPU check runs).

What stays CUDA-only (nothing here can stand in for it): bf16 autocast kernels on CUDA, cuDNN's
convolution algorithms in channels_last, torch.compile's GPU code generation (Triton), NCCL
DistributedDataParallel under torchrun, the CUDA generator's own random stream (the draws differ
from the CPU's for one seed; only their distribution is the same), asynchronous host-to-device
copies, and ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from unet.config import ModelConfig, PipelineConfig, PrepareConfig, TrainConfig
from unet.device import autocast
from unet.models.checkpoint import load_checkpoint
from unet.models.forward import DEVICE_BATCH, predict_probabilities
from unet.models.unet import build_model
from unet.predict.segmenter import CPU_BATCH
from unet.train.data import SliceArrays, sampling_weights, to_device
from unet.train.loader import CpuBatches, DeviceBatches
from unet.train.loop import fit, train_one_epoch
from unet.train.losses import CombinedLoss
from unet.train.stage import make_batches
from unet.transforms.batch import AugmentParams, augment_batch
from unet.transforms.elastic import deform_copies

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                  reason="needs a CUDA device"))]
SIZE = 16


def tagged(patients: int = 3, slices: int = 6, copies: int = 0, size: int = SIZE, seed: int = 0) -> SliceArrays:
    """Rows whose image pixel (0, 0, 0) and weight pixel (0, 0) hold the row number (exact in float16),
    a tumour square on the middle slices, and ``copies`` extra rows per slice (copy 1..copies)."""
    rng = np.random.default_rng(seed)
    n = patients * slices * (copies + 1)
    images = rng.normal(0, 0.3, (n, 3, size, size)).astype(np.float16)
    masks = np.zeros((n, 1, size, size), np.uint8)
    weights = np.ones((n, 1, size, size), np.float16)
    patient, index, copy = [], [], []
    row = 0
    for k in range(copies + 1):
        for p in range(patients):
            for s in range(slices):
                if 0 < s < slices - 1:
                    side = 2 + (s + p) % 5
                    masks[row, 0, 4 : 4 + side, 5 : 5 + side] = 1
                patient.append(f"P{p}")
                index.append(s)
                copy.append(k)
                row += 1
    images[:, 0, 0, 0] = np.arange(n)
    weights[:, 0, 0, 0] = np.arange(n)
    return SliceArrays(images, masks, weights, np.array(patient, dtype=object), np.array(index, np.int64),
                       np.array(copy, np.int64))


def draw_rows(batches: DeviceBatches) -> np.ndarray:
    """The row numbers a DeviceBatches epoch drew, read back from the tagged pixel."""
    return np.concatenate([image[:, 0, 0, 0].cpu().numpy() for image, _, _ in batches]).astype(np.int64)


def tiny_model():
    return build_model("reference", features=4, depth=2)


# ---------------------------------------------------------------- DeviceBatches


@pytest.mark.parametrize("device", DEVICES)
def test_device_batches_hold_the_split_on_the_device_in_its_storage_dtypes(device):
    arrays = tagged()
    batches = DeviceBatches(arrays, torch.device(device), batch_size=4, steps=3, tumour_share=10 / 11)
    for held in (batches.images, batches.masks, batches.weights, batches.probability):
        assert held.device.type == device
    assert (batches.images.dtype, batches.masks.dtype, batches.weights.dtype) == (
        torch.float16, torch.uint8, torch.float16)  # half the memory of float32 until a batch is drawn
    assert tuple(batches.images.shape) == arrays.images.shape
    torch.testing.assert_close(batches.probability.sum().cpu(), torch.tensor(1.0))


@pytest.mark.parametrize("device", DEVICES)
def test_device_batches_yield_steps_float_batches_whose_parts_belong_together(device):
    arrays = tagged()
    batches = DeviceBatches(arrays, torch.device(device), batch_size=5, steps=4, tumour_share=10 / 11)
    seen = list(batches)
    assert len(seen) == batches.steps == 4
    for image, mask, weight in seen:
        assert image.shape == (5, 3, SIZE, SIZE) and mask.shape == weight.shape == (5, 1, SIZE, SIZE)
        assert {t.dtype for t in (image, mask, weight)} == {torch.float32}
        assert {t.device.type for t in (image, mask, weight)} == {device}
        rows = image[:, 0, 0, 0].long().cpu().numpy()
        np.testing.assert_array_equal(weight[:, 0, 0, 0].long().cpu().numpy(), rows)
        np.testing.assert_array_equal(mask.cpu().numpy(), arrays.masks[rows].astype(np.float32))
        np.testing.assert_array_equal(image.cpu().numpy(), arrays.images[rows].astype(np.float32))
    assert len(list(batches)) == 4  # an iterable, not an iterator: every epoch draws anew


@pytest.mark.parametrize("device", DEVICES)
def test_device_batches_draw_rows_with_the_reference_sampling_weights(device):
    arrays = tagged(patients=3, slices=6)
    expected = sampling_weights(arrays, 10 / 11)
    batches = DeviceBatches(arrays, torch.device(device), batch_size=500, steps=40, tumour_share=10 / 11, seed=3)
    counts = np.bincount(draw_rows(batches), minlength=len(arrays))
    assert counts.sum() == 20_000
    assert stats.chisquare(counts, expected * counts.sum()).pvalue > 1e-3
    # the slices without tumour are still drawn (the uniform 1/11), the tumour slices far more often
    edge = arrays.slice_index == 0
    assert 0 < counts[edge].sum() < 0.1 * counts.sum()


@pytest.mark.parametrize("device", DEVICES)
def test_device_batches_are_seeded(device):
    arrays = tagged()

    def rows(seed: int) -> np.ndarray:
        return draw_rows(DeviceBatches(arrays, torch.device(device), batch_size=8, steps=5, tumour_share=0.5,
                                       seed=seed))

    np.testing.assert_array_equal(rows(7), rows(7))
    assert not np.array_equal(rows(7), rows(8))


@pytest.mark.parametrize("device", DEVICES)
def test_resident_elastic_copies_are_drawn_with_their_patients(device):
    arrays = tagged(patients=2, slices=5, copies=2)
    keep = ~((arrays.patient == "P1") & (arrays.slice_index >= 3))  # P1 holds fewer slices than P0
    arrays = SliceArrays(*(a[keep] for a in (arrays.images, arrays.masks, arrays.weights, arrays.patient,
                                              arrays.slice_index, arrays.copy)))
    arrays.images[:, 0, 0, 0] = np.arange(len(arrays))  # re-tag after the selection
    arrays.weights[:, 0, 0, 0] = np.arange(len(arrays))
    batches = DeviceBatches(arrays, torch.device(device), batch_size=400, steps=30, tumour_share=10 / 11, seed=1)
    rows = draw_rows(batches)
    share_p0 = np.mean(arrays.patient[rows] == "P0")
    assert math.isclose(share_p0, np.mean(arrays.patient == "P0"), abs_tol=0.02)  # patients by their rows
    drawn_copies = np.bincount(arrays.copy[rows], minlength=3) / len(rows)
    np.testing.assert_allclose(drawn_copies, 1 / 3, atol=0.03)  # copies as often as the slices they copy


@pytest.mark.parametrize("device", DEVICES)
def test_to_device_keeps_every_row(device):
    arrays = tagged()
    images, masks, weights = to_device(arrays, torch.device(device))
    np.testing.assert_array_equal(images.cpu().numpy(), arrays.images)
    np.testing.assert_array_equal(masks.cpu().numpy(), arrays.masks)
    np.testing.assert_array_equal(weights.cpu().numpy(), arrays.weights)


# ---------------------------------------------------------------- augmentation of resident batches


@pytest.mark.parametrize("device", DEVICES)
def test_augmenting_a_resident_batch_keeps_device_dtype_and_binary_masks(device):
    arrays = tagged(size=32)
    image, mask, weight = next(iter(DeviceBatches(arrays, torch.device(device), batch_size=6, steps=1,
                                                  tumour_share=10 / 11)))
    image = image.contiguous(memory_format=torch.channels_last)
    out = augment_batch(image, mask, weight, elastic_sigma=2.0, generator=torch.Generator().manual_seed(0))
    assert [t.device.type for t in out] == [device] * 3
    assert [t.dtype for t in out] == [torch.float32] * 3
    assert out[0].is_contiguous(memory_format=torch.channels_last)
    assert set(out[1].unique().tolist()) <= {0.0, 1.0}
    assert bool((out[2] >= weight.amin() - 1e-5).all())  # weights stay within the input's range


@pytest.mark.parametrize("device", DEVICES)
def test_one_generator_seed_gives_one_augmentation_on_any_device(device):
    arrays = tagged(size=32)
    image, mask, weight = (torch.from_numpy(a[:4]).float() for a in (arrays.images, arrays.masks, arrays.weights))
    reference = augment_batch(image, mask, weight, elastic_sigma=2.0, generator=torch.Generator().manual_seed(5))
    moved = augment_batch(image.to(device), mask.to(device), weight.to(device), elastic_sigma=2.0,
                          generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(moved[0].cpu(), reference[0], atol=1e-4, rtol=1e-4)
    assert (moved[1].cpu() != reference[1]).float().mean() < 0.01  # nearest may round a rare tie apart


@pytest.mark.parametrize("device", DEVICES)
def test_exact_flip_of_a_resident_batch(device):
    arrays = tagged(size=32)
    image, mask, weight = next(iter(DeviceBatches(arrays, torch.device(device), batch_size=3, steps=1,
                                                  tumour_share=0.5)))
    out = augment_batch(image, mask, weight, scale=0.0, rotate_deg=0.0, flip_p=1.0)
    torch.testing.assert_close(out[0], image.flip(-1), atol=1e-5, rtol=0)
    assert torch.equal(out[1], mask.flip(-1))


# ---------------------------------------------------------------- training on resident data


@pytest.mark.parametrize("device", DEVICES)
def test_an_epoch_on_resident_batches_trains(device):
    dev = torch.device(device)
    torch.manual_seed(0)
    model = tiny_model().to(dev).to(memory_format=torch.channels_last)
    before = [p.detach().clone() for p in model.parameters()]
    batches = DeviceBatches(tagged(), dev, batch_size=4, steps=3, tumour_share=10 / 11)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    metrics = train_one_epoch(model, batches, CombinedLoss(1.0, 0.5), optimizer, dev, epoch=1,
                              augment=AugmentParams(elastic_sigma=1.0), amp=True, channels_last=True,
                              progress=False, generator=torch.Generator().manual_seed(0))
    assert math.isfinite(metrics["loss"]) and math.isfinite(metrics["loss_ce"])
    assert metrics["images_per_s"] > 0 and metrics["epoch_seconds"] > 0
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, model.parameters()))


@pytest.mark.parametrize("device", DEVICES)
def test_fit_on_resident_batches_validates_and_writes_checkpoints(device, tmp_path):
    dev = torch.device(device)
    arrays = tagged()
    config = TrainConfig(epochs=2, batch_size=4, steps_per_epoch=2, lr=1e-3, device=device, out_dir=tmp_path)
    batches = DeviceBatches(arrays, dev, batch_size=4, steps=2, tumour_share=10 / 11)
    state = fit(tiny_model().to(dev), batches, arrays, config, dev)
    assert [h["epoch"] for h in state["history"]] == [1, 2]
    assert all(0.0 <= h["val_dsc"] <= 1.0 and h["val_volumes"] == 3 for h in state["history"])
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 2 and (tmp_path / "best.pt").is_file()


@pytest.mark.parametrize("device", DEVICES)
def test_the_stage_holds_the_data_on_a_gpu_and_loads_it_on_a_cpu(device):
    config = PipelineConfig(prepare=PrepareConfig(image_size=SIZE), model=ModelConfig(features=4, depth=2),
                            train=TrainConfig(batch_size=4, device=device))
    batches = make_batches(tagged(), config, torch.device(device), 0, 1)
    assert isinstance(batches, DeviceBatches if device == "cuda" else CpuBatches)
    assert batches.steps == math.ceil(len(tagged()) / 4)


# ---------------------------------------------------------------- device batch sizes, precision


@pytest.mark.parametrize("device", DEVICES)
def test_elastic_copies_do_not_depend_on_the_device_batch_size(device):
    rng = np.random.default_rng(0)
    images = rng.normal(0, 1, (6, 24, 24, 3)).astype(np.float16)
    masks = (rng.random((6, 24, 24)) > 0.7).astype(np.uint8)
    weights = (1 + rng.random((6, 24, 24))).astype(np.float16)
    cpu = deform_copies(images, masks, weights, copies=2, sigma=3.0, dtype="float32", batch_size=4)
    dev = deform_copies(images, masks, weights, copies=2, sigma=3.0, dtype="float32", batch_size=256,
                        device=torch.device(device))  # 256: the default batch on a GPU
    np.testing.assert_allclose(dev[0], cpu[0], atol=1e-3)
    assert (dev[1] != cpu[1]).mean() < 1e-3
    np.testing.assert_allclose(dev[2], cpu[2], atol=1e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_prediction_does_not_depend_on_the_device_batch_size(device):
    dev = torch.device(device)
    torch.manual_seed(0)
    model = tiny_model().to(dev).to(memory_format=torch.channels_last)
    images = np.random.default_rng(0).normal(0, 1, (5, 3, SIZE, SIZE)).astype(np.float32)
    small = predict_probabilities(model, images, dev, batch_size=CPU_BATCH, amp=False)
    large = predict_probabilities(model, images, dev, batch_size=DEVICE_BATCH, amp=False)
    assert small.shape == (5, SIZE, SIZE) and small.dtype == np.float32
    np.testing.assert_allclose(small, large, atol=1e-5)


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_a_gpu_device_gets_bf16_autocast_and_amp_false_none():
    context = autocast(torch.device("cuda"), True)
    assert isinstance(context, torch.autocast)
    assert context.device == "cuda" and context.fast_dtype == torch.bfloat16
    assert not isinstance(autocast(torch.device("cuda"), False), torch.autocast)
