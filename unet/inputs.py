"""What each stage needs before it starts, checked in a fraction of a second.

``check_inputs(stage, config)`` looks for the files the earlier stages write and the data the user
named, and raises the one ``MissingInputError`` that says which stage to run first. Every stage
calls it before it imports Prefect, torch or MLflow and before any server starts, so a mistake is
one ``error:`` line in well under a second, on a busy machine too. The stage itself still
validates what it reads (a truncated array, a foreign checkpoint): this is the cheap part.
Nothing here is heavier than ``pathlib``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from unet.config import PipelineConfig
from unet.download.credentials import check_kaggle_credentials
from unet.errors import missing_input

# (the file or folder, the stage that writes it), per stage
Needs = Callable[[PipelineConfig], list[tuple[Path, str]]]


def _prepared(c: PipelineConfig) -> list[tuple[Path, str]]:
    return [(c.prepare.manifest_path, "prepare")]


def _weightmaps(c: PipelineConfig) -> list[tuple[Path, str]]:
    return [*_prepared(c), (c.weightmaps.summary_path, "weightmaps")]


def _copies(c: PipelineConfig) -> list[tuple[Path, str]]:
    return [(c.augment.summary_path, "augment")] if c.train.elastic_copies and c.augment.copies else []


def _trained(c: PipelineConfig) -> list[tuple[Path, str]]:
    return [(c.train.best_path, "train")]


NEEDS: dict[str, Needs] = {
    "download": lambda c: [],
    "prepare": lambda c: [(c.data.raw_root, "download")],
    "weightmaps": _prepared,
    "augment": _weightmaps,
    "train": lambda c: [*_weightmaps(c), *_copies(c)],
    "evaluate": lambda c: [*_prepared(c), *_trained(c)],
    "register": lambda c: [*_prepared(c), *_trained(c), (c.evaluate.metrics_path, "evaluate")],
    "cv": lambda c: [*_weightmaps(c), *_copies(c)] if c.cv.folds else [],
    "radiogenomics": lambda c: [(c.data.raw_root, "download"), *_prepared(c),
                                *([(c.cv.predictions_dir, "cv")] if c.cv.folds else [])],
    # not a stage: what make demo prints at the end (flows/summary.py)
    "summary": lambda c: [(c.train.metrics_path, "train"), (c.evaluate.metrics_path, "evaluate"),
                          (c.registry.record_path, "register")],
}


def check_inputs(stage: str, config: PipelineConfig, environ: Mapping[str, str] | None = None) -> None:
    """Raise ``MissingInputError`` for the first input of ``stage`` that is not there (a command that
    is not one of the stages needs nothing)."""
    for path, maker in NEEDS.get(stage, lambda c: [])(config):
        if not path.exists():
            raise missing_input(path, maker)
    if stage == "download" and config.data.source == "kaggle" and environ is not None:
        check_kaggle_credentials(environ)
