"""lgg-predict end to end on one LGG-size patient, stage by stage, beside the network alone.

    python benchmarks/bench_predict.py [--slices 40] [--size 256] [--threads 2] [--repeats 3]
                                       [--device cpu|cuda] [--json FILE]

One synthetic patient (``--slices`` 256x256 TIFF slices in the Kaggle layout) and the full-size
reference net (32 features, untrained: speed does not depend on the weights) saved as a
checkpoint with image_size 256. Times, best of ``--repeats``, on the CPU with ``--threads``:

* the whole command in-process (``unet.predict.cli.predict``: read TIFFs, load the checkpoint,
  preprocess, network, back to the input grid, threshold + largest component, write NIfTI,
  overlays and summary), against the goal of 5 s on two cores; Python start-up and imports are
  timed apart, in a subprocess;
* each stage on its own, with the pieces ``Segmenter.segment`` chains;
* the network alone in slices/s: the reference's way (fp32, eager, ``torch.no_grad``, batches of
  32), ``Segmenter``'s defaults (bf16 autocast where the CPU has native bf16, batches of 32), and
  what lgg-predict runs (``load_segmenter``: channels_last and batches of ``CPU_BATCH`` on a CPU).

``--device cuda`` runs the network on the GPU (the rest of the command stays on the CPU, as
lgg-predict does); the first, cold call (CUDA context, cuDNN plans) is reported beside the best.
``--json FILE`` writes the figures (benchmarks/gpu_check.py reads them).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from unet.device import cpu_has_bf16
from unet.metrics import most_tumour_slices, postprocess
from unet.models.checkpoint import save_checkpoint
from unet.models.unet import build_model
from unet.predict.cli import N_OVERLAYS, PredictOptions, load_segmenter, predict, summarise, write_outputs
from unet.predict.scan import read_scan
from unet.predict.segmenter import Segmenter, predict_prepared
from unet.preprocess import to_original
from unet.synthetic.generate import write_synthetic_dataset

GOAL_S = 5.0  # on two CPU cores
GPU_GOAL_S = 1.0  # with the network on a GPU


def best_of(repeats: int, fn: Callable[[], object]) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return min(times), result


def setup(root: Path, slices: int, size: int, features: int) -> tuple[Path, Path]:
    raw = write_synthetic_dataset(root / "kaggle_3m", n_patients=1, min_slices=slices, max_slices=slices,
                                  image_size=size)
    torch.manual_seed(0)
    model = build_model("reference", features=features)
    meta = {"preprocess": {"image_size": size, "crop_threshold": 0.1, "clip_percentiles": [10, 99]}, "threshold": 0.5}
    checkpoint = save_checkpoint(root / "model.pt", {"model": model.state_dict(), "model_config": model.config,
                                                     "metadata": meta})
    return next(p for p in raw.iterdir() if p.is_dir()), checkpoint


@torch.no_grad()
def network_fp32(model: torch.nn.Module, images: np.ndarray, batch: int = 32,
                 device: torch.device = torch.device("cpu")) -> np.ndarray:
    """The reference's inference loop: fp32, eager, sigmoid, back on the CPU."""
    model.eval()
    out = []
    for start in range(0, len(images), batch):
        chunk = torch.from_numpy(images[start:start + batch]).to(device)
        out.append(torch.sigmoid(model(chunk)).cpu().numpy())
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the network runs")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    r = args.repeats
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder, checkpoint = setup(root, args.slices, args.size, args.features)
        print(f"{args.slices} slices of {args.size}x{args.size}, reference net ({args.features} features), "
              f"{torch.get_num_threads()} torch threads, native bf16: {cpu_has_bf16()}, best of {r}, "
              f"network on {gpu or 'the CPU'}")

        counter = itertools.count()

        def fresh() -> Path:  # lgg-predict wants a new or empty --output: every timed call gets its own
            return root / f"out-{next(counter)}"

        options = PredictOptions(checkpoint, [folder], root / "out", device=args.device)
        cold, summary = best_of(1, lambda: predict(dataclasses.replace(options, output=fresh())))
        total, summary = best_of(r, lambda: predict(dataclasses.replace(options, output=fresh())))

        stages: dict[str, float] = {}
        stages["read TIFFs"], scan = best_of(r, lambda: read_scan([folder]))
        stages["load checkpoint"], (seg, described) = best_of(r, lambda: load_segmenter(options, root))
        stages["preprocess"], (prepared, geometry) = best_of(r, lambda: seg.prepare(scan.images))
        stages["network"], probs = best_of(
            r, lambda: predict_prepared(seg.model, prepared, seg.device, batch_size=seg.batch_size))
        stages["back to input grid"], full = best_of(r, lambda: to_original(probs, geometry, order=1))
        stages["threshold + largest component"], mask = best_of(r, lambda: postprocess(np.clip(full, 0, 1)))
        shown = most_tumour_slices(mask, count=N_OVERLAYS)
        overlays = {f"overlays/slice_{scan.slice_numbers[k]:03d}.png": k for k in shown}
        summ = summarise(scan, mask, seg, described, options, list(overlays), [])
        stages[f"write NIfTI + {len(overlays)} overlays + summary"], _ = best_of(
            r, lambda: write_outputs(fresh(), scan, mask, summ, overlays))
        every = {f"overlays/slice_{n:03d}.png": k for k, n in enumerate(scan.slice_numbers)}
        all_overlays_s, _ = best_of(r, lambda: write_outputs(fresh(), scan, mask, summ, every))

        print(f"\n{'stage':<40}{'s':>8}")
        for name, seconds in stages.items():
            print(f"{name:<40}{seconds:>8.3f}")
        print(f"{'sum of stages':<40}{sum(stages.values()):>8.3f}")
        goal = GOAL_S if device.type == "cpu" else GPU_GOAL_S
        print(f"{'end to end (predict(), in-process)':<40}{total:>8.3f}   goal <= {goal:.1f} s: "
              f"{'met' if total <= goal else 'MISSED'}")
        print(f"{'  the first, cold call':<40}{cold:>8.3f}")
        print(f"{'  with --all-overlays, the write stage':<40}{all_overlays_s:>8.3f}")
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import unet.predict.cli"], check=True)
        startup = time.perf_counter() - started
        print(f"{'python start-up + imports (subprocess)':<40}{startup:>8.3f}   not in the total")
        print(f"(tumour voxels predicted by the untrained net: {summary['tumour_voxels']})")

        n = len(prepared)
        plain = Segmenter.from_checkpoint(checkpoint, device=device)
        if device.type == "cuda":
            network_fp32(plain.model, prepared, device=device)  # warm-up: cuDNN picks its fp32 kernels
        runs = {  # interleaved rounds, best of each: the machine's load drifts between them
            "reference way (fp32, NCHW, batch 32)": lambda: network_fp32(plain.model, prepared, device=device),
            "Segmenter defaults (bf16*, NCHW, batch 32)": lambda: predict_prepared(plain.model, prepared, plain.device),
            f"lgg-predict (bf16*, channels_last, batch {seg.batch_size})":
                lambda: predict_prepared(seg.model, prepared, seg.device, batch_size=seg.batch_size),
        }
        best = {name: best_of(1, fn)[0] for name, fn in runs.items()}
        for _ in range(r - 1):
            best = {name: min(best[name], best_of(1, fn)[0]) for name, fn in runs.items()}
        reference = best[next(iter(runs))]
        print(f"\nnetwork alone, {n} slices at {args.size} px (* bf16 autocast on CUDA, and on a CPU only where it "
              "has native bf16):")
        for name, seconds in best.items():
            print(f"  {name:<48}{n / seconds:6.1f} slices/s {seconds:6.2f} s  x{reference / seconds:.2f}")
        if args.json is not None:
            args.json.write_text(json.dumps({
                "device": gpu or "cpu", "slices": args.slices, "size": args.size, "features": args.features,
                "threads": torch.get_num_threads(), "repeats": r,
                "end_to_end_s": total, "end_to_end_cold_s": cold, "goal_s": goal, "startup_imports_s": startup,
                "stages_s": stages, "all_overlays_write_s": all_overlays_s,
                "network_slices_per_s": {name: n / seconds for name, seconds in best.items()},
                "tumour_voxels": int(summary["tumour_voxels"]),
            }, indent=2))


if __name__ == "__main__":
    main()
