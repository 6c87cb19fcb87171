"""Elastic deformation speed: unet.transforms.elastic (torch) against scipy.ndimage.map_coordinates, side by side.

    python benchmarks/bench_elastic.py [--device cpu|cuda] [--n 256] [--batch 4] [--rounds 3] [--rate] [--json FILE]

Every slice is 256x256x3 float32 with a 0/1 uint8 mask and a float32 weight map; both
implementations warp all three through the same dense field (reflection = scipy's "mirror").
CPU rows: ms a slice over --n slices, best of --rounds rounds, ours and the baseline interleaved
in each round so that load from other processes hits both alike; wall time and this process's CPU
time (steadier on a shared machine). The torch rows include drawing the field; the scipy rows get
it for free (only coordinates + map_coordinates are timed).
The last block compares the outputs: torch's bicubic is Keys' cubic convolution (a = -0.75),
scipy's order 3 an interpolating cubic B-spline, so the image differs a little where it has
edges; on the interior (sample points >= 3 px inside) the borders play no part.
--device cuda: slices per second for one batch of --n on the GPU (torch.cuda.synchronize around
the timed loop) next to the scipy rate on one core. --rate gives those rows on the CPU too (a
rehearsal of the GPU rows, as benchmarks/gpu_check.py --device cpu runs it); --json FILE writes
the figures.
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
import torch.nn.functional as F
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unet.transforms.elastic import deform_copies, elastic_deform, random_displacement, sampling_grid  # noqa: E402

SIZE = 256


def phantom(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """z-scored-looking slices: a blurred brain disc, a brighter square 'tumour', mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images = np.empty((n, 3, SIZE, SIZE), np.float32)
    masks = np.zeros((n, 1, SIZE, SIZE), np.uint8)
    for i in range(n):
        cy, cx = rng.integers(100, 156, size=2)
        brain = ((yy - cy) ** 2 + (xx - cx) ** 2 < 100**2).astype(np.float32)
        top, left = rng.integers(70, 150, size=2)
        masks[i, 0, top : top + 30, left : left + 24] = 1
        for c in range(3):
            raw = brain * (1.0 + 0.3 * c) + 1.5 * masks[i, 0] + rng.normal(0, 0.05, (SIZE, SIZE))
            images[i, c] = ndimage.gaussian_filter(raw, 1.5) * 2.0 - 1.0
    weights = 1.0 + 9.0 * masks.astype(np.float32)
    return torch.from_numpy(images), torch.from_numpy(masks), torch.from_numpy(weights)


