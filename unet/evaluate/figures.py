"""The evaluate stage's per-patient picture as a PNG: readable offline, unlike ``dvc plots show``'s
HTML, which loads its chart library from the internet."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from unet.io.atomic import atomic_file  # noqa: E402

COLOURS = {"test": "tab:blue", "val": "tab:orange"}


def per_patient_bars(table: pd.DataFrame, path: Path, *, headline: str = "test") -> Path:
    """Bars of per-volume DSC, best first, coloured by split part; mean (red) and median (dashed) of
    the ``headline`` part's patients only."""
    table = table.sort_values("dsc", ascending=False).reset_index(drop=True)
    fig, axis = plt.subplots(figsize=(max(6.0, 0.35 * len(table) + 2), 3.6), layout="constrained")
    axis.bar(range(len(table)), table["dsc"].fillna(0), color=[COLOURS.get(s, "grey") for s in table["split"]])
    scores = table.loc[table["split"] == headline, "dsc"].dropna()
    if len(scores):
        axis.axhline(float(np.mean(scores)), color="firebrick", lw=2, label=f"{headline} mean {np.mean(scores):.3f}")
        axis.axhline(float(np.median(scores)), color="black", ls="--", lw=2,
                     label=f"{headline} median {np.median(scores):.3f}")
    axis.set_xticks(range(len(table)), [p[:12] for p in table["patient"]], rotation=90, fontsize=7)
    axis.set_ylim(0, 1)
    axis.set_ylabel("DSC per volume")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLOURS.values()]
    axis.legend(handles + axis.get_legend_handles_labels()[0], list(COLOURS) + axis.get_legend_handles_labels()[1],
                fontsize=7, loc="lower left")
    with atomic_file(path) as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)
    return Path(path)
