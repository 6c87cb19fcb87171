"""Each fault of a raw tree is named with its file, all at once, before anything is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from unet.prepare.raw import RawDataError, patient_id, scan_raw

FIRST = "TCGA_CS_4941_19960909"


def _truncate(root: Path) -> str:
    path = root / FIRST / f"{FIRST}_2.tif"
    path.write_bytes(path.read_bytes()[:100])
    return f"{path}: unreadable or truncated TIFF"


def _drop_mask(root: Path) -> str:
    (root / FIRST / f"{FIRST}_3_mask.tif").unlink()
    return f"{root / FIRST / f'{FIRST}_3.tif'}: image without mask"


def _drop_image(root: Path) -> str:
    (root / FIRST / f"{FIRST}_3.tif").unlink()
    return f"{root / FIRST / f'{FIRST}_3_mask.tif'}: mask without image"


def _resize_mask(root: Path) -> str:
    path = root / FIRST / f"{FIRST}_1_mask.tif"
    tifffile.imwrite(path, np.zeros((16, 16), np.uint8))
    return f"{path}: mask is 16x16 but its image is 32x32"


def _grey_mask(root: Path) -> str:
    path = root / FIRST / f"{FIRST}_1_mask.tif"
    tifffile.imwrite(path, np.full((32, 32), 128, np.uint8))
    return f"{path}: mask is not binary (values 128)"


def _grey_image(root: Path) -> str:
    path = root / FIRST / f"{FIRST}_4.tif"
    tifffile.imwrite(path, np.zeros((32, 32), np.uint8))
    return f"{path}: expected an RGB uint8 image"


def _bad_csv(root: Path) -> str:
    (root / "data.csv").write_bytes(b"\xff\xfe\x00garbage\x00\n\"unclosed")
    return f"{root / 'data.csv'}: data.csv does not parse"


def _csv_without_patient(root: Path) -> str:
    (root / "data.csv").write_text("Subject,age\nA,3\n")
    return "data.csv has no 'Patient' column"


def _odd_name(root: Path) -> str:
    path = root / FIRST / f"{FIRST}_x.tif"
    path.write_bytes(b"")
    return f"{path}: name is not <patient>_<n>.tif"


@pytest.mark.parametrize(
    "damage",
    [_truncate, _drop_mask, _drop_image, _resize_mask, _grey_mask, _grey_image, _bad_csv,
     _csv_without_patient, _odd_name],
)
def test_each_fault_is_named_with_its_file(raw_tree, damage):
    expected = damage(raw_tree)
    with pytest.raises(RawDataError) as info:
        scan_raw(raw_tree)
    assert expected in str(info.value)


def test_all_faults_are_listed_together(raw_tree):
    expected = [_truncate(raw_tree), _drop_mask(raw_tree), _grey_mask(raw_tree)]
    with pytest.raises(RawDataError, match="3 fault") as info:
        scan_raw(raw_tree)
    for line in expected:
        assert line in str(info.value)


@pytest.mark.parametrize("layout", ["missing", "empty", "folders-without-slices"])
def test_empty_or_missing_sets_are_refused(tmp_path, layout):
    root = tmp_path / "kaggle_3m"
    if layout != "missing":
        root.mkdir()
    if layout == "folders-without-slices":
        (root / FIRST).mkdir()
    with pytest.raises(RawDataError, match="not found|empty set"):
        scan_raw(root)


def test_clean_tree_scans_in_integer_slice_order(raw_tree):
    for n in (10, 11):  # 10 sorts before 2 as text
        src = raw_tree / FIRST
        (src / f"{FIRST}_{n}.tif").write_bytes((src / f"{FIRST}_1.tif").read_bytes())
        (src / f"{FIRST}_{n}_mask.tif").write_bytes((src / f"{FIRST}_1_mask.tif").read_bytes())
    patients, clinical = scan_raw(raw_tree)
    assert [p.folder for p in patients] == sorted(p.name for p in raw_tree.iterdir() if p.is_dir())
    assert [s.number for s in patients[0].slices] == [1, 2, 3, 4, 5, 10, 11]
    assert list(clinical["Patient"])[:1] == ["TCGA_CS_4941"]


def test_missing_data_csv_is_allowed(raw_tree):
    (raw_tree / "data.csv").unlink()
    _, clinical = scan_raw(raw_tree)
    assert clinical is None


@pytest.mark.parametrize(
    ("folder", "expected"),
    [("TCGA_CS_4941_19960909", "TCGA_CS_4941"), ("TCGA_HT_A61A_20000127", "TCGA_HT_A61A"), ("odd", "odd")],
)
def test_patient_id(folder, expected):
    assert patient_id(folder) == expected
