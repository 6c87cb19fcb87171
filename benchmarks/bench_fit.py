"""A short real training: an LGG-size synthetic set through the train stage's own pieces, timed per epoch.

    python benchmarks/bench_fit.py [--device auto|cuda|cpu] [--patients 110] [--size 256] [--epochs 3]
                                   [--batch 16] [--features 32] [--workers N] [--resident] [--json FILE]

The set: ``--patients`` phantom volumes of the synthetic source (20 to 88 slices each, 256 px raw
slices, as ``data.source: synthetic`` draws them), preprocessed with the reference's per-volume
preprocessing at ``--size`` px and given the U-Net paper's weight maps, in ``--workers`` processes
and in memory (no TIFFs, no stage folders: that part is the precompute's benchmark). The split is
the reference's: its 10 validation patients (fewer on a tiny set), edge slices dropped from
training. Then the train stage's network (``build_network``), batches (``make_batches``:
resident tensors and index draws on CUDA, a DataLoader on the CPU; ``--resident`` takes the CUDA
path on any device) and ``fit`` with the reference recipe (Adam 1e-4, batch 16, soft Dice, bf16
autocast and channels_last), validating every epoch and writing checkpoints, ``--epochs`` times.

Reports per epoch: training seconds and images/s, the whole epoch's wall time (validation and
checkpoints included), achieved TFLOP/s (FLOP per image per training step from torch's counter,
72.3 G at 256 px for the reference net), the validation DSC; peak memory
(``torch.cuda.max_memory_allocated`` on a GPU, the process's RSS on a CPU); and what 100 epochs
would take at this pace (the goal: under 5 minutes for the full LGG set on one GPU).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NOMINAL_GFLOP_256 = 72.3  # reference net (32 features), one training step, one image at 256 px
GOAL_100_EPOCHS_S = 300.0


def prepare_patient(index: int, seed: int, min_slices: int, max_slices: int, raw_size: int, size: int):
    """One phantom patient: (images (S, 3, size, size) float16, masks (S, 1, size, size) uint8)."""
    from unet.preprocess import preprocess_volume
    from unet.synthetic.generate import patient_spec
    from unet.synthetic.phantom import render_volume

    spec = patient_spec(seed, index, min_slices, max_slices)
    images, masks = render_volume(spec, raw_size)
    volume, prepared, _ = preprocess_volume(images, (masks > 0).astype(np.uint8), size=size)
    return (np.ascontiguousarray(volume.transpose(0, 3, 1, 2), dtype=np.float16),
            prepared[:, None].astype(np.uint8))


def build_set(patients: int, size: int, workers: int, *, seed: int = 0, min_slices: int = 20, max_slices: int = 88,
              raw_size: int = 256):
    """Every patient prepared, in ``workers`` processes (spawned: torch may already hold threads)."""
    from unet.synthetic.generate import lgg_patient_names

    names = lgg_patient_names(patients)
    args = [(i, seed, min_slices, max_slices, raw_size, size) for i in range(patients)]
    if workers <= 1:
        volumes = [prepare_patient(*a) for a in args]
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            volumes = list(pool.map(prepare_patient, *zip(*args)))
    return names, volumes


def split_arrays(names: list[str], volumes: list, *, w0: float = 10.0, sigma_256: float = 5.0):
    """(train, val) SliceArrays: the reference's validation patients; edge slices out of training."""
    from unet.split import REFERENCE_VAL_PATIENTS, reference_validation
    from unet.train.data import SliceArrays
    from unet.units import scale_px
    from unet.weightmaps.weightmap import class_weights_from_counts, weight_maps

    val_names = set(reference_validation(names, min(REFERENCE_VAL_PATIENTS, max(1, len(names) // 3))))
    parts: dict[str, list] = {"train": [], "val": []}
    for name, (images, masks) in zip(names, volumes):
        part = "val" if name in val_names else "train"
        rows = np.arange(len(images))
        if part == "train" and len(rows) > 2:
            rows = rows[1:-1]  # the reference drops each volume's first and last slice
        parts[part].append((name, images[rows], masks[rows], rows))
    train_masks = np.concatenate([m for _, _, m, _ in parts["train"]])
    foreground = int(train_masks.sum())
    weights = class_weights_from_counts(max(foreground, 1), train_masks.size)
    size = train_masks.shape[-1]

    def arrays(chunks: list) -> SliceArrays:
        images = np.concatenate([c[1] for c in chunks])
        masks = np.concatenate([c[2] for c in chunks])
        maps = weight_maps(masks[:, 0], w0=w0, sigma=scale_px(sigma_256, size), class_weights=weights)
        patient = np.concatenate([np.full(len(c[3]), c[0], dtype=object) for c in chunks])
        index = np.concatenate([c[3] for c in chunks]).astype(np.int64)
        return SliceArrays(images, masks, maps[:, None].astype(np.float16), patient, index,
                           np.zeros(len(images), np.int64))

    return arrays(parts["train"]), arrays(parts["val"])


def train_step_gflop(features: int, size: int, device) -> float:
    """GFLOP per image of one training step of the reference net, from torch's FLOP counter."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from unet.models.unet import build_model
    from unet.train.losses import soft_dice_loss

    model = build_model("reference", features=features).to(device)
    x = torch.randn(2, 3, size, size, device=device)
    with FlopCounterMode(display=False) as counter:
        soft_dice_loss(model(x), torch.zeros(2, 1, size, size, device=device)).backward()
    return counter.get_total_flops() / 2 / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--patients", type=int, default=110)
    parser.add_argument("--size", type=int, default=256, help="network input size (the reference: 256)")
    parser.add_argument("--raw-size", type=int, default=256, help="raw phantom slice size (the LGG set: 256)")
    parser.add_argument("--min-slices", type=int, default=20)
    parser.add_argument("--max-slices", type=int, default=88)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=None, help="steps an epoch (default: one pass over training)")
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1),
                        help="processes preparing the set")
    parser.add_argument("--resident", action="store_true", help="DeviceBatches (the CUDA path) on any device")
    parser.add_argument("--compile", action="store_true", help="train.compile: torch.compile the model")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args()

    started = time.perf_counter()
    names, volumes = build_set(args.patients, args.size, args.workers, min_slices=args.min_slices,
                               max_slices=args.max_slices, raw_size=args.raw_size)
    train_arrays, val_arrays = split_arrays(names, volumes)
    del volumes
    data_s = time.perf_counter() - started
    print(f"set: {args.patients} patients, {len(train_arrays)} training slices, {len(val_arrays)} validation "
          f"slices at {args.size} px, prepared in {data_s:.1f} s ({args.workers} processes)", flush=True)

    import torch

    from unet.config import ModelConfig, PipelineConfig, PrepareConfig, TrainConfig
    from unet.device import select_device
    from unet.preprocess import preprocess_metadata
    from unet.train.loader import DeviceBatches
    from unet.train.loop import fit, seed_everything
    from unet.train.stage import build_network, make_batches

    device = select_device(args.device)
    cuda = device.type == "cuda"
    gflop = train_step_gflop(args.features, args.size, device)
    with tempfile.TemporaryDirectory(prefix="bench-fit-") as tmp:
        config = PipelineConfig(
            prepare=PrepareConfig(image_size=args.size, out_dir=Path(tmp) / "prepared", nifti=False),
            model=ModelConfig(features=args.features),
            train=TrainConfig(epochs=args.epochs, device=device.type, batch_size=args.batch,
                              steps_per_epoch=args.steps, lr=args.lr, elastic_copies=False, compile=args.compile,
                              out_dir=Path(tmp) / "models", metrics_dir=Path(tmp) / "metrics"),
        )
        cfg = config.train
        seed_everything(cfg.seed)
        model = build_network(config, device)
        batches = make_batches(train_arrays, config, device, 0, 1)
        if args.resident and not isinstance(batches, DeviceBatches):
            batches = DeviceBatches(train_arrays, device, batch_size=cfg.batch_size, steps=batches.steps,
                                    tumour_share=cfg.tumour_sampling, seed=cfg.seed)
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        epochs: list[dict] = []
        mark = [time.perf_counter()]

        def on_epoch(epoch: int, metrics: dict) -> None:
            now = time.perf_counter()
            wall = now - mark[0]
            mark[0] = now
            row = {"epoch": epoch, "wall_s": wall, "train_s": metrics["epoch_seconds"],
                   "validate_and_save_s": wall - metrics["epoch_seconds"], "images_per_s": metrics["images_per_s"],
                   "tflops": metrics["images_per_s"] * gflop / 1e3, "loss": metrics["loss"],
                   "val_dsc": metrics["val_dsc"]}
            epochs.append(row)
            print(f"epoch {epoch}: {wall:6.2f} s ({row['train_s']:.2f} s training at {row['images_per_s']:,.0f} "
                  f"images/s, {row['tflops']:.2f} TFLOP/s; {row['validate_and_save_s']:.2f} s validation + "
                  f"checkpoints), loss {row['loss']:.4f}, val DSC {row['val_dsc']:.3f}", flush=True)

        net = torch.compile(model) if cfg.compile else model
        fit(net, batches, val_arrays, cfg, device, on_epoch=on_epoch, threshold=config.evaluate.threshold,
            metadata={"preprocess": preprocess_metadata(config.prepare), "threshold": config.evaluate.threshold})
        peak = (torch.cuda.max_memory_allocated(device) if cuda
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1e3) / 1e9
    steady = [e["wall_s"] for e in epochs[1:]] or [epochs[0]["wall_s"]]
    hundred = epochs[0]["wall_s"] + 99 * float(np.mean(steady))
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    full = args.patients == 110 and args.size == 256 and args.features == 32 and args.steps is None
    print(f"\n{name}; {len(train_arrays)} training slices, batch {cfg.batch_size}, {batches.steps} steps an epoch, "
          f"{gflop:.1f} GFLOP per image per step; batches: {type(batches).__name__}")
    print(f"peak memory {peak:.2f} GB ({'GPU allocated' if cuda else 'process RSS'}); 100 epochs at this pace: "
          f"{hundred:.0f} s" + (f" (goal < {GOAL_100_EPOCHS_S:.0f} s: {'met' if hundred < GOAL_100_EPOCHS_S else 'MISSED'})"
                                if full else " (not the full LGG set: no goal)"))
    if args.json is not None:
        args.json.write_text(json.dumps({
            "device": name, "patients": args.patients, "size": args.size, "features": args.features,
            "train_slices": len(train_arrays), "val_slices": len(val_arrays), "batch": cfg.batch_size,
            "steps_per_epoch": batches.steps, "batches": type(batches).__name__, "compile": cfg.compile,
            "data_s": data_s, "gflop_per_image": gflop,
            "nominal_gflop_per_image": NOMINAL_GFLOP_256 * (args.size / 256) ** 2 * (args.features / 32) ** 2,
            "epochs": epochs, "peak_memory_gb": peak,
            "peak_memory_kind": "torch.cuda.max_memory_allocated" if cuda else "process RSS",
            "images_per_s_best": max(e["images_per_s"] for e in epochs),
            "tflops_best": max(e["tflops"] for e in epochs),
            "hundred_epochs_s": hundred, "full_lgg_size": full, "goal_100_epochs_s": GOAL_100_EPOCHS_S,
        }, indent=2))


if __name__ == "__main__":
    main()
