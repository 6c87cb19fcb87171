"""The whole precompute (weight maps + K elastic copies) of an LGG-size synthetic set, two cores.

    python benchmarks/bench_precompute.py [--patients 110] [--copies 4] [--workers 2] [--work DIR]

Generates a synthetic set the size of the LGG set (110 patients, ~3,900 slices at 256x256),
prepares it at 256 px (timed, but not part of the precompute), then times the two precompute
stages' work as the stages run it (per-patient tasks on a pool of ``--workers`` threads). The
baselines run in the same process on a sample of slices and are extrapolated to the whole set:
the per-object distance transform + sort weight map (benchmarks/bench_weightmap.py), and
scipy.ndimage.map_coordinates with the same dense fields for the elastic copies.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).parent))

from bench_weightmap import weight_map_baseline  # noqa: E402

from unet.augment.stage import augment_patient  # noqa: E402
from unet.config import PrepareConfig, SplitConfig  # noqa: E402
from unet.io.layout import load_patient_arrays  # noqa: E402
from unet.prepare.stage import prepare_dataset  # noqa: E402
from unet.synthetic.generate import write_synthetic_dataset  # noqa: E402
from unet.transforms.elastic import random_displacement  # noqa: E402
from unet.units import scale_px  # noqa: E402
from unet.weightmaps.stage import class_weights, patient_weight_maps  # noqa: E402


def timed(label: str, fn):
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    print(f"  {label:<44} {seconds:8.1f} s", flush=True)
    return result, seconds


def scipy_elastic(image: np.ndarray, mask: np.ndarray, weight: np.ndarray, field: np.ndarray):
    """The baseline warp of one slice: map_coordinates per channel (cubic), mask order 0, weight order 1."""
    height, width = mask.shape
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    coords = np.stack([rows + field[..., 1], cols + field[..., 0]])
    warped = np.stack([ndimage.map_coordinates(image[..., c], coords, order=3, mode="mirror")
                       for c in range(image.shape[-1])], axis=-1)
    return (warped, ndimage.map_coordinates(mask, coords, order=0, mode="mirror"),
            ndimage.map_coordinates(weight, coords, order=1, mode="mirror"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=110)
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--baseline-sample", type=int, default=150)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir, removed)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, 2 // args.workers))  # two cores in all, shared by the worker threads
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-precompute-"))
    try:
        print(f"set-up (not the precompute), in {work}:")
        raw, _ = timed("synthetic LGG-size set (256 px TIFFs)", lambda: write_synthetic_dataset(
            work / "raw/kaggle_3m", n_patients=args.patients, min_slices=20, max_slices=88, seed=0))
        config = PrepareConfig(image_size=256, out_dir=work / "prepared", nifti=False,
                               split=SplitConfig(val_fraction=0.15, test_fraction=0.15))
        with ThreadPoolExecutor(args.workers) as pool:
            def threads(fn, items):
                return list(pool.map(fn, items))

            manifest, _ = timed("prepare at 256 px", lambda: prepare_dataset(raw, config, each=threads))
        slices, train_dirs = len(manifest), sorted(manifest.loc[manifest.split == "train", "array_dir"].unique())
        train_slices = int((manifest.split == "train").sum())
        print(f"  {slices} slices, {train_slices} in training, tumour in {manifest.has_tumour.mean():.0%}")

        weights = class_weights(manifest, "inverse_frequency")
        sigma_w, sigma_e = scale_px(5.0, 256), scale_px(10.0, 256)
        dirs = sorted(manifest.array_dir.unique())
        print(f"\nprecompute ({args.workers} worker threads, {torch.get_num_threads()} torch thread(s) each):")
        with ThreadPoolExecutor(args.workers) as pool:
            _, t_weight = timed("weight maps, all slices", lambda: list(pool.map(
                lambda d: patient_weight_maps(config.out_dir, d, work / "weightmaps", w0=10.0, sigma=sigma_w,
                                              weights=weights), dirs)))
            _, t_elastic = timed(f"elastic copies, K={args.copies}, training slices", lambda: list(pool.map(
                lambda d: augment_patient(config.out_dir, work / "weightmaps", d, work / "augmented",
                                          copies=args.copies, grid=3, sigma=sigma_e, seed=0), train_dirs)))
        written = sum(f.stat().st_size for f in (work / "augmented").rglob("*.npy"))
        total = t_weight + t_elastic

        rng = np.random.default_rng(0)
        sample = manifest.sample(min(args.baseline_sample, slices), random_state=0)
        cache = {d: load_patient_arrays(config.out_dir, d) for d in sample.array_dir.unique()}
        masks = [np.asarray(cache[d][1][i]) for d, i in zip(sample.array_dir, sample["index"])]
        images = [np.asarray(cache[d][0][i], dtype=np.float32) for d, i in zip(sample.array_dir, sample["index"])]
        start = time.perf_counter()
        maps = [weight_map_baseline(m, 10.0, sigma_w, weights) for m in masks]
        base_weight = (time.perf_counter() - start) / len(masks) * slices / args.workers
        fields = random_displacement(len(masks), 256, 256, grid=3, sigma=sigma_e,
                                     generator=torch.Generator().manual_seed(int(rng.integers(1 << 31)))).numpy()
        start = time.perf_counter()
        for image, mask, weight, field in zip(images, masks, maps, fields):
            scipy_elastic(image, mask, weight, field)
        base_elastic = (time.perf_counter() - start) / len(masks) * train_slices * args.copies / args.workers

        print("\n| step | this pipeline | baseline (extrapolated) | speed-up |")
        print("| --- | ---: | ---: | ---: |")
        for name, ours, base in (("weight maps", t_weight, base_weight), ("elastic copies", t_elastic, base_elastic),
                                 ("whole precompute", total, base_weight + base_elastic)):
            print(f"| {name} | {ours:.1f} s | {base:.1f} s | {base / ours:.1f}x |")
        print(f"\nslices: {slices}; elastic copies written: {train_slices * args.copies}, "
              f"{written / 1e9:.2f} GB ({written / 1e9 / max(args.copies, 1):.2f} GB per copy of the training set; "
              f"{written / max(args.copies, 1) / train_slices * slices / 1e9:.2f} GB per copy of all {slices} slices)")
        print(f"goal: whole precompute <= 60 s -> {'met' if total <= 60 else 'NOT met'} ({total:.1f} s)")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
