"""Training throughput: this trainer against a plain reference-configuration loop, same model.

    python benchmarks/bench_train.py [--device cpu|cuda] [--size 256] [--batch 16] [--steps 5] [--compile]
                                     [--only reference,trainer,compile] [--resident] [--json FILE]

The baseline is the reference repo's loop as it is usually run: fp32, eager, a DataLoader whose
workers augment one slice at a time on the CPU (skimage rescale +-5%, rotate +-15 degrees,
horizontal flip), batches copied to the device, Adam 1e-4, soft Dice. This trainer: the same
net and loss through ``unet.train.loop.train_one_epoch``: batched augmentation on the training device
(``unet.transforms.batch``), the split resident on the device on CUDA, bf16 autocast and channels_last
on CUDA, optionally ``torch.compile``. Prints images/s, the speed-up, achieved TFLOP/s (from
torch's FLOP counter) and peak memory. Synthetic tensors: speed does not depend on the pixels.

``--only`` times a subset of the rows (the GPU check runs each row in its own process, with its own
time limit); ``--resident`` feeds the trainer through ``DeviceBatches`` on any device (what CUDA
gets), so the resident-data path can be rehearsed on a CPU; ``--compile-backend aot_eager`` traces
with torch.compile without generating kernels (a quick CPU rehearsal of the compile row);
``--json FILE`` writes the figures for benchmarks/gpu_check.py.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch
from skimage.transform import rescale, rotate
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from unet.device import cpu_has_bf16
from unet.models.unet import build_model
from unet.train.data import SliceArrays
from unet.train.loader import CpuBatches, DeviceBatches
from unet.train.loop import train_one_epoch
from unet.train.losses import CombinedLoss, soft_dice_loss
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


def our_loop(model, arrays, device, batch, steps, amp, channels_last, resident: bool | None = None) -> float:
    """images/s of this trainer; ``resident`` (default: on CUDA) holds the data on the device."""
    resident = device.type == "cuda" if resident is None else resident
    kwargs = dict(batch_size=batch, tumour_share=10 / 11)
    warm = (DeviceBatches(arrays, device, steps=1, **kwargs) if resident
            else CpuBatches(arrays, steps=1, **kwargs))
    timed = (DeviceBatches(arrays, device, steps=steps, **kwargs) if resident
             else CpuBatches(arrays, steps=steps, **kwargs))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    args = dict(augment=AugmentParams(), amp=amp, channels_last=channels_last, progress=False,
                generator=torch.Generator().manual_seed(0))
    train_one_epoch(model, warm, CombinedLoss(), optimizer, device, epoch=0, **args)
    _sync(device)
    return train_one_epoch(model, timed, CombinedLoss(), optimizer, device, epoch=1, **args)["images_per_s"]


def train_step_flops(model, size: int, batch: int, device) -> float:
    """FLOP per image of one training step (forward + backward), from torch's FLOP counter."""
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


ROWS = ("reference", "trainer", "compile")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rows", type=int, default=256, help="synthetic slices to draw batches from")
    parser.add_argument("--features", type=int, default=32, help="base features of the reference net")
    parser.add_argument("--workers", type=int, default=2, help="baseline DataLoader workers (the reference repo: 4)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend (aot_eager: trace only, a quick CPU rehearsal)")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated rows to time, of {', '.join(ROWS)} (default: all asked for)")
    parser.add_argument("--resident", action="store_true",
                        help="feed the trainer through DeviceBatches on any device (default: on CUDA only)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args()
    only = set(ROWS[:2] + (("compile",) if args.compile else ())) if args.only is None else set(args.only.split(","))
    if only - set(ROWS):
        parser.error(f"--only: unknown rows {sorted(only - set(ROWS))}; choose from {', '.join(ROWS)}")
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    resident = cuda or args.resident
    arrays = synthetic_arrays(args.rows, args.size)
    flops = train_step_flops(build_model("reference", features=args.features).to(device), args.size, args.batch, device)
    rows: list[dict] = []

    def timed_row(key: str, label: str, run) -> None:
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        rate = run()
        rows.append({"row": key, "label": label, "images_per_s": rate, "tflops": rate * flops / 1e12,
                     "peak_memory_gb": peak_memory_gb(device)})

    torch.manual_seed(0)
    if "reference" in only:
        timed_row("reference", f"reference loop (fp32, eager, per-slice CPU augmentation in {args.workers} "
                  "DataLoader workers)",
                  lambda: reference_loop(build_model("reference", features=args.features).to(device), arrays, device,
                                         args.batch, args.steps, args.workers))
    bf16 = cuda or cpu_has_bf16()
    label = "bf16, " if bf16 else "fp32 (no native bf16), "
    label += "channels_last, " + ("resident data, batched on-device augmentation" if resident
                                  else "batched augmentation")
    if "trainer" in only or "compile" in only:
        model = build_model("reference", features=args.features).to(device).to(memory_format=torch.channels_last)
    if "trainer" in only:
        timed_row("trainer", f"this trainer ({label})",
                  lambda: our_loop(model, arrays, device, args.batch, args.steps, amp=True, channels_last=True,
                                   resident=resident))
    if "compile" in only:
        compiled = torch.compile(model, backend=args.compile_backend)
        started = time.perf_counter()
        timed_row("compile", f"this trainer + torch.compile ({args.compile_backend})",
                  lambda: our_loop(compiled, arrays, device, args.batch, args.steps, amp=True, channels_last=True,
                                   resident=resident))
        rows[-1]["seconds_with_compile"] = time.perf_counter() - started
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{name}; reference U-Net ({args.features} features), {args.size}x{args.size}, batch {args.batch}, "
          f"{args.steps} timed steps; {flops / 1e9:.1f} GFLOP per image per training step\n")
    base = next((r["images_per_s"] for r in rows if r["row"] == "reference"), None)
    print("| loop | images/s | vs reference | achieved TFLOP/s | peak memory GB |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        ratio = f"{r['images_per_s'] / base:.2f}x" if base else "-"
        print(f"| {r['label']} | {r['images_per_s']:.2f} | {ratio} | {r['tflops']:.3f} | {r['peak_memory_gb']:.2f} |")
    print(f"\npeak memory: {'GPU allocated (torch.cuda.max_memory_allocated)' if cuda else 'process RSS'}")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "device": name, "size": args.size, "batch": args.batch, "steps": args.steps, "features": args.features,
            "workers": args.workers, "resident": resident, "amp_bf16": bf16,
            "gflop_per_image": flops / 1e9, "rows": rows,
            "speedup": {r["row"]: r["images_per_s"] / base for r in rows} if base else None,
        }, indent=2))


if __name__ == "__main__":
    main()
