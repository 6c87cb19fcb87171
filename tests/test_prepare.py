"""The prepare stage's work on a tiny hand-made tree: manifest, arrays, NIfTI, all-or-nothing."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from unet.config import PrepareConfig, SplitConfig
from unet.io import nifti
from unet.io.layout import load_patient_arrays
from unet.prepare.raw import RawDataError
from unet.prepare.stage import prepare_dataset

from conftest import make_raw_tree


@pytest.fixture
def config(tmp_path):
    split = SplitConfig(val_fraction=0.25, test_fraction=0.25, seed=0)
    return PrepareConfig(image_size=16, out_dir=tmp_path / "prepared", split=split)


def test_manifest_arrays_and_nifti(raw_tree, config):
    manifest = prepare_dataset(raw_tree, config)
    out = config.out_dir
    assert out.joinpath("manifest.parquet").exists() and not list(out.parent.glob(".prepared.tmp-*"))
    table = pd.read_parquet(out / "manifest.parquet")
    assert len(table) == 4 * 5 and list(table["slice"][:5]) == [1, 2, 3, 4, 5]
    for column in ("patient", "slice", "image_path", "mask_path", "has_tumour", "tumour_area",
                   "channels_present", "split", "RNASeqCluster", "gender", "crop_y0", "size"):
        assert column in table.columns
    # a patient lives in one part only, and the parts are all used
    assert (table.groupby("patient")["split"].nunique() == 1).all()
    assert set(table["split"]) == {"train", "val", "test"}
    assert table["has_tumour"].tolist()[:5] == [False, True, True, True, False]
    assert table["is_edge"].tolist()[:5] == [True, False, False, False, True]
    first = table.iloc[0]
    images, masks = load_patient_arrays(out, first["array_dir"])
    assert images.shape == (5, 16, 16, 3) and images.dtype == np.float16
    assert masks.shape == (5, 16, 16) and isinstance(images, np.memmap)
    volume, spacing = nifti.read_volume(out / "nifti" / f"{first['patient']}_image.nii.gz")
    assert volume.shape == (5, 32, 32, 3) and spacing == (1.0, 1.0, 1.0)
    mask_volume, _ = nifti.read_volume(out / "nifti" / f"{first['patient']}_mask.nii.gz")
    assert mask_volume[2].any() and not mask_volume[0].any()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["slices"] == 20 and sum(p["patients"] for p in summary["splits"].values()) == 4
    assert len(manifest) == 20


def test_a_fault_leaves_nothing_behind(raw_tree, config):
    first = sorted(p for p in raw_tree.iterdir() if p.is_dir())[0]
    next(first.glob("*_2_mask.tif")).unlink()
    with pytest.raises(RawDataError, match="image without mask"):
        prepare_dataset(raw_tree, config)
    assert not config.out_dir.exists()
    assert not list(config.out_dir.parent.glob(".prepared*"))


def test_a_failure_while_writing_keeps_the_previous_output(raw_tree, config, monkeypatch):
    prepare_dataset(raw_tree, config)
    before = (config.out_dir / "manifest.parquet").read_bytes()

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("unet.prepare.stage.summarise", explode)
    with pytest.raises(OSError, match="disk full"):
        prepare_dataset(raw_tree, config)
    assert (config.out_dir / "manifest.parquet").read_bytes() == before
    assert not list(config.out_dir.parent.glob(".prepared.tmp-*"))


def test_patients_without_a_data_csv_row_get_empty_clinical_columns(tmp_path, config):
    root = make_raw_tree(tmp_path / "kaggle_3m", patients=4)
    lines = (root / "data.csv").read_text().splitlines()
    (root / "data.csv").write_text("\n".join(lines[:-1]) + "\n")  # drop the last patient's row
    table = prepare_dataset(root, config)
    assert table.groupby("patient")["gender"].apply(lambda s: s.isna().all()).sum() == 1
