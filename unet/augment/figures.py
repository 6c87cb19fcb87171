"""The augment stage's picture: a few training slices beside their first elastic copy.

The slices shown are those with the most border-term pixels (touching tumour parts, where the
weight map's separation term shows), then the largest tumour; PNG, no screen needed.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from unet.config import PipelineConfig  # noqa: E402
from unet.io.kaggle import FLAIR  # noqa: E402
from unet.io.layout import load_copies, load_patient_arrays, load_weight_maps, read_summary  # noqa: E402

PREVIEW_SLICES = 4



def _show_flair(axis, image: np.ndarray, mask: np.ndarray, title: str) -> None:
    axis.imshow(image[..., FLAIR], cmap="gray")
    if mask.any():
        axis.contour(mask, levels=[0.5], colors="lime", linewidths=0.8)
    axis.set_title(title, fontsize=8)
    axis.axis("off")


def augmentation_grid(
    images: np.ndarray, masks: np.ndarray, weights: np.ndarray,
    deformed_images: np.ndarray | None, deformed_masks: np.ndarray | None, deformed_weights: np.ndarray | None,
    path: Path, *, labels: list[str] | None = None,
) -> Path:
    """One row a slice: FLAIR with the mask outlined, its weight map, a deformed copy and its map (the
    first two alone, said in the title, when there are no copies: ``augment.copies: 0``).

    Arrays are (N, H, W, 3) images, (N, H, W) masks and weight maps, for the originals and copies.
    """
    rows, copies = len(images), deformed_images is not None
    fig, axes = plt.subplots(rows, 4 if copies else 2, figsize=(9 if copies else 4.8, 2.2 * rows), squeeze=False,
                             layout="constrained")
    every = [weights, deformed_weights] if copies else [weights]
    # log scale: background (~1), the border term (up to 1 + w0) and the foreground weight all show
    norm = LogNorm(vmin=float(max(min(w.min() for w in every), 1e-3)), vmax=float(max(w.max() for w in every)))
    for r in range(rows):
        name = labels[r] if labels else f"slice {r}"
        _show_flair(axes[r, 0], images[r], masks[r], f"{name}: FLAIR + mask")
        heat = axes[r, 1].imshow(weights[r], cmap="magma", norm=norm)
        axes[r, 1].set_title("weight map", fontsize=8)
        axes[r, 1].axis("off")
        if copies:
            _show_flair(axes[r, 2], deformed_images[r], deformed_masks[r], "elastic copy + mask")
            axes[r, 3].imshow(deformed_weights[r], cmap="magma", norm=norm)
            axes[r, 3].set_title("copy's weight map", fontsize=8)
            axes[r, 3].axis("off")
    if not copies:
        fig.suptitle("augment.copies: 0, no elastic copies\n(training deforms on the fly)", fontsize=9)
    fig.colorbar(heat, ax=axes[:, -1].tolist(), shrink=0.6, label="w(x), log scale")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def preview_slices(manifest: pd.DataFrame, config: PipelineConfig, count: int = PREVIEW_SLICES) -> pd.DataFrame:
    """Training slices worth a look: most border-term pixels (touching objects), then largest tumour."""
    train = manifest[manifest["split"] == "train"].copy()
    threshold = read_summary(config.weightmaps.summary_path, "weightmaps")["border_threshold"]
    border = {}
    for array_dir in train["array_dir"].unique():
        counts = (load_weight_maps(config.weightmaps.out_dir, array_dir) > threshold).sum(axis=(1, 2))
        border.update({(array_dir, k): int(c) for k, c in enumerate(counts)})
    train["border"] = [border[(d, int(k))] for d, k in zip(train["array_dir"], train["index"])]
    return train.sort_values(["border", "tumour_area_prepared"], ascending=False).head(count)


def preview(manifest: pd.DataFrame, config: PipelineConfig, augmented: Path) -> Path:
    """``augment.preview``: the chosen slices and their first elastic copy (in ``augmented``), with weight
    maps; the slices alone when ``augment.copies`` is 0 (the picture is the stage's output either way)."""
    chosen = preview_slices(manifest, config)
    names = ("image", "mask", "weight")
    originals: dict[str, list[np.ndarray]] = {name: [] for name in names}
    copies: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for array_dir, k in zip(chosen["array_dir"], chosen["index"].astype(int)):
        image, mask = load_patient_arrays(config.prepare.out_dir, array_dir)
        weight = load_weight_maps(config.weightmaps.out_dir, array_dir)
        warped = load_copies(augmented, array_dir) if config.augment.copies else (None,) * 3
        for name, array, copy in zip(names, (image, mask, weight), warped):
            originals[name].append(array[k])
            if copy is not None:
                copies[name].append(copy[0, k])
    a = {name: np.stack(v).astype(np.float32) for name, v in originals.items()}
    b = {name: np.stack(v).astype(np.float32) if v else None for name, v in copies.items()}
    labels = [f"{p[:12]} #{s}" for p, s in zip(chosen["patient"], chosen["slice"])]
    return augmentation_grid(a["image"], a["mask"], a["weight"], b["image"], b["mask"], b["weight"],
                             config.augment.preview, labels=labels)

