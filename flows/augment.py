"""The ``augment`` stage: elastic copies of every training slice, and a picture to check them."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from prefect import flow, unmapped

from flows.common import stage_main, task_runner
from tasks import precompute as precompute_tasks
from tasks.reports import augment_report, publish
from unet.io.atomic import atomic_dir
from unet.augment.stage import COPY_FILES, bytes_per_slice_copy, load_copies
from unet.config import PipelineConfig
from unet.augment.preview import augmentation_grid
from unet.weightmaps.stage import load_weight_maps, scale_px
from unet.prepare.stage import load_patient_arrays, read_manifest

LGG_SLICES = 3929
PREVIEW_SLICES = 4


def preview_slices(manifest: pd.DataFrame, config: PipelineConfig) -> pd.DataFrame:
    """Training slices worth a look: most border-term pixels (touching objects), then largest tumour."""
    train = manifest[manifest["split"] == "train"].copy()
    threshold = 1e-3 + max(json.loads((config.weightmap.out_dir / "weightmaps.json").read_text())
                           ["class_weights"].values())
    border = {}
    for array_dir in train["array_dir"].unique():
        counts = (load_weight_maps(config.weightmap.out_dir, array_dir) > threshold).sum(axis=(1, 2))
        border.update({(array_dir, k): int(c) for k, c in enumerate(counts)})
    train["border"] = [border[(d, int(k))] for d, k in zip(train["array_dir"], train["index"])]
    return train.sort_values(["border", "tumour_area_prepared"], ascending=False).head(PREVIEW_SLICES)


def preview(manifest: pd.DataFrame, config: PipelineConfig, augmented: Path) -> Path:
    """Grid of a few training slices: original vs their first elastic copy, with weight maps."""
    chosen = preview_slices(manifest, config)
    columns: dict[str, list[np.ndarray]] = {name: [] for name in ("image", "mask", "weight")}
    copies: dict[str, list[np.ndarray]] = {name: [] for name in ("image", "mask", "weight")}
    for array_dir, k in zip(chosen["array_dir"], chosen["index"].astype(int)):
        image, mask = load_patient_arrays(config.prepare.out_dir, array_dir)
        originals = {"image": image, "mask": mask, "weight": load_weight_maps(config.weightmap.out_dir, array_dir)}
        warped = dict(zip(COPY_FILES, load_copies(augmented, array_dir)))
        for name in columns:
            columns[name].append(originals[name][k])
            copies[name].append(warped[name][0, k])
    stack = {name: np.stack(v).astype(np.float32) for name, v in columns.items()}
    warped = {name: np.stack(v).astype(np.float32) for name, v in copies.items()}
    labels = [f"{p[:12]} #{s}" for p, s in zip(chosen["patient"], chosen["slice"])]
    return augmentation_grid(stack["image"], stack["mask"], stack["weight"], warped["image"], warped["mask"],
                             warped["weight"], config.augment.preview, labels=labels)


@flow(name="augment", log_prints=True)
def augment_flow(config: PipelineConfig) -> dict:
    params, size = config.augment, config.prepare.image_size
    manifest = read_manifest(config.prepare.manifest_path)
    array_dirs = sorted(manifest.loc[manifest["split"] == "train", "array_dir"].unique())
    sigma = scale_px(params.sigma, size)
    with atomic_dir(params.out_dir) as staging:
        futures = precompute_tasks.augment_patient.map(
            unmapped(config.prepare.out_dir), unmapped(config.weightmap.out_dir), array_dirs, unmapped(staging),
            copies=unmapped(params.copies), grid=unmapped(params.grid), sigma=unmapped(sigma),
            seed=unmapped(params.seed), image_mode=unmapped(params.image_mode),
        )
        stats = [future.result() for future in futures]
        per_copy = bytes_per_slice_copy(size)
        summary = {
            "copies": params.copies, "grid": params.grid, "sigma_px": sigma, "image_mode": params.image_mode,
            "train_patients": len(array_dirs),
            "train_slices": sum(s["slices"] for s in stats),
            "bytes": sum(s["bytes"] for s in stats),
            "bytes_per_slice_copy": per_copy,
            "lgg_bytes_per_copy": per_copy * LGG_SLICES,
            "lgg_bytes_per_copy_at_256px": bytes_per_slice_copy(256) * LGG_SLICES,
        }
        (staging / "augment.json").write_text(json.dumps(summary, indent=2) + "\n")
        if params.copies:
            preview(manifest, config, staging)
    print(f"elastic copies: {params.copies} of {summary['train_slices']} slices, "
          f"{summary['bytes'] / 1e6:.1f} MB; an LGG-size set takes "
          f"{summary['lgg_bytes_per_copy'] / 1e9:.2f} GB per copy at {size} px")
    publish("lgg-augment", augment_report(summary, size), description="elastic copies and the disk they take")
    return summary


def run(config: PipelineConfig) -> dict:
    workers = config.augment.workers
    # each worker thread warps one patient; torch's own threads would only fight over the cores
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    runner = task_runner(config.weightmap.task_runner, workers)
    return augment_flow.with_options(task_runner=runner)(config)


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
