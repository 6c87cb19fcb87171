"""The weightmaps stage's picture: what the separation term does, at the Kaggle slices' own 256 px.

At the demo's 64 px network input the paper's sigma (5 px at 256) is 1.25 px and the border term
is a thin line; the picture computes the maps of a few slices with touching tumour parts on the
original masks instead, with the stage's w0, sigma and class weights, so the term shows.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from scipy import ndimage  # noqa: E402

from unet.io.atomic import atomic_file  # noqa: E402
from unet.io.kaggle import read_mask  # noqa: E402
from unet.weightmaps.weightmap import weight_map  # noqa: E402

SHOWN = 3
EIGHT = np.ones((3, 3), bool)


def pick_slices(manifest: pd.DataFrame, count: int = SHOWN) -> list[tuple[str, np.ndarray]]:
    """Slices with the most separate tumour parts (then the largest), as (label, original mask)."""
    candidates = manifest[manifest["has_tumour"]].sort_values("tumour_area", ascending=False).head(60)
    scored = []
    for row in candidates.itertuples():
        mask = read_mask(Path(row.mask_path))
        scored.append((ndimage.label(mask, EIGHT)[1], row.tumour_area, f"{row.patient[:12]} #{row.slice}", mask))
    scored.sort(key=lambda s: (s[0], s[1]), reverse=True)
    return [(label, mask) for _, _, label, mask in scored[:count]]


def weightmap_figure(manifest: pd.DataFrame, path: Path, *, w0: float, sigma_256: float,
                     weights: tuple[float, float]) -> Path:
    """One row a slice: the mask, and its weight map (log scale) with the border term between parts."""
    picked = pick_slices(manifest)
    fig, axes = plt.subplots(max(1, len(picked)), 2, figsize=(6, 3 * max(1, len(picked))), squeeze=False,
                             layout="constrained")
    for (label, mask), (left, right) in zip(picked, axes):
        left.imshow(mask, cmap="gray")
        left.set_title(f"{label}: mask ({ndimage.label(mask, EIGHT)[1]} parts)", fontsize=8)
        scale = mask.shape[0] / 256
        shown = right.imshow(weight_map(mask, w0=w0, sigma=sigma_256 * scale, class_weights=weights),
                             cmap="magma", norm=LogNorm(vmin=min(weights), vmax=max(weights) + w0))
        right.set_title(f"w(x), w0 {w0:g}, sigma {sigma_256 * scale:.1f} px", fontsize=8)
        fig.colorbar(shown, ax=right, shrink=0.8)
    for axis in axes.ravel():
        axis.axis("off")
    with atomic_file(path) as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)
    return Path(path)
