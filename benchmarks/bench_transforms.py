"""Train-time augmentation speed: unet.transforms.batch (one batched warp) against per-sample CPU baselines.

    python benchmarks/bench_transforms.py [--device cpu|cuda] [--batch 16] [--size 256] [--rounds 7]
                                          [--elastic-sigma 0] [--json FILE]

A batch is --batch slices of --size x --size x 3 float32 with a 0/1 uint8 mask and a float32
weight map, augmented with the reference's ranges (zoom 1 +- 0.05, rotate +-15 degrees, flip
p 0.5). Rows, ms per batch, best of --rounds rounds, all runs interleaved in every round so that
load from other processes hits them alike:

  skimage (reference)   per sample, as a DataLoader worker of mateuszbuda/brain-segmentation-pytorch
                        does it: rescale, pad/crop, rotate, fliplr; image and weight order 1, mask 0
  scipy affine          per sample, one combined ndimage.affine_transform a channel (order 1 / 0 / 1)
  torch, N threads      augment_batch on the CPU tensors, including drawing the parameters
  torch, 1 thread       the same on one core, as one DataLoader worker would have it

The baselines use one core each; a DataLoader with k workers divides their time by at most k.
--device cuda adds augment_batch on the GPU (torch.cuda.synchronize around each timed batch,
the batch already on the GPU as in a training loop). The last line checks that ours and the scipy
row did the same work: same matrices, mask agreement and mean image difference. --json FILE
writes the figures (benchmarks/gpu_check.py reads them).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from skimage.transform import rescale, rotate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unet.transforms.batch import affine_matrix, augment_batch, draw_affine_params  # noqa: E402


def phantom(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """z-scored-looking slices: a brain disc on a constant negative background, a brighter square."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.empty((n, 3, size, size), np.float32)
    masks = np.zeros((n, 1, size, size), np.uint8)
    for i in range(n):
        cy, cx = rng.integers(size * 2 // 5, size * 3 // 5, size=2)
        brain = (yy - cy) ** 2 + (xx - cx) ** 2 < (size * 2 // 5) ** 2
        top, left = rng.integers(size // 4, size // 2, size=2)
        masks[i, 0, top : top + size // 8, left : left + size // 10] = 1
        for c in range(3):
            images[i, c] = np.where(brain, 0.5 + 0.2 * c + 1.5 * masks[i, 0], -1.2) + rng.normal(0, 0.05, (size, size))
    weights = 1.0 + 9.0 * masks.astype(np.float32)
    return torch.from_numpy(images), torch.from_numpy(masks), torch.from_numpy(weights)


def skimage_reference(image: np.ndarray, mask: np.ndarray, weight: np.ndarray, rng: np.random.Generator):
    """One slice, (H, W, C) / (H, W) / (H, W): rescale + pad or crop, rotate, flip, like the reference."""
    size = image.shape[0]
    zoom, angle = rng.uniform(0.95, 1.05), rng.uniform(-15.0, 15.0)
    out = []
    for array, order in ((image, 1), (mask, 0), (weight, 1)):
        kw = {"order": order, "preserve_range": True, "mode": "constant"}
        scaled = rescale(array, zoom, anti_aliasing=False, channel_axis=-1 if array.ndim == 3 else None, **kw)
        if scaled.shape[0] < size:
            low = (size - scaled.shape[0]) // 2
            pad = ((low, size - scaled.shape[0] - low),) * 2 + ((0, 0),) * (array.ndim - 2)
            scaled = np.pad(scaled, pad)
        else:
            low = (scaled.shape[0] - size) // 2
            scaled = scaled[low : low + size, low : low + size]
        out.append(rotate(scaled, angle, resize=False, **kw))
    if rng.random() < 0.5:
        out = [np.fliplr(a).copy() for a in out]
    return out


def scipy_affine(image: np.ndarray, mask: np.ndarray, weight: np.ndarray, theta: np.ndarray):
    """One slice (C, H, W) / (H, W) / (H, W) through a square image's theta, in one resample each."""
    size = image.shape[-1]
    centre = np.full(2, (size - 1) / 2.0)
    matrix = theta[::-1, :2][:, ::-1]  # (x, y) -> (row, col) order
    offset = centre - matrix @ centre
    kw = {"matrix": matrix, "offset": offset, "mode": "constant"}
    out = np.stack([ndimage.affine_transform(ch, order=1, cval=float(ch.min()), **kw) for ch in image])
    out_mask = ndimage.affine_transform(mask, order=0, cval=0, **kw)
    out_weight = ndimage.affine_transform(weight, order=1, cval=float(weight.min()), **kw)
    return out, out_mask, out_weight


def best_ms(runs: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], (time.perf_counter() - start) * 1e3)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--elastic-sigma", type=float, default=0.0, help="add the elastic field to the torch rows")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here; run without it for the CPU rows.")

    images, masks, weights = phantom(args.batch, args.size)
    np_images = images.permute(0, 2, 3, 1).numpy()  # (B, H, W, C) for skimage
    np_masks, np_weights = masks[:, 0].numpy(), weights[:, 0].numpy()
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    zoom, angle, flip = draw_affine_params(args.batch, generator=torch.Generator().manual_seed(1))
    thetas = affine_matrix(zoom, angle, flip, args.size, args.size).double().numpy()
    threads = torch.get_num_threads()

    def ours() -> object:
        return augment_batch(images, masks, weights, elastic_sigma=args.elastic_sigma, generator=gen)

    def ours_one_thread() -> object:
        torch.set_num_threads(1)
        try:
            return ours()
        finally:
            torch.set_num_threads(threads)

    runs: dict[str, Callable[[], object]] = {
        "skimage (reference), per sample": lambda: [
            skimage_reference(np_images[i], np_masks[i], np_weights[i], rng) for i in range(args.batch)
        ],
        "scipy affine, per sample": lambda: [
            scipy_affine(images[i].numpy(), np_masks[i], np_weights[i], thetas[i]) for i in range(args.batch)
        ],
        f"torch augment_batch, {threads} threads": ours,
        "torch augment_batch, 1 thread": ours_one_thread,
    }
    if args.device == "cuda":
        on_gpu = [t.cuda() for t in (images, masks, weights)]

        def ours_cuda() -> object:
            out = augment_batch(*on_gpu, elastic_sigma=args.elastic_sigma, generator=gen)
            torch.cuda.synchronize()
            return out

        ours_cuda()  # warm-up: kernels, allocator
        runs[f"torch augment_batch, {torch.cuda.get_device_name()}"] = ours_cuda
    keys = dict(zip(runs, ["skimage_reference", "scipy_affine", "torch_cpu_all_threads", "torch_cpu_1_thread",
                           "torch_cuda"]))
    best = best_ms(runs, args.rounds)
    elastic = f", elastic sigma {args.elastic_sigma} px on the torch rows" if args.elastic_sigma else ""
    print(f"batch {args.batch} x 3 x {args.size} x {args.size} + mask + weight, best of {args.rounds}{elastic}")
    for name, ms in best.items():
        print(f"  {name:<45} {ms:9.2f} ms/batch  {ms / args.batch:8.3f} ms/slice")

    ours_out = augment_batch(images, masks, weights, affine=torch.from_numpy(thetas).float())
    theirs = [scipy_affine(images[i].numpy(), np_masks[i], np_weights[i], thetas[i]) for i in range(args.batch)]
    agree = np.mean([(ours_out[1][i, 0].numpy() == t[1]).mean() for i, t in enumerate(theirs)])
    diff = np.mean([np.abs(ours_out[0][i].numpy() - t[0]).mean() for i, t in enumerate(theirs)])
    print(f"same matrices, ours vs scipy: mask agreement {agree:.5f}, mean |image difference| {diff:.2e}")
    if args.json is not None:
        reference = best["skimage (reference), per sample"]
        args.json.write_text(json.dumps({
            "batch": args.batch, "size": args.size, "rounds": args.rounds, "elastic_sigma": args.elastic_sigma,
            "ms_per_batch": {keys[name]: ms for name, ms in best.items()},
            "speedup_vs_skimage": {keys[name]: reference / ms for name, ms in best.items()},
            "labels": {keys[name]: name for name in best},
            "mask_agreement_vs_scipy": float(agree), "mean_image_difference_vs_scipy": float(diff),
        }, indent=2))


if __name__ == "__main__":
    main()
