"""The study's picture: -log10 p of every feature x cluster test, manual masks beside automatic."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from unet.io.atomic import atomic_file  # noqa: E402
from unet.radiogenomics.clinical import CLUSTER_COLUMNS  # noqa: E402
from unet.radiogenomics.stats import FEATURES  # noqa: E402


def heatmap(tests: Sequence[dict], path: Path) -> Path:
    """One panel per mask kind: cells -log10 p; 'P' marks a pre-registered pair, '*' Bonferroni-significant."""
    kinds = list(dict.fromkeys(t["masks"] for t in tests)) or ["manual"]
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.6 * len(kinds) + 1, 3.2), squeeze=False, layout="constrained")
    image = None
    for axis, kind in zip(axes[0], kinds):
        grid = np.full((len(FEATURES), len(CLUSTER_COLUMNS)), np.nan)
        for t in (t for t in tests if t["masks"] == kind and t["p"] == t["p"]):
            i, j = FEATURES.index(t["feature"]), CLUSTER_COLUMNS.index(t["variable"])
            grid[i, j] = -np.log10(max(t["p"], 1e-12))
            mark = ("P" if t["preregistered"] else "") + ("*" if t["significant"] else "")
            axis.text(j, i, f"{grid[i, j]:.1f}{mark}", ha="center", va="center", fontsize=7, color="white")
        image = axis.imshow(grid, cmap="viridis", vmin=0, vmax=6)
        axis.set_xticks(range(len(CLUSTER_COLUMNS)), [c.removesuffix("Cluster") for c in CLUSTER_COLUMNS],
                        rotation=45, ha="right", fontsize=7)
        axis.set_yticks(range(len(FEATURES)), [f.upper() for f in FEATURES], fontsize=8)
        axis.set_title(f"{kind} masks", fontsize=9)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="-log10 p (Fisher)")
    fig.suptitle("shape x genomic cluster; P: pre-registered (Buda 2019), *: Bonferroni-significant", fontsize=8)
    with atomic_file(path) as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)
    return Path(path)
