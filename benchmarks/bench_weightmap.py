"""Weight maps: unet.weightmaps.weightmap.weight_map against the common way, on LGG-like masks.

    python benchmarks/bench_weightmap.py [--n 500] [--size 256] [--seed 0] [--repeat 3]

The common way (the baseline): label the mask, one full-image scipy distance transform per
object, stacked (K, H, W), sorted along axis 0, the two smallest taken; run on every slice.
A second baseline row guards the transforms with "two or more objects" as many published
snippets do. Both run side by side with ours in the same process, slice by slice (each slice's
time is the minimum over --repeat runs), because the machine is shared and timings are noisy.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage

from unet.weightmaps.weightmap import weight_map

N_SLICES_LGG = 3929
EIGHT = np.ones((3, 3), dtype=bool)


def weight_map_baseline(mask, w0=10.0, sigma=5.0, class_weights=(1.0, 1.0), skip_below_two=False):
    foreground = mask > 0
    labels, n_objects = ndimage.label(foreground, structure=EIGHT)
    weights = np.where(foreground, class_weights[1], class_weights[0])
    if skip_below_two and n_objects < 2:
        return weights.astype(np.float32)
    distances = np.stack(
        [ndimage.distance_transform_edt(labels != k) for k in range(1, n_objects + 1)]
        or [np.zeros(mask.shape)]
    )  # (K, H, W)
    if n_objects >= 2:
        distances = np.sort(distances, axis=0)
        border = w0 * np.exp(-((distances[0] + distances[1]) ** 2) / (2 * sigma**2))
        weights = weights + border * ~foreground
    return weights.astype(np.float32)


def blob(size: int, center: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
    """An irregular blob: a disc whose radius wobbles with the angle (three low harmonics)."""
    rows, cols = np.indices((size, size))
    angle = np.arctan2(rows - center[0], cols - center[1])
    wobble = sum(rng.uniform(0, 0.15) * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4))
    return np.hypot(rows - center[0], cols - center[1]) <= radius * (1 + wobble)


def lgg_like_masks(n: int, size: int, seed: int) -> np.ndarray:
    """About 60% empty, 32% one tumour, 8% a tumour with 1 to 4 satellites (2 to 5 objects)."""
    rng = np.random.default_rng(seed)
    scale = size / 256
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n):
        kind = rng.random()
        if kind < 0.60:
            continue
        center = rng.uniform(0.3, 0.7, 2) * size
        radius = rng.uniform(6, 35) * scale
        mask = blob(size, center, radius, rng)
        if kind >= 0.92:
            for _ in range(rng.integers(1, 5)):
                angle = rng.uniform(0, 2 * np.pi)
                far = radius + rng.uniform(6, 50) * scale
                satellite = center + far * np.array([np.sin(angle), np.cos(angle)])
                mask |= blob(size, satellite, rng.uniform(2, 10) * scale, rng)
        masks[i] = mask * 255
    return masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    masks = lgg_like_masks(args.n, args.size, args.seed)
    n_objects = np.array([ndimage.label(m, structure=EIGHT)[1] for m in masks])
    counts = {k: int((n_objects == k).sum()) for k in range(int(n_objects.max()) + 1)}
    print(f"{args.n} masks {args.size}x{args.size}, seed {args.seed}; slices by number of objects: {counts}")

    methods = {
        "baseline (EDT per object, sort)": lambda m: weight_map_baseline(m),
        "baseline, EDT only if >= 2 objects": lambda m: weight_map_baseline(m, skip_below_two=True),
        "unet.weightmaps.weightmap.weight_map": lambda m: weight_map(m),
    }
    seconds = {label: np.full(args.n, np.inf) for label in methods}
    max_diff = {label: 0.0 for label in methods}
    for _ in range(args.repeat):
        for i, mask in enumerate(masks):  # all methods on the same slice, back to back
            maps = {}
            for label, method in methods.items():
                start = time.perf_counter()
                maps[label] = method(mask)
                seconds[label][i] = min(seconds[label][i], time.perf_counter() - start)
            reference = maps["baseline (EDT per object, sort)"]
            for label, got in maps.items():
                max_diff[label] = max(max_diff[label], float(np.abs(got - reference).max()))

    multi = n_objects >= 2
    base = seconds["baseline (EDT per object, sort)"]
    print(f"\n{'method':36s} {'ms/slice':>9s} {'speed-up':>9s} {'>=2 obj ms':>11s} {'speed-up':>9s}"
          f" {'max |diff|':>11s} {'3,929 slices s':>15s}")
    for label, s in seconds.items():
        print(
            f"{label:36s} {1e3 * s.mean():9.3f} {base.mean() / s.mean():8.1f}x"
            f" {1e3 * s[multi].mean():11.3f} {base[multi].mean() / s[multi].mean():8.1f}x"
            f" {max_diff[label]:11.2e} {N_SLICES_LGG * s.mean():15.2f}"
        )
    print(f"\n(>=2 obj: the {int(multi.sum())} slices with two or more objects; max |diff| against the baseline)")


if __name__ == "__main__":
    main()
