"""Patient-level splits: disjoint parts, tumour in each, reproducible, the reference's 10 exactly."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from unet.config import SplitConfig
from unet.split import SplitError, reference_validation, split_patients

NAMES = (Path(__file__).resolve().parents[1] / "unet/resources/lgg_patients.txt").read_text().split()


def burden(n: int, empty_every: int = 0) -> dict[str, float]:
    return {name: 0.0 if empty_every and i % empty_every == 0 else float(i % 7 + 1)
            for i, name in enumerate(NAMES[:n])}


def parts(assignment: dict[str, str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {"train": set(), "val": set(), "test": set()}
    for patient, part in assignment.items():
        out[part].add(patient)
    return out


@pytest.mark.parametrize(
    ("n", "config", "sizes"),
    [
        (110, SplitConfig(val_fraction=0.1, test_fraction=0.2), (77, 11, 22)),
        (20, SplitConfig(val_fraction=0.15, test_fraction=0.15), (14, 3, 3)),
        (16, SplitConfig(val_fraction=0.15, test_fraction=0.2), (11, 2, 3)),
        (110, SplitConfig(method="reference"), (100, 10, 0)),
        (110, SplitConfig(method="kfold", folds=5, fold=2, val_fraction=0.1), (79, 9, 22)),
        (10, SplitConfig(method="kfold", folds=5, fold=4, val_fraction=0.0), (8, 0, 2)),
        (12, SplitConfig(val_fraction=0.0, test_fraction=0.0), (12, 0, 0)),
    ],
)
def test_split_sizes_and_disjoint(n, config, sizes):
    assignment = split_patients(burden(n), config)
    got = parts(assignment)
    assert (len(got["train"]), len(got["val"]), len(got["test"])) == sizes
    assert set(assignment) == set(NAMES[:n])  # every patient in exactly one part


def test_reference_split_matches_the_reference_code():
    random.seed(42)
    expected = set(random.sample(sorted(NAMES), 10))
    assert set(reference_validation(NAMES)) == expected
    assignment = split_patients(burden(110), SplitConfig(method="reference"))
    assert parts(assignment)["val"] == expected


def test_same_seed_same_split_other_seed_differs():
    a = split_patients(burden(40), SplitConfig(seed=1))
    assert a == split_patients(burden(40), SplitConfig(seed=1))
    assert a != split_patients(burden(40), SplitConfig(seed=2))


def test_kfold_test_parts_cover_every_patient_once():
    seen: list[str] = []
    for fold in range(5):
        assignment = split_patients(burden(23), SplitConfig(method="kfold", folds=5, fold=fold))
        seen += sorted(parts(assignment)["test"])
    assert sorted(seen) == sorted(NAMES[:23])


def test_stratified_parts_all_hold_tumour_when_most_patients_have_none():
    # 12 patients, only every third has tumour: a careless random split often leaves a part without
    load = {name: (5.0 if i % 3 == 0 else 0.0) for i, name in enumerate(NAMES[:12])}
    for seed in range(20):
        got = parts(split_patients(load, SplitConfig(val_fraction=0.2, test_fraction=0.2, seed=seed)))
        for part in got.values():
            assert any(load[p] > 0 for p in part)


@pytest.mark.parametrize(
    ("n", "config", "message"),
    [
        (8, SplitConfig(method="reference"), "only 8"),
        (3, SplitConfig(method="kfold", folds=5, fold=0), "at least 5 patients"),
        (2, SplitConfig(val_fraction=0.5, test_fraction=0.4), "none to train|no patient left"),
    ],
)
def test_impossible_splits_say_what_would_work(n, config, message):
    with pytest.raises(SplitError, match=message):
        split_patients(burden(n), config)


@pytest.mark.parametrize(("n", "cv", "message"), [
    (6, {"folds": 2, "val_fraction": 0.9}, r"cv\.val_fraction takes all 3 patients .* lower cv\.val_fraction"),
    (3, {"folds": 5}, r"5 folds need at least 5 patients, there are 3; lower cv\.folds"),
])
def test_the_cross_validation_s_splits_name_its_own_keys(n, cv, message):
    """cv's settings pass parsing (a fold's test part is its own: no test_fraction to add up with) and a
    split they cannot make names the cv key the user wrote, not prepare.split's."""
    import pandas as pd

    from unet.config import parse_config
    from unet.cv.folds import assignments

    config = parse_config({"cv": cv})
    manifest = pd.DataFrame({"patient": NAMES[:n], "has_tumour": [1] * n})
    with pytest.raises(SplitError, match=message) as error:
        assignments(manifest, config)
    assert "prepare.split" not in str(error.value)


def test_part_without_tumour_is_refused():
    load = {name: (1.0 if i == 0 else 0.0) for i, name in enumerate(NAMES[:10])}
    with pytest.raises(SplitError, match="holds no tumour slice"):
        split_patients(load, SplitConfig(val_fraction=0.2, test_fraction=0.2))
