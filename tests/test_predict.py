"""lgg-predict on tiny inputs of every kind: known masks from a constant network, files, errors."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from unet.metrics import most_tumour_slices
from unet.models.checkpoint import save_checkpoint
from unet.models.unet import build_model
from unet.predict.cli import main
from unet.predict.scan import overlay_image, read_scan
from unet.predict.segmenter import Segmenter
from unet.predict.volume import scale_to_uint8
from unet.synthetic.generate import write_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
META = {"preprocess": {"image_size": 32, "crop_threshold": 0.1, "clip_percentiles": [10, 99]}, "threshold": 0.5}
S, H, W = 5, 40, 32
BOX = (slice(6, 30), slice(9, 21))  # the bright block every slice holds: 24 x 12 pixels
SPACING = (0.5, 0.8, 3.0)
AFFINE = np.array([[0.5, 0, 0, -12.0], [0, 0.8, 0, 7.5], [0, 0, 3.0, 40.0], [0, 0, 0, 1]])


def save_model(path: Path, bias: float | None = None, seed: int = 0) -> Path:
    """A tiny reference net: random (seeded), or all weights 0 and the output bias ``bias``.

    The constant net predicts sigmoid(bias) on every pixel of the preprocessed square, so the mask
    is exactly the volume's crop box (the bright block) for bias > 0, and empty for bias < 0.
    """
    torch.manual_seed(seed)
    model = build_model("reference", features=4, depth=2)
    if bias is not None:
        state = {k: torch.zeros_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}
        state = {**state, **{k: torch.ones_like(v) for k, v in state.items() if k.endswith("running_var")}}
        state["conv.bias"] = torch.full_like(state["conv.bias"], bias)
        model.load_state_dict(state)
    return save_checkpoint(path, {"model": model.state_dict(), "model_config": model.config, "metadata": META})


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"random": save_model(root / "random.pt"), "tumour": save_model(root / "tumour.pt", bias=6.0),
            "empty": save_model(root / "empty.pt", bias=-6.0)}


@pytest.fixture(scope="module")
def patient(tmp_path_factory) -> Path:
    root = write_synthetic_dataset(tmp_path_factory.mktemp("raw") / "kaggle_3m", n_patients=1, min_slices=10,
                                   max_slices=10, image_size=32)
    return next(p for p in root.iterdir() if p.is_dir())


def box_volume(dtype=np.uint8, gain: float = 1.0) -> np.ndarray:
    """(S, H, W, 3): black, with a textured bright block at BOX on every slice."""
    rng = np.random.default_rng(0)
    stack = np.zeros((S, H, W, 3), np.float64)
    stack[:, BOX[0], BOX[1]] = rng.uniform(100, 250, (S, 24, 12, 3))
    return (stack * gain).astype(dtype)


def write_folder(root: Path) -> list[Path]:
    folder = root / "TCGA_XX_0001_20000101"
    folder.mkdir()
    for n, image in enumerate(box_volume(), start=1):
        tifffile.imwrite(folder / f"{folder.name}_{n}.tif", image)
        tifffile.imwrite(folder / f"{folder.name}_{n}_mask.tif", np.full((H, W), 255, np.uint8))  # ignored
    return [folder]


def write_nifti4d(root: Path) -> list[Path]:
    volume = np.moveaxis(box_volume(np.float32, gain=3.7), 0, 2)  # (H, W, S, 3)
    nib.save(nib.Nifti1Image(volume, AFFINE), str(root / "scan.nii.gz"))
    return [root / "scan.nii.gz"]


def write_nifti_channels(root: Path) -> list[Path]:
    stack = box_volume(np.int16, gain=9.0)
    paths = [root / f"{name}.nii.gz" for name in ("pre", "flair", "post")]
    for c, path in enumerate(paths):
        nib.save(nib.Nifti1Image(np.moveaxis(stack[..., c], 0, 2), AFFINE), str(path))
    return paths


def write_png(root: Path) -> list[Path]:
    Image.fromarray(box_volume()[2]).save(root / "slice.png")
    return [root / "slice.png"]


def write_tiff(root: Path) -> list[Path]:
    tifffile.imwrite(root / "slice.tif", box_volume()[2])
    return [root / "slice.tif"]


BOX_VOXELS = 24 * 12
# case: writer, input_kind, slices, spacing kept from the file, intensities scaled
KINDS = {
    "kaggle folder": (write_folder, "kaggle-folder", S, None, False),
    "4-D float nifti": (write_nifti4d, "nifti", S, SPACING, True),
    "three int16 niftis": (write_nifti_channels, "nifti-channels", S, SPACING, True),
    "png slice": (write_png, "slice", 1, None, False),
    "tif slice": (write_tiff, "slice", 1, None, False),
}


def run(tmp_path: Path, model: Path, inputs: list[Path], *extra: str) -> int:
    return main(["--model", str(model), "--input", *map(str, inputs), "--output", str(tmp_path / "out"), *extra])


@pytest.mark.parametrize("case", list(KINDS))
def test_every_input_kind_gives_the_known_mask_on_its_own_grid(tmp_path, models, case, capsys, caplog):
    writer, kind, slices, spacing, scaled = KINDS[case]
    inputs = writer(tmp_path)
    with caplog.at_level(logging.WARNING, logger="unet.predict.cli"):
        assert run(tmp_path, models["tumour"], inputs) == 0
    out = tmp_path / "out"
    image = nib.load(str(out / "mask.nii.gz"))
    mask = np.asanyarray(image.dataobj)
    expected = np.zeros((H, W, slices), np.uint8)
    expected[BOX[0], BOX[1]] = 1
    assert mask.dtype == np.uint8 and mask.shape == (H, W, slices)
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_allclose(image.affine, AFFINE if spacing else np.eye(4))
    np.testing.assert_allclose(image.header.get_zooms(), spacing or (1, 1, 1))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["input_kind"] == kind
    assert summary["tumour_voxels"] == BOX_VOXELS * slices == int(mask.sum())
    assert summary["tumour_slices"] == slices and summary["slices"] == slices
    assert summary["shape"] == [H, W, slices] and summary["intensities_scaled"] is scaled
    if spacing:
        assert summary["tumour_volume_ml"] == pytest.approx(BOX_VOXELS * slices * np.prod(SPACING) / 1000)
    else:
        assert summary["tumour_volume_ml"] is None and summary["spacing_mm"] is None
    assert sorted(p.name for p in (out / "overlays").iterdir()) == [Path(p).name for p in summary["overlays"]]
    assert len(summary["overlays"]) == min(slices, 6)
    single = [r for r in caplog.records if "single slice" in r.getMessage()]
    assert bool(single) is (slices == 1) and bool(summary["warnings"]) is (slices == 1)
    assert capsys.readouterr().out.count("\n") == 1  # the one-line summary


def test_kaggle_folder_matches_the_segmenter_and_reads_slices_in_integer_order(tmp_path, models, patient):
    scan = read_scan([patient])
    assert scan.slice_numbers == list(range(1, 11))
    for k in (0, 1, 9):  # _1, _2, _10: not _1, _10, _2
        np.testing.assert_array_equal(scan.images[k], tifffile.imread(patient / f"{patient.name}_{k + 1}.tif"))
    assert run(tmp_path, models["random"], [patient], "--threshold", "0.45", "--all-overlays") == 0
    expected = Segmenter.from_checkpoint(models["random"], threshold=0.45).segment(scan.images)
    mask = np.asanyarray(nib.load(str(tmp_path / "out/mask.nii.gz")).dataobj)
    np.testing.assert_array_equal(mask, np.moveaxis(expected, 0, 2))
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    per_slice = mask.sum(axis=(0, 1))
    assert summary["tumour_voxels"] == int(mask.sum()) and summary["tumour_slices"] == int((per_slice > 0).sum())
    assert summary["tumour_slice_numbers"] == [k + 1 for k in np.flatnonzero(per_slice)]
    assert summary["threshold"] == 0.45 and summary["model"]["config"]["features"] == 4
    assert len(list((tmp_path / "out/overlays").iterdir())) == 10


def test_an_empty_prediction_still_shows_the_middle_slice(tmp_path, models):
    assert run(tmp_path, models["empty"], write_folder(tmp_path)) == 0
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["tumour_voxels"] == 0 and summary["overlays"] == ["overlays/slice_003.png"]


def test_a_non_empty_output_folder_is_refused_unless_told(tmp_path, models, capsys):
    out = tmp_path / "out"
    (out / "overlays").mkdir(parents=True)
    (out / "overlays/figure.png").write_bytes(b"a user's figure")
    (out / "notes.txt").write_text("mine")
    assert run(tmp_path, models["tumour"], write_tiff(tmp_path)) == 2
    assert f"{out}: --output is not empty" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "overlays"]
    assert (out / "overlays/figure.png").read_bytes() == b"a user's figure"


def test_overwrite_replaces_only_what_an_earlier_run_wrote(tmp_path, models):
    out = tmp_path / "out"
    assert run(tmp_path, models["tumour"], write_folder(tmp_path)) == 0
    earlier = json.loads((out / "summary.json").read_text())["overlays"]
    (out / "overlays/figure.png").write_bytes(b"a user's figure")
    (out / "notes.txt").write_text("mine")
    assert run(tmp_path, models["tumour"], write_tiff(tmp_path), "--overwrite") == 0
    assert sorted(p.name for p in out.iterdir()) == ["mask.nii.gz", "notes.txt", "overlays", "summary.json"]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["figure.png", "slice_001.png"]
    assert earlier and all(not (out / name).exists() for name in earlier if name != "overlays/slice_001.png")
    assert (out / "notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]


def test_overwrite_deletes_nothing_a_forged_summary_names_outside_its_own_files(tmp_path, models):
    out = tmp_path / "out"
    assert run(tmp_path, models["tumour"], write_folder(tmp_path)) == 0
    victims = [tmp_path / "victim.txt", out / "notes.txt", out / "overlays/figure.png"]
    for victim in victims:
        victim.write_text("someone's")
    summary = json.loads((out / "summary.json").read_text())
    summary.update(mask=str(victims[0]), overlays=["../victim.txt", str(victims[1]), "overlays/figure.png",
                                                   "overlays/../notes.txt", *summary["overlays"]])
    (out / "summary.json").write_text(json.dumps(summary))
    assert run(tmp_path, models["tumour"], write_tiff(tmp_path), "--overwrite") == 0
    assert all(victim.read_text() == "someone's" for victim in victims)


def _grey_png(root: Path) -> tuple[list[Path], str]:
    Image.fromarray(np.zeros((H, W), np.uint8)).save(root / "grey.png")
    return [root / "grey.png"], "grey.png: expected an RGB slice"


def _two_channel_nifti(root: Path) -> tuple[list[Path], str]:
    nib.save(nib.Nifti1Image(np.zeros((H, W, S, 2), np.float32), np.eye(4)), str(root / "two.nii.gz"))
    return [root / "two.nii.gz"], "two.nii.gz: expected a 4-D (height, width, slices, 3)"


def _one_sequence_nifti(root: Path) -> tuple[list[Path], str]:
    nib.save(nib.Nifti1Image(np.zeros((H, W, S), np.float32), np.eye(4)), str(root / "flair.nii.gz"))
    return [root / "flair.nii.gz"], "give three files"


def _mismatched_channels(root: Path) -> tuple[list[Path], str]:
    paths = write_nifti_channels(root)
    nib.save(nib.Nifti1Image(np.zeros((H, W, S + 1), np.int16), AFFINE), str(paths[2]))
    return paths, "post.nii.gz: shape (40, 32, 6) differs"


def _garbage(name: str, fragment: str):
    def make(root: Path) -> tuple[list[Path], str]:
        (root / name).write_bytes(b"\x00not an image at all" * 10)
        return [root / name], f"{name}: {fragment}"
    return make


def _empty_folder(root: Path) -> tuple[list[Path], str]:
    (root / "patient").mkdir()
    (root / "patient" / "patient_1_mask.tif").write_bytes(b"")  # a mask alone is no slice
    return [root / "patient"], "patient: no <patient>_<n>.tif slices found"


def _set_of_patients(root: Path) -> tuple[list[Path], str]:
    write_folder(root)
    return [root], "point --input at one of them"


def _nan_voxels(root: Path) -> tuple[list[Path], str]:
    volume = np.zeros((H, W, S, 3), np.float32)
    volume[0, 0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(root / "nan.nii.gz"))
    return [root / "nan.nii.gz"], "nan.nii.gz: 1 voxels are NaN"


def _zero_voxel_size(root: Path) -> tuple[list[Path], str]:
    """An anonymiser that zeroed pixdim and the sform: nibabel sets pixdim 1, the affine stays singular."""
    import struct

    nib.save(nib.Nifti1Image(np.moveaxis(box_volume(), 0, 2).astype(np.float32), np.eye(4)), str(root / "flat.nii"))
    with open(root / "flat.nii", "r+b") as handle:
        handle.seek(80)  # pixdim[1..3]
        handle.write(struct.pack("<3f", 0.0, 0.0, 0.0))
        handle.seek(280)  # srow_x, srow_y, srow_z
        handle.write(struct.pack("<12f", *[0.0] * 12))
    return [root / "flat.nii"], "flat.nii: the header gives voxel sizes [1.0, 1.0, 1.0] mm and an affine that maps"


BAD_INPUTS = {
    "grey png": _grey_png,
    "two-channel nifti": _two_channel_nifti,
    "one 3-D nifti": _one_sequence_nifti,
    "three files, two shapes": _mismatched_channels,
    "unreadable tif": _garbage("broken.tif", "unreadable or truncated TIFF"),
    "unreadable nifti": _garbage("broken.nii.gz", "unreadable NIfTI"),
    "unreadable png": _garbage("broken.png", "unreadable image"),
    "unknown suffix": _garbage("scan.jpg", "unknown input type"),
    "missing": lambda root: ([root / "nowhere"], "nowhere: input not found"),
    "two inputs": lambda root: (write_png(root) * 2, "not 2"),
    "empty folder": _empty_folder,
    "folder of patients": _set_of_patients,
    "nan voxels": _nan_voxels,
    "zero voxel size": _zero_voxel_size,
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_naming_it_and_writes_nothing(tmp_path, models, case, capsys):
    source = tmp_path / "in"
    source.mkdir()
    inputs, fragment = BAD_INPUTS[case](source)
    assert run(tmp_path, models["tumour"], inputs) == 2
    err = capsys.readouterr().err
    assert err.startswith("lgg-predict: error: ") and fragment in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no output, no staging folder


def _not_a_checkpoint(root: Path) -> Path:
    (root / "model.pt").write_text("weights, honest")
    return root / "model.pt"


def _no_preprocess_metadata(root: Path) -> Path:
    model = build_model("reference", features=4, depth=2)
    return save_checkpoint(root / "old.pt", {"model": model.state_dict(), "model_config": model.config})


def _wrong_weights(root: Path) -> Path:
    model = build_model("reference", features=4, depth=2)
    config = {**model.config, "features": 8}
    return save_checkpoint(root / "mixed.pt", {"model": model.state_dict(), "model_config": config, "metadata": META})


@pytest.mark.parametrize(("make", "fragment"), [
    (_not_a_checkpoint, "model.pt: not a readable lgg-unet checkpoint"),
    (_no_preprocess_metadata, "old.pt: the checkpoint does not say how its inputs were preprocessed"),
    (_wrong_weights, "mixed.pt: the checkpoint does not rebuild an lgg-unet model"),
    (lambda root: root / "absent.pt", "absent.pt: no checkpoint here"),
])
def test_bad_model_exits_2_naming_it(tmp_path, make, fragment, capsys):
    source = tmp_path / "in"
    source.mkdir()
    assert run(tmp_path, make(source), write_png(source)) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize(("extra", "fragment"), [
    (["--threshold", "1.5"], "strictly between 0 and 1"),
    (["--device", "tpu"], "invalid choice"),
])
def test_bad_options_exit_2(tmp_path, models, extra, fragment, capsys):
    assert run(tmp_path, models["tumour"], write_png(tmp_path), *extra) == 2
    assert fragment in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path, models, capsys):
    assert run(tmp_path, models["tumour"], write_png(tmp_path), "--device", "cuda") == 2
    assert "--device cuda: torch sees no CUDA device" in capsys.readouterr().err


def test_an_output_that_is_a_file_is_refused(tmp_path, models, capsys):
    (tmp_path / "out").write_text("keep me")
    assert run(tmp_path, models["tumour"], write_png(tmp_path)) == 2
    assert "--output exists and is not a folder" in capsys.readouterr().err
    assert (tmp_path / "out").read_text() == "keep me"


def test_help_explains_every_option(capsys):
    assert main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for option in ("--model", "--input", "--output", "--device", "--tta", "--threshold", "--no-largest-component",
                   "--all-overlays", "scaled to 0..255", "three 3-D NIfTI"):
        assert option in text


@pytest.mark.parametrize(("stack", "expected"), [
    (np.array([0, 50, 100], np.int16).reshape(1, 1, 3, 1), [0, 128, 255]),  # 127.5 rounds to even 128
    (np.array([-1.0, 1.0]).reshape(1, 2, 1, 1), [0, 255]),
    (np.full((1, 1, 2, 1), 7.0), [0, 0]),  # constant: no contrast to stretch
    (np.array([[0, 10], [4, 40]], np.uint16).reshape(1, 1, 2, 2), [[0, 0], [255, 255]]),  # per channel
])
def test_scale_to_uint8_stretches_each_channel_over_the_volume(stack, expected):
    out = scale_to_uint8(stack)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out.reshape(np.shape(expected)), expected)


@pytest.mark.parametrize(("areas", "count", "expected"), [
    ([0, 5, 1, 9, 0], 2, [1, 3]),
    ([0, 5, 1, 9, 0], 6, [1, 2, 3]),
    ([0, 0, 0, 0], 3, [2]),  # nothing predicted: the middle slice
])
def test_overlay_slices_pick_the_most_tumour_in_slice_order(areas, count, expected):
    mask = np.zeros((len(areas), 4, 4), np.uint8)
    for k, area in enumerate(areas):
        mask[k].flat[:area] = 1
    assert most_tumour_slices(mask, count=count) == expected


def test_overlay_outlines_the_mask_in_red_on_flair():
    image = np.zeros((256, 256, 3), np.uint8)
    image[..., 1] = 90  # FLAIR
    mask = np.zeros((256, 256), np.uint8)
    mask[10:20, 30:40] = 1
    rgb = overlay_image(image, mask)
    red = (rgb == (255, 0, 0)).all(axis=-1)
    assert red.sum() == 4 * 10 - 4 and red[10, 30:40].all() and not red[11:19, 31:39].any()
    assert (rgb[~red] == 90).all()
    assert overlay_image(image[:32, :32], mask[:32, :32]).shape == (256, 256, 3)  # small slices enlarged


@pytest.mark.integration
def test_the_module_runs_as_a_command(tmp_path, models):
    inputs = write_tiff(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "unet.predict.cli", "--model", str(models["tumour"]), "--input", str(inputs[0]),
         "--output", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "slice.tif: tumour in 1 of 1 slices, 288 voxels" in result.stdout
    assert "single slice" in result.stderr


def test_overlays_carry_patient_slice_and_tumour_captions(tmp_path, models):
    (folder,) = write_folder(tmp_path)
    assert run(tmp_path, models["tumour"], [folder]) == 0
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    picture = np.asarray(Image.open(tmp_path / "out" / summary["overlays"][0]))
    band = picture[:14]
    from unet.predict.scan import caption, read_scan

    scan = read_scan([folder])
    plain = overlay_image(scan.images[0], np.zeros(scan.images.shape[1:3], np.uint8))
    text = caption(scan, 0, np.zeros((len(scan.slice_numbers), 2, 2), np.uint8))
    from PIL import ImageDraw

    from unet.predict.scan import caption_lines

    lines = caption_lines(text, plain.shape[1] - 4, ImageDraw.Draw(Image.fromarray(plain)).textlength)
    assert len(lines) >= 2  # the caption is wider than the slice: wrapped, not cut
    assert picture.shape == (plain.shape[0] + 14 * len(lines), *plain.shape[1:]) and band.max() > 200 \
        and (band == 0).mean() > 0.5  # white text on black
    assert folder.name in text and f"slice {scan.slice_numbers[0]} (file; 1 of" in text


@pytest.mark.parametrize(("text", "width", "expected"), [
    ("short  text", 100, ["short  text"]),
    ("TCGA_CS_6188_20010812  slice 8 (file; 8 of 17)  tumour 512 px", 30,
     ["TCGA_CS_6188_20010812", "slice 8 (file; 8 of 17)", "tumour 512 px"]),
    ("TCGA_CS_6188_20010812  slice 8 (file; 8 of 17)  tumour 512 px", 20,
     ["TCGA_CS_6188_20010812", "slice 8 (file; 8 of", "17)  tumour 512 px"]),  # a word wider stays whole
    ("a  b  c", 4, ["a  b", "c"]),
    ("", 10, []),
])
def test_a_caption_wraps_to_the_overlay_s_width(text, width, expected):
    from unet.predict.scan import caption_lines

    assert caption_lines(text, width, len) == expected  # one pixel a character, for the table


def test_an_overlay_shows_its_whole_caption(tmp_path):
    """A 256 px slice's caption (patient, slice, tumour) is wider than the slice: it wraps, nothing is cut."""
    from PIL import ImageDraw

    from unet.predict.scan import CAPTION_HEIGHT, write_overlay

    text = "TCGA_CS_6188_20010812  slice 8 (file; 8 of 17)  tumour 4832 px"
    path = write_overlay(tmp_path / "o.png", np.zeros((256, 256, 3), np.uint8), np.zeros((256, 256), bool), text)
    picture = Image.open(path)
    measure = ImageDraw.Draw(picture).textlength
    assert measure(text) > 256 and picture.size == (256, 256 + 2 * CAPTION_HEIGHT)  # two lines of caption
    band = np.asarray(picture)[: 2 * CAPTION_HEIGHT]
    assert band[:, -2:].max() == 0  # no text runs into the right edge
