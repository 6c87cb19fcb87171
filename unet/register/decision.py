"""The register stage's rule: ``challenger`` is the newest model, ``champion`` the best so far.

The score is ``val_dsc_mean`` that the evaluate stage logged into the run (per volume, at the
original geometry), else the train stage's ``epoch_val_dsc_shipped`` (``best_val_dsc`` in runs logged
before that name); the champion alias moves only to a
model that scores strictly better and at least ``registry.champion_floor``. Plain functions: the
MLflow calls are in ``tasks/register.py``.
"""

from __future__ import annotations

from collections.abc import Mapping

from unet.errors import MissingInputError

SCORE_METRICS = ("val_dsc_mean", "epoch_val_dsc_shipped", "best_val_dsc")  # evaluate's, else train's (old name)
CHAMPION, CHALLENGER = "champion", "challenger"


def run_score(metrics: Mapping[str, float]) -> tuple[str, float]:
    """(metric name, value) of the first of ``SCORE_METRICS`` that the run holds."""
    for name in SCORE_METRICS:
        if name in metrics:
            return name, float(metrics[name])
    raise MissingInputError(f"the MLflow run holds none of {', '.join(SCORE_METRICS)}: run the train and "
                            "evaluate stages first (dvc repro evaluate)")


def decide(version: str, score: float, champion: tuple[str, float] | None, floor: float = 0.0,
           held: str | None = None) -> str:
    """``first`` (no champion yet), ``unchanged`` (it is the champion), ``promoted`` (strictly better),
    ``kept`` (the champion stays), ``below-floor`` (under ``floor``: never champion, not even the
    first) or ``held`` (``held`` says why it may not be champion: a fold that did not learn)."""
    if champion is not None and champion[0] == version:
        return "unchanged"
    if score < floor:
        return "below-floor"
    if held:
        return "held"
    if champion is None:
        return "first"
    return "promoted" if score > champion[1] else "kept"