def scipy_warp(
    image: np.ndarray, mask: np.ndarray, weight: np.ndarray, field: np.ndarray, order: int = 3
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Baseline for one slice: image (C, H, W) per channel at `order`, mask order 0, weight order 1."""
    ys, xs = np.mgrid[:SIZE, :SIZE].astype(np.float32)
    coords = np.stack([ys + field[..., 1], xs + field[..., 0]])  # (2, H, W): rows, cols
    out = np.stack([ndimage.map_coordinates(ch, coords, order=order, mode="mirror") for ch in image])
    out_mask = ndimage.map_coordinates(mask, coords, order=0, mode="mirror")
    out_weight = ndimage.map_coordinates(weight, coords, order=1, mode="mirror")
    return out, out_mask, out_weight


def best_ms_per_slice(runs: dict[str, Callable[[], int]], rounds: int) -> dict[str, tuple[float, float]]:
    """Interleave the runs `rounds` times; each returns its slice count; best (wall, CPU) ms a slice.

    CPU time (time.process_time) is what this process used, all its threads together: on a
    shared machine it is the steadier figure for the one-thread rows.
    """
    best = dict.fromkeys(runs, (float("inf"), float("inf")))
    for _ in range(rounds):
        for name, run in runs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            slices = run()
            wall, cpu = (time.perf_counter() - wall) * 1e3 / slices, (time.process_time() - cpu) * 1e3 / slices
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


def cpu_runs(images: torch.Tensor, masks: torch.Tensor, weights: torch.Tensor, batch: int, threads: int) -> dict:
    n = images.shape[0]
    fields = random_displacement(n, SIZE, SIZE, generator=torch.Generator().manual_seed(0)).numpy()
    np_images, np_masks, np_weights = images.numpy(), masks[:, 0].numpy(), weights[:, 0].numpy()
    nhwc = np.ascontiguousarray(np_images.transpose(0, 2, 3, 1))

    def one_thread(fn: Callable[[], int]) -> Callable[[], int]:
        def run() -> int:
            torch.set_num_threads(1)
            return fn()
        return run

    def all_threads(fn: Callable[[], int]) -> Callable[[], int]:
        def run() -> int:
            torch.set_num_threads(threads)
            return fn()
        return run

    def per_slice(mode: str) -> Callable[[], int]:
        def run() -> int:
            for i in range(n):
                elastic_deform(images[i : i + 1], masks[i : i + 1], weights[i : i + 1], image_mode=mode)
            return n
        return run

    def batched(mode: str, batch: int) -> Callable[[], int]:
        def run() -> int:
            for s in range(0, n, batch):
                elastic_deform(images[s : s + batch], masks[s : s + batch], weights[s : s + batch], image_mode=mode)
            return n
        return run

    def copies() -> int:
        deform_copies(nhwc, np_masks, np_weights, copies=1)
        return n

    def per_tap_reflection() -> int:
        for i in range(n):
            field = random_displacement(1, SIZE, SIZE)
            F.grid_sample(images[i : i + 1], sampling_grid(field), mode="bicubic", padding_mode="reflection",
                          align_corners=True)
        return n

    def baseline(order: int) -> Callable[[], int]:
        def run() -> int:
            for i in range(n):
                scipy_warp(np_images[i], np_masks[i], np_weights[i], fields[i], order)
            return n
        return run

    return {
        "torch bicubic, 1 thread, 1 slice a call": one_thread(per_slice("bicubic")),
        f"torch bicubic, 1 thread, batch {batch}": one_thread(batched("bicubic", batch)),
        "torch bicubic, 1 thread, batch 32": one_thread(batched("bicubic", 32)),
        f"torch bicubic, {threads} threads, batch {batch}": all_threads(batched("bicubic", batch)),
        "torch bilinear, 1 thread, 1 slice a call": one_thread(per_slice("bilinear")),
        "deform_copies (numpy in/out, fp16), 1 thread, batch 4": one_thread(copies),
        "  image only, grid_sample's per-tap reflection, 1 thread": one_thread(per_tap_reflection),
        "scipy map_coordinates order 3 (baseline)": baseline(3),
        "scipy map_coordinates order 1": baseline(1),
    }


def compare(images: torch.Tensor, masks: torch.Tensor, weights: torch.Tensor, count: int) -> None:
    """Max differences between torch and scipy on the same fields, over `count` slices."""
    field = random_displacement(count, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    ys, xs = np.mgrid[:SIZE, :SIZE]
    worst = {"image bicubic vs order 3 (interior)": 0.0, "image bilinear vs order 1 (interior)": 0.0,
             "weight bilinear vs order 1 (whole)": 0.0, "mask: fraction of pixels differing": 0.0}
    for mode, order, key in (("bicubic", 3, "image bicubic vs order 3 (interior)"),
                             ("bilinear", 1, "image bilinear vs order 1 (interior)")):
        ours, our_mask, our_weight = elastic_deform(
            images[:count], masks[:count], weights[:count], image_mode=mode, displacement=field
        )
        for i in range(count):
            f = field[i].numpy()
            ref, ref_mask, ref_weight = scipy_warp(images[i].numpy(), masks[i, 0].numpy(), weights[i, 0].numpy(), f, order)
            sy, sx = ys + f[..., 1], xs + f[..., 0]
            interior = (sy >= 3) & (sy <= SIZE - 4) & (sx >= 3) & (sx <= SIZE - 4)
            diff = np.abs(ours[i].numpy() - ref)[:, interior]
            worst[key] = max(worst[key], float(diff.max()))
            worst["weight bilinear vs order 1 (whole)"] = max(
                worst["weight bilinear vs order 1 (whole)"], float(np.abs(our_weight[i, 0].numpy() - ref_weight).max())
            )
            worst["mask: fraction of pixels differing"] = max(
                worst["mask: fraction of pixels differing"], float((our_mask[i, 0].numpy() != ref_mask).mean())
            )
    span = float(images.max() - images.min())
    print(f"\nagreement with scipy on {count} slices (image value range {span:.2f}):")
    for key, value in worst.items():
        print(f"  {key:45s} {value:.2e}")


def device_rate(images: torch.Tensor, masks: torch.Tensor, weights: torch.Tensor, rounds: int, device: str) -> dict:
    """Slices per second for one batch on `device` (cuda; cpu for a dry run of this code)."""
    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    image, mask, weight = images.to(device), masks.to(device), weights.to(device)
    n = image.shape[0]
    figures: dict = {"device": name, "batch": n}
    print(f"\n{name}, one batch of {n} slices, rounds of 10 batches, best round:")
    for mode in ("bicubic", "bilinear"):
        for _ in range(3):
            elastic_deform(image, mask, weight, image_mode=mode)  # warm-up
        best = float("inf")
        for _ in range(rounds):
            sync()
            start = time.perf_counter()
            for _ in range(10):
                elastic_deform(image, mask, weight, image_mode=mode)
            sync()
            best = min(best, (time.perf_counter() - start) / 10)
        figures[f"{mode}_slices_per_s"] = n / best
        print(f"  elastic_deform {mode:8s} (+ nearest mask, bilinear weight): {n / best:10,.0f} slices/s")
    nhwc = np.ascontiguousarray(images.numpy().transpose(0, 2, 3, 1)).astype(np.float16)
    start = time.perf_counter()
    deform_copies(nhwc, masks[:, 0].numpy(), weights[:, 0].numpy(), copies=2, device=device)
    rate = 2 * n / (time.perf_counter() - start)
    figures["deform_copies_slices_per_s"] = rate
    print(f"  deform_copies, numpy fp16 in and out, 2 copies:            {rate:10,.0f} slices/s")
    on_cpu = elastic_deform(images[:8], masks[:8], weights[:8], generator=torch.Generator().manual_seed(3))
    on_dev = elastic_deform(image[:8], mask[:8], weight[:8], generator=torch.Generator().manual_seed(3))
    figures["same_seed_image_max_diff"] = float((on_cpu[0] - on_dev[0].cpu()).abs().max())
    figures["same_seed_mask_pixels_differing"] = int((on_cpu[1] != on_dev[1].cpu()).sum())
    print(f"  same seed, CPU vs {device.type}: image max |diff| {figures['same_seed_image_max_diff']:.2e}, "
          f"mask pixels differing {figures['same_seed_mask_pixels_differing']}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--n", type=int, default=256, help="slices (GPU: the batch size)")
    parser.add_argument("--batch", type=int, default=4, help="CPU batch of the batched rows (4 fits the cache)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", action="store_true", help="the --device cuda rows, on any device")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False here; run with --device cpu")

    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads available; slices {SIZE}x{SIZE}x3 + mask + weight map")
    images, masks, weights = phantom(args.n)
    figures: dict = {"size": SIZE, "n": args.n, "rounds": args.rounds}
    if args.device == "cuda" or args.rate:
        figures.update(device_rate(images, masks, weights, args.rounds, args.device))
        count = min(args.n, 16)
        runs = cpu_runs(images[:count], masks[:count], weights[:count], args.batch, 1)
        keep = {"torch bicubic, 1 thread, 1 slice a call": "cpu_torch_1thread_slices_per_s",
                "scipy map_coordinates order 3 (baseline)": "cpu_scipy_baseline_slices_per_s"}
        for name, (_, cpu) in best_ms_per_slice({k: runs[k] for k in keep}, args.rounds).items():
            figures[keep[name]] = 1e3 / cpu
            print(f"  {name + ', CPU time':58s} {1e3 / cpu:10,.0f} slices/s")
        figures["speedup_vs_scipy_one_core"] = figures["bicubic_slices_per_s"] / figures["cpu_scipy_baseline_slices_per_s"]
    else:
        runs = cpu_runs(images, masks, weights, args.batch, threads)
        best = best_ms_per_slice(runs, args.rounds)
        torch.set_num_threads(threads)
        baseline = best["scipy map_coordinates order 3 (baseline)"][1]
        print(f"\nms a slice, best of {args.rounds} rounds of {args.n} slices; wall and CPU time; speed-up in CPU time:")
        for name, (wall, cpu) in best.items():
            print(f"  {name:58s} wall {wall:6.2f}  cpu {cpu:6.2f}  x{baseline / cpu:5.1f}")
        figures["cpu_ms_per_slice"] = {name: {"wall": wall, "cpu": cpu} for name, (wall, cpu) in best.items()}
        compare(images, masks, weights, min(args.n, 8))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
