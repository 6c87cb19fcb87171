"""The train stage's curve as a PNG, readable offline (``dvc plots show`` needs the internet)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from unet.io.atomic import atomic_file  # noqa: E402


def training_curve(history: pd.DataFrame, path: Path, *, best_epoch: int | None = None) -> Path:
    """Loss (left) and validation DSC at the network's grid (right) per epoch; the best epoch marked."""
    fig, (loss, dsc) = plt.subplots(1, 2, figsize=(8, 3), layout="constrained")
    loss.plot(history["epoch"], history["loss"], marker="o", ms=3)
    loss.set(xlabel="epoch", ylabel="training loss")
    for column, style in (("val_dsc", "-o"), ("val_dsc_no_postprocess", "--")):
        if column in history:
            dsc.plot(history["epoch"], history[column], style, ms=3, label=column)
    if best_epoch:
        dsc.axvline(best_epoch, color="grey", ls=":", label=f"best epoch {best_epoch}")
    dsc.set(xlabel="epoch", ylabel="validation DSC per volume", ylim=(0, 1))
    dsc.legend(fontsize=7, loc="lower right")
    with atomic_file(path) as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)
    return Path(path)
