"""Pictures a person looks at to see that a stage did the right thing (PNG, no screen needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
import numpy as np  # noqa: E402

FLAIR = 1


def _show_flair(axis, image: np.ndarray, mask: np.ndarray, title: str) -> None:
    axis.imshow(image[..., FLAIR], cmap="gray")
    if mask.any():
        axis.contour(mask, levels=[0.5], colors="lime", linewidths=0.8)
    axis.set_title(title, fontsize=8)
    axis.axis("off")


def augmentation_grid(
    images: np.ndarray, masks: np.ndarray, weights: np.ndarray,
    deformed_images: np.ndarray, deformed_masks: np.ndarray, deformed_weights: np.ndarray,
    path: Path, *, labels: list[str] | None = None,
) -> Path:
    """One row a slice: FLAIR with the mask outlined, its weight map, a deformed copy and its map.

    Arrays are (N, H, W, 3) images, (N, H, W) masks and weight maps, for the originals and copies.
    """
    rows = len(images)
    fig, axes = plt.subplots(rows, 4, figsize=(9, 2.2 * rows), squeeze=False, layout="constrained")
    # log scale: background (~1), the border term (up to 1 + w0) and the foreground weight all show
    norm = LogNorm(vmin=float(max(min(weights.min(), deformed_weights.min()), 1e-3)),
                   vmax=float(max(weights.max(), deformed_weights.max())))
    for r in range(rows):
        name = labels[r] if labels else f"slice {r}"
        _show_flair(axes[r, 0], images[r], masks[r], f"{name}: FLAIR + mask")
        heat = axes[r, 1].imshow(weights[r], cmap="magma", norm=norm)
        axes[r, 1].set_title("weight map", fontsize=8)
        axes[r, 1].axis("off")
        _show_flair(axes[r, 2], deformed_images[r], deformed_masks[r], "elastic copy + mask")
        axes[r, 3].imshow(deformed_weights[r], cmap="magma", norm=norm)
        axes[r, 3].set_title("copy's weight map", fontsize=8)
        axes[r, 3].axis("off")
    fig.colorbar(heat, ax=axes[:, 3].tolist(), shrink=0.6, label="w(x), log scale")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
