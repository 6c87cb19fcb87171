"""Overlays people look at: FLAIR with the ground truth in green and the prediction in red."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from unet.io.kaggle import FLAIR  # noqa: E402
from unet.metrics import most_tumour_slices  # noqa: E402


def overlay_figure(images: np.ndarray, prediction: np.ndarray, path: Path, *, truth: np.ndarray | None = None,
                   slices: list[int] | None = None, title: str = "", slice_numbers: list[int] | None = None) -> Path:
    """A row of FLAIR slices (S, H, W, 3 uint8) with outlines: truth green, prediction red."""
    slices = slices if slices is not None else most_tumour_slices(prediction, truth)
    fig, axes = plt.subplots(1, len(slices), figsize=(2.4 * len(slices), 2.8), squeeze=False, layout="constrained")
    for axis, k in zip(axes[0], slices):
        axis.imshow(images[k][..., FLAIR], cmap="gray")
        if truth is not None and truth[k].any():
            axis.contour(truth[k], levels=[0.5], colors="lime", linewidths=1.0)
        if prediction[k].any():
            axis.contour(prediction[k], levels=[0.5], colors="red", linewidths=1.0)
        number = slice_numbers[k] if slice_numbers else k + 1
        axis.set_title(f"slice {number}", fontsize=8)
        axis.axis("off")
    legend = "green: ground truth, red: prediction" if truth is not None else "red: prediction"
    fig.suptitle(f"{title}  ({legend})" if title else legend, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
