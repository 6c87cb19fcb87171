"""BIDS derivative output: layout, JSON content, entity parsing, the affine round trip, xform codes."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from unet.errors import InputError
from unet.io.bids import (
    BIDS_VERSION,
    default_generated_by,
    derivative_name,
    kaggle_entities,
    parse_bids_name,
    source_entities_for,
    subject_label,
    write_derivative,
)

S, H, W = 4, 10, 12
AFFINE = np.array([[-0.9, 0.0, 0.1, 90.0], [0.0, 0.85, 0.2, -120.0], [0.0, -0.1, 3.0, -40.0], [0, 0, 0, 1]])
GENERATED = {"Name": "lgg-unet", "Version": "9.9.9", "CodeURL": "https://example.org/lgg-unet"}


def a_mask() -> np.ndarray:
    mask = np.zeros((S, H, W), np.uint8)
    mask[1:3, 2:6, 3:9] = 1
    mask[0, 0, 0] = 1  # a corner voxel, to catch axis swaps
    return mask


def test_layout_names_and_json(tmp_path):
    root = tmp_path / "derivatives" / "lgg-unet"
    files = write_derivative(root, "sub-01", a_mask(), AFFINE, source_entities="sub-01_ses-pre_FLAIR.nii.gz",
                             generated_by=GENERATED, model={"sha256": "abc", "variant": "reference"},
                             threshold=0.5)
    anat = root / "sub-01" / "ses-pre" / "anat"
    assert files.mask == anat / "sub-01_ses-pre_desc-tumor_mask.nii.gz" and files.mask.is_file()
    assert files.sidecar == anat / "sub-01_ses-pre_desc-tumor_mask.json"
    description = json.loads((root / "dataset_description.json").read_text())
    assert description == {"Name": "lgg-unet tumor masks", "BIDSVersion": BIDS_VERSION,
                           "DatasetType": "derivative", "GeneratedBy": [GENERATED]}
    sidecar = json.loads(files.sidecar.read_text())
    assert sidecar["Sources"] == ["sub-01_ses-pre_FLAIR.nii.gz"] and sidecar["Type"] == "Lesion"
    assert sidecar["Model"] == {"sha256": "abc", "variant": "reference"} and sidecar["Threshold"] == 0.5
    assert "not a medical device" in sidecar["Description"]
    assert sorted(p.name for p in root.rglob("*") if p.is_file()) == [
        "dataset_description.json", "sub-01_ses-pre_desc-tumor_mask.json", "sub-01_ses-pre_desc-tumor_mask.nii.gz"]


def test_affine_round_trip_and_codes(tmp_path):
    files = write_derivative(tmp_path, "01", a_mask(), AFFINE, source_entities={"sub": "01"}, generated_by=GENERATED)
    image = nib.load(str(files.mask))
    np.testing.assert_allclose(image.affine, AFFINE, atol=1e-5)  # the sform, shear included
    assert int(image.header["qform_code"]) == 1 and int(image.header["sform_code"]) == 1
    assert image.header.get_xyzt_units()[0] == "mm"
    data = np.asanyarray(image.dataobj)
    assert data.dtype == np.uint8 and data.shape == (H, W, S)
    np.testing.assert_array_equal(np.moveaxis(data, 2, 0), a_mask())
    assert files.mask.name == "sub-01_desc-tumor_mask.nii.gz" and files.mask.parent == tmp_path / "sub-01" / "anat"


def test_source_header_codes_are_kept(tmp_path):
    source = nib.Nifti1Image(np.zeros((H, W, S), np.int16), AFFINE)
    source.header.set_qform(AFFINE, code=1)
    source.header.set_sform(AFFINE, code=4)  # MNI
    files = write_derivative(tmp_path, "01", a_mask(), AFFINE, header=source.header, generated_by=GENERATED)
    header = nib.load(str(files.mask)).header
    assert int(header["qform_code"]) == 1 and int(header["sform_code"]) == 4


def test_entity_parsing():
    name = parse_bids_name("sub-01_ses-pre_acq-ax_run-2_FLAIR.nii.gz")
    assert name.entities == {"sub": "01", "ses": "pre", "acq": "ax", "run": "2"}
    assert name.suffix == "FLAIR" and name.extension == ".nii.gz"
    assert parse_bids_name("/data/raw/sub-A/anat/sub-A_T1w.nii").entities == {"sub": "A"}
    for bad in ("TCGA_CS_4941_flair.nii.gz", "flair.nii.gz", "ses-1_FLAIR.nii.gz", "sub-01_ses-pre.nii.gz"):
        with pytest.raises(InputError, match="not a BIDS file name"):
            parse_bids_name(bad)


def test_entities_are_kept_in_bids_order_and_desc_replaced(tmp_path):
    files = write_derivative(tmp_path, "01", a_mask(), AFFINE, generated_by=GENERATED,
                             source_entities="sub-01_run-1_ce-gd_acq-ax_ses-2_desc-preproc_T1w.nii.gz")
    assert files.mask.name == "sub-01_ses-2_acq-ax_ce-gd_run-1_desc-tumor_mask.nii.gz"
    assert derivative_name({"sub": "01", "echo": "1"}, extension=".json") == "sub-01_echo-1_desc-tumor_mask.json"
    with pytest.raises(InputError, match="not BIDS entities"):
        derivative_name({"sub": "01", "colour": "red"})


def test_subject_labels_are_sanitised():
    assert subject_label("TCGA_CS_4941") == "TCGACS4941"
    assert subject_label("sub-01") == "01" and subject_label("P 7/b") == "P7b"
    with pytest.raises(InputError, match="no letters or digits"):
        subject_label("__")
    assert kaggle_entities("TCGA_CS_4941_19960909") == {"sub": "TCGACS4941", "ses": "19960909"}
    assert source_entities_for("/raw/TCGA_HT_7602_19951103") == {"sub": "TCGAHT7602", "ses": "19951103"}
    assert source_entities_for("sub-03_FLAIR.nii.gz") == {"sub": "03"}
    with pytest.raises(InputError, match="--bids-subject"):
        source_entities_for("scan.nii.gz")


def test_kaggle_subject_is_written_with_its_label(tmp_path):
    entities = kaggle_entities("TCGA_CS_4941_19960909")
    files = write_derivative(tmp_path, "TCGA_CS_4941", a_mask(), np.eye(4), source_entities=entities,
                             generated_by=GENERATED, sources=["TCGA_CS_4941_19960909"])
    assert files.mask.relative_to(tmp_path).as_posix() == \
        "sub-TCGACS4941/ses-19960909/anat/sub-TCGACS4941_ses-19960909_desc-tumor_mask.nii.gz"
    assert json.loads(files.sidecar.read_text())["Sources"] == ["TCGA_CS_4941_19960909"]


def test_subject_must_agree_with_the_source(tmp_path):
    with pytest.raises(InputError, match="name subject '02' but the subject is '01'"):
        write_derivative(tmp_path, "01", a_mask(), AFFINE, source_entities="sub-02_FLAIR.nii.gz")


def test_existing_description_is_kept_and_gains_our_entry(tmp_path):
    other = {"Name": "fmriprep-like", "BIDSVersion": "1.8.0", "DatasetType": "derivative",
             "GeneratedBy": [{"Name": "other", "Version": "1"}]}
    (tmp_path / "dataset_description.json").write_text(json.dumps(other))
    for subject in ("01", "02"):  # the second write does not add the entry twice
        write_derivative(tmp_path, subject, a_mask(), AFFINE, generated_by=GENERATED)
    description = json.loads((tmp_path / "dataset_description.json").read_text())
    assert description["Name"] == "fmriprep-like" and description["GeneratedBy"] == [other["GeneratedBy"][0], GENERATED]
    (tmp_path / "dataset_description.json").write_text(json.dumps({**other, "DatasetType": "raw"}))
    with pytest.raises(InputError, match="not 'derivative'.*derivatives/lgg-unet"):
        write_derivative(tmp_path, "03", a_mask(), AFFINE, generated_by=GENERATED)


def test_bad_masks_and_affines(tmp_path):
    with pytest.raises(InputError, match="0/1 mask"):
        write_derivative(tmp_path, "01", np.full((S, H, W), 2), AFFINE)
    with pytest.raises(InputError, match="4x4"):
        write_derivative(tmp_path, "01", a_mask(), np.zeros((4, 4)))


def test_default_generated_by():
    entry = default_generated_by()
    assert entry["Name"] == "lgg-unet" and entry["Version"]


def _wired() -> bool:
    from unet.predict.cli import build_parser

    return "--bids" in build_parser().format_help()


@pytest.mark.skipif(not _wired(), reason="lgg-predict --bids not yet wired to unet.io.bids")
def test_lgg_predict_bids_from_a_bids_named_nifti(tmp_path):
    import torch

    from unet.models.checkpoint import save_checkpoint
    from unet.models.unet import build_model
    from unet.predict.cli import main

    torch.manual_seed(0)
    model = build_model("reference", features=4, depth=2)
    meta = {"preprocess": {"image_size": 32, "crop_threshold": 0.1, "clip_percentiles": [10, 99]}, "threshold": 0.5}
    checkpoint = save_checkpoint(tmp_path / "m.pt", {"model": model.state_dict(), "model_config": model.config,
                                                     "metadata": meta})
    affine = np.diag([0.9, 0.9, 3.0, 1.0])
    volume = np.random.default_rng(0).integers(0, 255, (32, 32, 4, 3)).astype(np.uint8)
    nib.save(nib.Nifti1Image(volume, affine), str(tmp_path / "sub-01_ses-pre_FLAIR.nii.gz"))
    assert main(["--model", str(checkpoint), "--input", str(tmp_path / "sub-01_ses-pre_FLAIR.nii.gz"),
                 "--output", str(tmp_path / "o"), "--bids", str(tmp_path / "d")]) == 0
    out = tmp_path / "d/sub-01/ses-pre/anat/sub-01_ses-pre_desc-tumor_mask.nii.gz"
    np.testing.assert_allclose(nib.load(str(out)).affine, affine)
    sidecar = json.loads(out.with_name("sub-01_ses-pre_desc-tumor_mask.json").read_text())
    assert sidecar["Threshold"] == 0.5 and sidecar["Model"]["sha256"] and sidecar["InputKind"] == "nifti"


def test_lgg_predict_bids_never_replaces_another_authors_mask(tmp_path, capsys):
    import torch

    from unet.models.checkpoint import save_checkpoint
    from unet.models.unet import build_model
    from unet.predict.cli import main

    torch.manual_seed(0)
    model = build_model("reference", features=4, depth=2)
    meta = {"preprocess": {"image_size": 32, "crop_threshold": 0.1, "clip_percentiles": [10, 99]}, "threshold": 0.5}
    checkpoint = save_checkpoint(tmp_path / "m.pt", {"model": model.state_dict(), "model_config": model.config,
                                                     "metadata": meta})
    volume = np.random.default_rng(0).integers(0, 255, (32, 32, 4, 3)).astype(np.uint8)
    source = tmp_path / "private-hospital" / "sub-01_FLAIR.nii.gz"
    source.parent.mkdir()
    nib.save(nib.Nifti1Image(volume, np.diag([0.9, 0.9, 3.0, 1.0])), str(source))
    anat = tmp_path / "d/sub-01/anat"

    def predict(out: str, *extra: str) -> int:
        return main(["--model", str(checkpoint), "--input", str(source), "--output", str(tmp_path / out),
                     "--bids", str(tmp_path / "d"), *extra])

    assert predict("o1") == 0
    sidecar = json.loads((anat / "sub-01_desc-tumor_mask.json").read_text())
    assert sidecar["Sources"] == ["sub-01_FLAIR.nii.gz"] and sidecar["Model"]["path"] == "m.pt"  # names, no folders
    assert predict("o2") == 2 and "--overwrite" in capsys.readouterr().err  # refused, as --output is
    assert predict("o3", "--overwrite") == 0  # our own earlier mask: replaced when asked
    (anat / "sub-01_desc-tumor_mask.json").write_text(json.dumps({"Description": "a radiologist's manual mask"}))
    nib.save(nib.Nifti1Image(np.ones((32, 32, 4), np.uint8), np.eye(4)), str(anat / "sub-01_desc-tumor_mask.nii.gz"))
    before = {p.name: p.read_bytes() for p in anat.iterdir()}
    assert predict("o4", "--overwrite") == 2 and "was not written by lgg-unet" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in anat.iterdir()} == before
