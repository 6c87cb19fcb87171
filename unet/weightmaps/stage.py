"""The ``weightmaps`` stage's work: one U-Net weight map per prepared slice.

Output under ``weightmaps.out_dir``: each patient's maps at its ``array_dir`` (layout in
``unet.io.layout``) and ``weightmaps.json`` (class weights used, w0 and sigma in pixels,
statistics). ``weightmaps.sigma`` is given in pixels of a 256 px slice (``unet.units``).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from unet.config import PipelineConfig
from unet.fanout import Each, serial
from unet.io.atomic import atomic_dir
from unet.io.layout import load_patient_arrays, read_manifest, write_summary, write_weight_maps
from unet.units import scale_px
from unet.weightmaps.figures import weightmap_figure
from unet.weightmaps.weightmap import class_weights_from_counts, weight_maps


def training_pixel_counts(manifest: pd.DataFrame) -> tuple[int, int]:
    """(foreground, total) pixels of the prepared masks of the training split."""
    train = manifest[manifest["split"] == "train"]
    size = int(train["size"].iloc[0])
    foreground = int(train["tumour_area_prepared"].sum())
    return foreground, len(train) * size * size


def class_weights(manifest: pd.DataFrame, method: str) -> tuple[float, float]:
    """(background, foreground) weights from the training split's pixel frequencies."""
    foreground, total = training_pixel_counts(manifest)
    return class_weights_from_counts(foreground, total, method=method)


def border_threshold(class_weights: tuple[float, float] | list[float]) -> float:
    """A weight above every class weight: only the separation (border) term reaches past it."""
    return max(class_weights) + 1e-3


def patient_weight_maps(
    prepared_dir: Path,
    array_dir: str,
    out_dir: Path,
    *,
    w0: float,
    sigma: float,
    weights: tuple[float, float],
) -> dict[str, float]:
    """Compute and write one patient's maps; returns its statistics for the stage summary."""
    _, masks = load_patient_arrays(prepared_dir, array_dir)
    maps = weight_maps(np.asarray(masks), w0=w0, sigma=sigma, class_weights=weights, name=array_dir)
    write_weight_maps(out_dir, array_dir, maps)
    border = maps > border_threshold(weights)  # pixels where the separation term adds weight
    return {"slices": len(maps), "max": float(maps.max()), "mean": float(maps.mean()),
            "border_pixels": int(border.sum())}


def summarise(config: PipelineConfig, weights: tuple[float, float], stats: list[dict[str, float]]) -> dict[str, Any]:
    """``weightmaps.json``: the class weights used, w0, sigma in pixels and the maps' statistics."""
    params, slices = config.weightmaps, sum(s["slices"] for s in stats)
    return {
        "class_balance": params.class_balance,
        "class_weights": {"background": weights[0], "foreground": weights[1]},
        "w0": params.w0,
        "sigma_px": scale_px(params.sigma, config.prepare.image_size),
        "slices": slices,
        "max_weight": max(s["max"] for s in stats),
        "mean_weight": sum(s["mean"] * s["slices"] for s in stats) / slices,
        "border_pixels": sum(s["border_pixels"] for s in stats),
        "border_threshold": border_threshold(weights),  # weights above it come from the border term
    }


def describe(summary: dict[str, Any]) -> str:
    weights = summary["class_weights"]
    return (f"weight maps: {summary['slices']} slices, class weights ({weights['background']}, "
            f"{weights['foreground']}), sigma {summary['sigma_px']:.2f} px")


def run(config: PipelineConfig, *, each: Each = serial) -> dict[str, Any]:
    """The stage: every patient's maps (one ``each`` item a patient) into a staging folder renamed
    into place whole, ``weightmaps.json``, and the figure; returns the summary."""
    params = config.weightmaps
    manifest = read_manifest(config.prepare.manifest_path)
    weights = class_weights(manifest, params.class_balance)
    with atomic_dir(params.out_dir) as staging:
        work = functools.partial(patient_weight_maps, config.prepare.out_dir, out_dir=staging, w0=params.w0,
                                 sigma=scale_px(params.sigma, config.prepare.image_size), weights=weights)
        summary = summarise(config, weights, each(work, sorted(manifest["array_dir"].unique())))
        write_summary(staging / params.summary_path.name, summary)
    weightmap_figure(manifest, params.figure, w0=params.w0, sigma_256=params.sigma, weights=weights)
    return summary
