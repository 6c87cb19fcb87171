"""The ``download`` stage's work: the raw set at ``data.raw_dir``/kaggle_3m, in the Kaggle layout.

``data.source`` picks where it comes from: Kaggle's API, a local copy of Kaggle's zip, an extracted
folder, or the synthetic generator (``unet.synthetic``). The stage's one item is that source.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from unet.config import DataConfig, PipelineConfig
from unet.download import sources
from unet.fanout import Each, serial
from unet.io.kaggle import parse_slice_name
from unet.synthetic.generate import write_synthetic_dataset


def fetch(source: str, config: DataConfig) -> Path:
    """The kaggle_3m folder, from ``source``; a network fault raises ``sources.DownloadError``."""
    if source == "kaggle":
        return sources.download_kaggle(config.kaggle_dataset, config.raw_dir)
    if source == "archive":
        return sources.extract_archive(config.path, config.raw_dir)
    if source == "local":
        return sources.use_local(config.path, config.raw_dir, copy=config.copy_local)
    s = config.synthetic
    return write_synthetic_dataset(config.raw_root, n_patients=s.n_patients, min_slices=s.min_slices,
                                   max_slices=s.max_slices, image_size=s.image_size, seed=s.seed, anatomy=s.anatomy,
                                   overwrite=True)


def summarise(source: str, root: Path) -> dict[str, Any]:
    """Where the set came from and what it holds: patient folders and masked slices."""
    patients = [folder for folder in sorted(Path(root).iterdir()) if folder.is_dir()]
    masks = [path for folder in patients for path in folder.iterdir()
             if (parsed := parse_slice_name(path.name)) is not None and parsed[2]]
    return {"source": source, "raw_root": str(root), "patients": len(patients), "slices": len(masks)}


def describe(summary: dict[str, Any]) -> str:
    """The stage's one line for the log."""
    return f"raw set from {summary['source']}: {summary['patients']} patients, {summary['slices']} slices in " \
           f"{summary['raw_root']}"


def run(config: PipelineConfig, *, each: Each = serial) -> dict[str, Any]:
    """The stage: the one source ``data.source`` names (one ``each`` item), then the summary."""
    [root] = each(functools.partial(fetch, config=config.data), [config.data.source])
    return summarise(config.data.source, root)
