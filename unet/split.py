"""Patient-level train/val/test splits: a patient's slices never sit in two parts.

* ``random``: seeded fractions, stratified by tumour burden so each part gets tumour slices;
* ``reference``: the reference repo's 10 validation patients,
  ``random.seed(42); random.sample(sorted(folders), 10)``; the rest train, no test part
  (the published 91% mean DSC is on these 10, chosen on them, so biased);
* ``kfold``: patients dealt into ``folds`` stratified folds; fold ``fold`` is the test part, a
  seeded ``val_fraction`` of the rest validates.
"""

from __future__ import annotations

import random

import numpy as np

from unet.config import SplitConfig
from unet.errors import InputError

REFERENCE_VAL_PATIENTS = 10
PARTS = ("train", "val", "test")


class SplitError(InputError):
    """The patients cannot be split as configured; the message says what would work."""


def reference_validation(folders: list[str], k: int = REFERENCE_VAL_PATIENTS) -> list[str]:
    """The reference repo's validation patients, reproduced exactly."""
    if len(folders) <= k:
        raise SplitError(
            f"the reference split takes {k} validation patients but there are only {len(folders)}; "
            "use prepare.split.method: random"
        )
    random.seed(42)
    return random.sample(sorted(folders), k)


def _deal(names: list[str], parts: int, rng: np.random.Generator) -> list[list[str]]:
    """Deal patients sorted by burden round-robin into ``parts`` groups, shuffled within each round."""
    groups: list[list[str]] = [[] for _ in range(parts)]
    for start in range(0, len(names), parts):
        block = names[start : start + parts]
        for group, name in zip(rng.permutation(parts)[: len(block)], block):
            groups[group].append(name)
    return groups


def _spread(names: list[str], count: int, rng: np.random.Generator) -> list[str]:
    """``count`` of ``names`` (sorted by burden) at evenly spaced, jittered ranks: all burden levels."""
    stride = len(names) / count
    return [names[min(len(names) - 1, int(i * stride + rng.uniform(0, stride)))] for i in range(count)]


def _take(names: list[str], fraction: float, rng: np.random.Generator, burden: dict[str, float],
          key: str) -> tuple[list[str], list[str]]:
    """Take ``round(fraction * n)`` patients (at least one when fraction > 0), stratified; ``key`` names
    the fraction as the user wrote it.

    Patients with and without tumour are sampled separately in proportion, with at least one
    patient with tumour, so that every part has tumour slices to score.
    """
    if fraction <= 0 or not names:
        return [], names
    count = max(1, round(fraction * len(names)))
    if count >= len(names):
        raise SplitError(f"{key} takes all {len(names)} patients it draws from and leaves none to train on; "
                         f"lower {key}")
    sick = [n for n in names if burden[n] > 0]
    healthy = [n for n in names if burden[n] <= 0]
    n_sick = min(len(sick), max(1, round(count * len(sick) / len(names)))) if sick else 0
    n_healthy = min(len(healthy), count - n_sick)
    n_sick = count - n_healthy
    taken = set(_spread(sick, n_sick, rng) if n_sick else []) | set(_spread(healthy, n_healthy, rng) if n_healthy else [])
    while len(taken) < count:  # ranks that collided after rounding: fill from the rest at random
        taken.add(names[int(rng.integers(len(names)))])
    return [n for n in names if n in taken], [n for n in names if n not in taken]


def split_patients(burden: dict[str, float], config: SplitConfig, keys: str = "prepare.split") -> dict[str, str]:
    """Map each patient folder to ``train``, ``val`` or ``test``.

    ``burden`` is each patient's tumour size (slices or pixels with tumour) used for stratification;
    ``keys``: the params section the settings came from, which a message names (``cv`` for its folds).
    """
    rng = np.random.default_rng(config.seed)
    ordered = sorted(burden, key=lambda p: (burden[p], p))
    if config.method == "reference":
        val = set(reference_validation(list(burden)))
        assignment = {p: ("val" if p in val else "train") for p in burden}
    elif config.method == "kfold":
        if len(ordered) < config.folds:
            raise SplitError(
                f"{config.folds} folds need at least {config.folds} patients, there are {len(ordered)}; "
                f"lower {keys}.folds"
            )
        test = set(_deal(ordered, config.folds, rng)[config.fold])
        val, _ = _take([p for p in ordered if p not in test], config.val_fraction, rng, burden, f"{keys}.val_fraction")
        assignment = {p: "test" if p in test else "val" if p in val else "train" for p in burden}
    else:
        test, rest = _take(ordered, config.test_fraction, rng, burden, f"{keys}.test_fraction")
        val, _ = _take(rest, config.val_fraction / (1 - config.test_fraction), rng, burden, f"{keys}.val_fraction")
        assignment = {p: "test" if p in test else "val" if p in set(val) else "train" for p in burden}
    _check_parts(assignment, burden, keys)
    return assignment


def _check_parts(assignment: dict[str, str], burden: dict[str, float], keys: str) -> None:
    for part in PARTS:
        members = [p for p, a in assignment.items() if a == part]
        if part == "train" and not members:
            raise SplitError(f"no patient left for training; lower {keys}.val_fraction"
                             + ("" if keys == "cv" else f" or {keys}.test_fraction"))
        if members and not any(burden[p] > 0 for p in members):
            raise SplitError(
                f"the {part} part ({len(members)} patients) holds no tumour slice; "
                f"use more patients or another {keys}.seed"
            )
