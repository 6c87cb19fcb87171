"""Training throughput: this trainer against a plain reference-configuration loop, same model.

    python benchmarks/bench_train.py [--device cpu|cuda] [--size 256] [--batch 16] [--steps 5]

The baseline is the reference repo's loop as it is usually run: fp32, eager, a DataLoader whose
workers augment one slice at a time on the CPU (skimage rescale +-5%, rotate +-15 degrees,
horizontal flip), batches copied to the device, Adam 1e-4, soft Dice. This trainer: the same
net and loss through ``unet.train.loop.train_one_epoch``: batched augmentation on the training device
(``unet.transforms.batch``), the split resident on the device on CUDA, bf16 autocast and channels_last
on CUDA, optionally ``torch.compile``. Prints images/s, the speed-up, achieved TFLOP/s (from
torch's FLOP counter) and peak memory. Synthetic tensors: speed does not depend on the pixels.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
from skimage.transform import rescale, rotate
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from unet.train.data import SliceArrays
from unet.train.loader import CpuBatches, DeviceBatches
from unet.train.losses import CombinedLoss, soft_dice_loss
from unet.models.unet import build_model
from unet.device import cpu_has_bf16
from unet.train.loop import train_one_epoch
from unet.transforms.batch import AugmentParams


def synthetic_arrays(n: int, size: int, seed: int = 0) -> SliceArrays:
    rng = np.random.default_rng(seed)
    images = rng.normal(0, 1, (n, 3, size, size)).astype(np.float16)
    masks = np.zeros((n, 1, size, size), np.uint8)
    masks[:, :, size // 3 : size // 2, size // 3 : size // 2] = 1
    return SliceArrays(images, masks, np.ones_like(masks, dtype=np.float16),
                       np.repeat(np.arange(n // 8 + 1), 8)[:n].astype(object), np.arange(n), np.zeros(n, np.int64))


class ReferenceDataset(Dataset):
    """Per-slice CPU augmentation as the reference's transforms do it (scale, rotate, flip)."""

    def __init__(self, arrays: SliceArrays, seed: int = 0) -> None:
        self.arrays, self.rng = arrays, np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, i: int):
        image = self.arrays.images[i].astype(np.float32).transpose(1, 2, 0)  # (H, W, 3)
        mask = self.arrays.masks[i, 0].astype(np.float32)
        size = image.shape[0]
        factor = self.rng.uniform(0.95, 1.05)
        image = rescale(image, factor, order=1, channel_axis=-1, mode="constant", anti_aliasing=False)
        mask = rescale(mask, factor, order=0, mode="constant", anti_aliasing=False)
        image, mask = _crop_or_pad(image, size), _crop_or_pad(mask, size)
        angle = self.rng.uniform(-15, 15)
        image = rotate(image, angle, order=1, mode="constant")
        mask = rotate(mask, angle, order=0, mode="constant")
        if self.rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        return (torch.from_numpy(image.transpose(2, 0, 1).copy()), torch.from_numpy(mask[None].copy()))


def _crop_or_pad(a: np.ndarray, size: int) -> np.ndarray:
    if a.shape[0] >= size:
        start = (a.shape[0] - size) // 2
        return a[start : start + size, start : start + size]
    before = (size - a.shape[0]) // 2
    after = size - a.shape[0] - before
    return np.pad(a, [(before, after), (before, after)] + [(0, 0)] * (a.ndim - 2))


def reference_loop(model, arrays, device, batch, steps, workers) -> float:
    """images/s of the plain loop (timed after one warm-up batch)."""
    loader = DataLoader(ReferenceDataset(arrays), batch_size=batch, shuffle=True, num_workers=workers,
                        drop_last=True, persistent_workers=workers > 0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()
    seen, start = 0, None
    iterator = iter(loader)
    for step in range(steps + 1):
        try:
            image, mask = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            image, mask = next(iterator)
        image, mask = image.to(device), mask.to(device)
        loss = soft_dice_loss(model(image), mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        _sync(device)
        if step == 0:
            start = time.perf_counter()
        else:
            seen += image.shape[0]
    return seen / (time.perf_counter() - start)


def our_loop(model, arrays, device, batch, steps, amp, channels_last) -> float:
    kwargs = dict(batch_size=batch, tumour_share=10 / 11)
    warm = (DeviceBatches(arrays, device, steps=1, **kwargs) if device.type == "cuda"
            else CpuBatches(arrays, steps=1, **kwargs))
    timed = (DeviceBatches(arrays, device, steps=steps, **kwargs) if device.type == "cuda"
             else CpuBatches(arrays, steps=steps, **kwargs))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    args = dict(augment=AugmentParams(), amp=amp, channels_last=channels_last, progress=False,
                generator=torch.Generator().manual_seed(0))
    train_one_epoch(model, warm, CombinedLoss(), optimizer, device, epoch=0, **args)
    _sync(device)
    return train_one_epoch(model, timed, CombinedLoss(), optimizer, device, epoch=1, **args)["images_per_s"]


def train_step_flops(model, size: int, batch: int, device) -> float:
    x = torch.randn(batch, 3, size, size, device=device)
    with FlopCounterMode(display=False) as counter:
        soft_dice_loss(model(x), torch.zeros(batch, 1, size, size, device=device)).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory_gb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: kB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2, help="baseline DataLoader workers")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    args = parser.parse_args()
    device = torch.device(args.device)
    arrays = synthetic_arrays(args.rows, args.size)
    flops = train_step_flops(build_model("reference").to(device), args.size, args.batch, device)
    rows = []
    torch.manual_seed(0)
    base = reference_loop(build_model("reference").to(device), arrays, device, args.batch, args.steps, args.workers)
    rows.append(("reference loop (fp32, eager, per-slice CPU augmentation)", base))
    cuda = device.type == "cuda"
    bf16 = cuda or cpu_has_bf16()
    model = build_model("reference").to(device).to(memory_format=torch.channels_last)
    label = "bf16, " if bf16 else "fp32 (no native bf16), "
    label += "channels_last, " + ("on-device data + augmentation" if cuda else "batched augmentation")
    rows.append((f"this trainer ({label})",
                 our_loop(model, arrays, device, args.batch, args.steps, amp=True, channels_last=True)))
    if args.compile:
        compiled = torch.compile(model)
        rows.append(("this trainer + torch.compile",
                     our_loop(compiled, arrays, device, args.batch, args.steps, amp=True, channels_last=True)))
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{name}; reference U-Net (7.76 M parameters), {args.size}x{args.size}, batch {args.batch}, "
          f"{args.steps} timed steps; {flops / 1e9:.1f} GFLOP per image per training step\n")
    print("| loop | images/s | vs reference | achieved TFLOP/s |")
    print("| --- | ---: | ---: | ---: |")
    for label, rate in rows:
        print(f"| {label} | {rate:.2f} | {rate / base:.2f}x | {rate * flops / 1e12:.3f} |")
    print(f"\npeak memory: {peak_memory_gb(device):.2f} GB ({'GPU allocated' if cuda else 'process RSS'})")


if __name__ == "__main__":
    main()
