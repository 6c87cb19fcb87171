"""The synthetic source: Kaggle layout and formats, determinism, a learnable tumour, validation."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy.ndimage import binary_dilation

from unet.prepare.raw import scan_raw
from unet.synthetic import generate as synthetic
from unet.synthetic import phantom
from unet.synthetic.generate import (
    CLINICAL_COLUMNS,
    clinical_rows,
    lgg_patient_names,
    patient_key,
    patient_spec,
    write_synthetic_dataset,
)
from unet.synthetic.phantom import FLAIR, POST, PRE, render_volume

SMALL = dict(n_patients=3, min_slices=6, max_slices=10, image_size=32)
REAL_COLUMNS = [
    "Patient", "RNASeqCluster", "MethylationCluster", "miRNACluster", "CNCluster", "RPPACluster",
    "OncosignCluster", "COCCluster", "histological_type", "neoplasm_histologic_grade",
    "tumor_tissue_site", "laterality", "tumor_location", "gender", "age_at_initial_pathologic",
    "race", "ethnicity", "death01",
]


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("raw") / "kaggle_3m", **SMALL)


def file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def slice_numbers(folder: Path, suffix: str) -> list[int]:
    pattern = re.compile(rf"^{re.escape(folder.name)}_(\d+){suffix}\.tif$")
    return sorted(int(m[1]) for p in folder.iterdir() if (m := pattern.match(p.name)))


def volume(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    n = len(slice_numbers(folder, "_mask"))
    images = np.stack([tifffile.imread(folder / f"{folder.name}_{k}.tif") for k in range(1, n + 1)])
    masks = np.stack([tifffile.imread(folder / f"{folder.name}_{k}_mask.tif") for k in range(1, n + 1)])
    return images, masks


def test_patient_names_are_the_real_lgg_folders():
    names = lgg_patient_names()
    assert len(names) == len(set(names)) == 110
    assert names[0] == "TCGA_CS_4941_19960909"
    assert all(re.fullmatch(r"TCGA_[A-Z0-9]{2}_[A-Z0-9]{4}_\d{8}", n) for n in names)
    assert lgg_patient_names(3) == names[:3]
    assert patient_key(names[0]) == "TCGA_CS_4941"


def test_layout_is_kaggle_3m(small_set: Path):
    folders = sorted(p.name for p in small_set.iterdir() if p.is_dir())
    assert folders == lgg_patient_names(3)
    assert sorted(p.name for p in small_set.iterdir() if p.is_file()) == ["data.csv"]
    assert [p.name for p in small_set.parent.iterdir()] == ["kaggle_3m"]  # no staging left over
    for name in folders:
        folder = small_set / name
        numbers = slice_numbers(folder, "")
        assert numbers == slice_numbers(folder, "_mask") == list(range(1, len(numbers) + 1))
        assert 6 <= len(numbers) <= 10
        assert len(list(folder.iterdir())) == 2 * len(numbers)
        if len(numbers) == 10:  # numbered 1..n without zero padding, as Kaggle has them
            assert (folder / f"{name}_10.tif").exists() and not (folder / f"{name}_01.tif").exists()


def test_files_have_kaggle_dtypes_shapes_and_values(small_set: Path):
    for folder in (p for p in small_set.iterdir() if p.is_dir()):
        images, masks = volume(folder)
        assert images.dtype == masks.dtype == np.uint8
        assert images.shape[1:] == (32, 32, 3) and masks.shape[1:] == (32, 32)
        assert set(np.unique(masks).tolist()) == {0, 255}


def test_data_csv_has_the_real_columns_keyed_by_patient(small_set: Path):
    table = pd.read_csv(small_set / "data.csv")
    assert list(table.columns) == REAL_COLUMNS == list(CLINICAL_COLUMNS)
    assert table["Patient"].tolist() == [patient_key(n) for n in lgg_patient_names(3)]
    assert all(pd.api.types.is_numeric_dtype(table[c]) for c in REAL_COLUMNS[1:])


def test_clinical_values_are_coded_like_the_real_file_with_some_missing():
    table = pd.DataFrame(clinical_rows(lgg_patient_names(), seed=0)).replace("", np.nan)
    values = table.drop(columns="Patient").astype(float)
    assert values["RPPACluster"].isna().sum() > 10  # the real file misses many RPPA clusters
    assert values[["miRNACluster", "COCCluster"]].notna().all().all()
    for column, (lo, hi, _) in ((c, s) for c, s in CLINICAL_COLUMNS.items() if s is not None):
        present = values[column].dropna()
        assert present.between(lo, hi).all() and (present == present.round()).all(), column


def test_scan_raw_accepts_the_set(small_set: Path):
    patients, clinical = scan_raw(small_set)
    assert [p.folder for p in patients] == lgg_patient_names(3)
    assert clinical is not None and len(clinical) == 3


def test_same_seed_gives_the_same_bytes_and_another_seed_differs(small_set: Path, tmp_path: Path):
    again = write_synthetic_dataset(tmp_path / "again", **SMALL)
    other = write_synthetic_dataset(tmp_path / "other", **{**SMALL, "seed": 1})
    assert file_bytes(again) == file_bytes(small_set)
    assert file_bytes(other) != file_bytes(small_set)


def test_first_patients_do_not_depend_on_n_patients(small_set: Path, tmp_path: Path):
    fewer = write_synthetic_dataset(tmp_path / "k", **{**SMALL, "n_patients": 2})
    name = lgg_patient_names(1)[0]
    assert file_bytes(fewer / name) == file_bytes(small_set / name)


def test_tumour_spans_consecutive_slices_and_is_bright_in_flair(small_set: Path):
    for folder in (p for p in small_set.iterdir() if p.is_dir()):
        images, masks = volume(folder)
        with_tumour = np.flatnonzero(masks.any(axis=(1, 2)))
        assert with_tumour.size > 0, folder.name
        assert (np.diff(with_tumour) == 1).all(), f"{folder.name}: gaps in {with_tumour}"
        for k in with_tumour:
            inside = masks[k] > 0
            around = binary_dilation(inside, iterations=2) & ~inside
            flair = images[k, :, :, FLAIR].astype(float)
            assert flair[inside].mean() > flair[around].mean() + 20, f"{folder.name} slice {k + 1}"


@pytest.mark.parametrize("missing", [PRE, POST])
def test_missing_sequence_is_filled_with_flair(missing: int):
    spec = patient_spec(seed=0, index=0, min_slices=4, max_slices=4)
    images, _ = render_volume(dataclasses.replace(spec, missing_channel=missing), 32)
    complete, _ = render_volume(dataclasses.replace(spec, missing_channel=None), 32)
    assert np.array_equal(images[..., missing], images[..., FLAIR])
    assert not np.array_equal(complete[..., missing], complete[..., FLAIR])
    assert np.array_equal(np.delete(images, missing, -1), np.delete(complete, missing, -1))


def test_about_one_patient_in_five_misses_a_sequence_in_written_files(tmp_path: Path):
    specs = [patient_spec(0, i, 20, 88) for i in range(110)]
    assert 10 <= sum(s.missing_channel is not None for s in specs) <= 35
    index = next(i for i, s in enumerate(specs) if s.missing_channel is not None)
    root = write_synthetic_dataset(tmp_path / "k", **{**SMALL, "n_patients": index + 1})
    images, _ = volume(root / lgg_patient_names(index + 1)[index])
    assert np.array_equal(images[..., specs[index].missing_channel], images[..., FLAIR])


@pytest.mark.parametrize("lo, hi", [(1, 1), (6, 10), (20, 88)])
def test_slice_counts_stay_within_bounds(lo: int, hi: int):
    rng = np.random.default_rng(0)
    counts = [phantom.slice_count(rng, lo, hi) for _ in range(500)]
    assert min(counts) == lo and max(counts) <= hi


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_patients": 0}, "n_patients is 0: it must be 1..110"),
        ({"n_patients": 111}, "n_patients is 111: it must be 1..110"),
        ({"n_patients": 2.0}, "n_patients must be an integer"),
        ({"n_patients": True}, "n_patients must be an integer"),
        ({"min_slices": 0}, "min_slices is 0: it must be 1.."),
        ({"min_slices": 10, "max_slices": 5}, "max_slices is 5: it must be 10.."),
        ({"image_size": 15}, "image_size is 15: it must be 16.."),
        ({"image_size": "64"}, "image_size must be an integer"),
        ({"seed": -1}, "seed is -1: it must be >= 0"),
        ({"overwrite": "yes"}, "overwrite must be True or False"),
    ],
)
def test_bad_arguments_are_refused(tmp_path: Path, kwargs: dict, message: str):
    with pytest.raises(ValueError, match=re.escape(message)):
        write_synthetic_dataset(tmp_path / "kaggle_3m", **{**SMALL, **kwargs})
    assert not (tmp_path / "kaggle_3m").exists()


def test_patient_names_refuse_a_bad_count():
    with pytest.raises(ValueError, match=re.escape("n_patients is 200: it must be 1..110")):
        lgg_patient_names(200)


def test_non_empty_dest_is_kept_unless_overwrite(tmp_path: Path):
    dest = tmp_path / "kaggle_3m"
    dest.mkdir()
    (dest / "keep.txt").write_text("user data")
    with pytest.raises(ValueError, match="is not empty: remove it or pass overwrite=True"):
        write_synthetic_dataset(dest, **SMALL)
    assert (dest / "keep.txt").read_text() == "user data"
    write_synthetic_dataset(dest, **SMALL, overwrite=True)
    assert not (dest / "keep.txt").exists() and (dest / "data.csv").exists()


def test_failure_midway_leaves_dest_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    calls = []

    def failing_render(spec, size):
        calls.append(spec)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return render_volume(spec, size)

    monkeypatch.setattr(synthetic.phantom, "render_volume", failing_render)
    with pytest.raises(RuntimeError, match="disk full"):
        write_synthetic_dataset(tmp_path / "kaggle_3m", **SMALL)
    assert list(tmp_path.iterdir()) == []
