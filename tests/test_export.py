"""ONNX and TorchScript export of a tiny random net: agreement with eager PyTorch, dynamic shapes, model card."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

from unet.cards.model import read_checkpoint_meta, read_metrics, write_model_card  # noqa: E402
from unet.errors import InputError  # noqa: E402
from unet.export.check import check_export  # noqa: E402
from unet.export.cli import main  # noqa: E402
from unet.export.graphs import METADATA_KEY, ProbabilityNet, export_onnx, export_torchscript  # noqa: E402
from unet.models.checkpoint import model_from_checkpoint, save_checkpoint  # noqa: E402
from unet.models.unet import build_model  # noqa: E402

SIZE = 32
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")


def save_model(path: Path, variant: str = "reference", size: int = SIZE, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = build_model(variant, features=4, depth=2)
    if variant == "reference":  # BatchNorm statistics that are not the identity, so they are exported too
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.uniform_(-0.2, 0.2)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
    meta = {"preprocess": {"image_size": size, "crop_threshold": 0.1, "clip_percentiles": [10, 99]}, "threshold": 0.5}
    return save_checkpoint(path, {"model": model.state_dict(), "model_config": model.config, "metadata": meta,
                                  "epoch": 3, "best_epoch": 2, "best_score": 0.81,
                                  "train_config": {"epochs": 3, "optimizer": "adam", "lr": 1e-3, "batch_size": 4}})


def phantom(slices: int = 6, height: int = 48, width: int = 40, seed: int = 0) -> np.ndarray:
    """(S, H, W, 3) uint8: a textured head with a bright FLAIR blob, like the Kaggle slices."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    head = ((yy - height / 2) / (0.42 * height)) ** 2 + ((xx - width / 2) / (0.42 * width)) ** 2 < 1
    images = np.zeros((slices, height, width, 3), np.uint8)
    for k in range(slices):
        images[k][head] = rng.integers(60, 140, (head.sum(), 3))
        images[k, 18:28, 14:24, 1] = rng.integers(180, 250, (10, 10))
    return images


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    checkpoint = save_model(root / "ref.pt")
    return {"checkpoint": checkpoint, "onnx": export_onnx(checkpoint, root / "ref.onnx"),
            "ts": export_torchscript(checkpoint, root / "ref.ts.pt")}


def eager(checkpoint: Path, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return ProbabilityNet(model_from_checkpoint(checkpoint))(torch.from_numpy(x)).numpy()


def test_onnx_and_torchscript_agree_with_eager_on_prepared_slices(reference):
    check = check_export(reference["checkpoint"], reference["onnx"], reference["ts"], phantom())
    assert check.slices == 6 and check.threshold == 0.5
    assert check.max_diff_onnx < 1e-4 and check.max_diff_torchscript < 1e-4
    assert check.mask_agreement_onnx > 0.999 and check.mask_agreement_torchscript > 0.999
    assert check.passed() and check.as_dict()["passed"] is True


@pytest.mark.parametrize("shape", [(1, 3, 32, 32), (3, 3, 32, 32), (1, 3, 64, 64), (3, 3, 64, 64), (2, 3, 32, 64)])
def test_dynamic_batch_and_size(reference, shape):
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    expected = eager(reference["checkpoint"], x)
    session = ort.InferenceSession(str(reference["onnx"]), providers=["CPUExecutionProvider"])
    got = session.run(["probabilities"], {"slices": x})[0]
    assert got.shape == (shape[0], 1, *shape[2:])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    traced = torch.jit.load(str(reference["ts"]))
    with torch.no_grad():
        np.testing.assert_allclose(traced(torch.from_numpy(x)).numpy(), expected, atol=1e-4)
    assert ((got > 0.5) == (expected > 0.5)).mean() > 0.999


def test_onnx_carries_its_contract(reference):
    model = onnx.load(str(reference["onnx"]))
    contract = json.loads({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    assert contract["shapes"] == "dynamic batch and size"
    assert contract["input"]["shape"] == ["batch", 3, "4*h", "4*w"] and contract["image_size"] == SIZE
    assert contract["input"]["channels"] == ["pre-contrast", "FLAIR", "post-contrast"]
    assert contract["model_config"]["features"] == 4 and "not a medical device" in contract["use"]
    session = ort.InferenceSession(str(reference["onnx"]), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["slices"]
    assert [o.name for o in session.get_outputs()] == ["probabilities"]
    files = {"lgg_unet.json": ""}
    torch.jit.load(str(reference["ts"]), _extra_files=files)
    assert json.loads(files["lgg_unet.json"])["checkpoint_sha256"] == contract["checkpoint_sha256"]


def test_static_export_pads_the_last_batch(reference, tmp_path):
    path = export_onnx(reference["checkpoint"], tmp_path / "static.onnx", dynamic=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [2, 3, SIZE, SIZE]
    check = check_export(reference["checkpoint"], path, None, phantom(slices=5))  # 5 slices: batches of 2 + pad
    assert check.max_diff_torchscript is None and check.max_diff_onnx < 1e-4 and check.passed()


def test_paper_variant_has_a_fixed_size_and_a_dynamic_batch(tmp_path):
    checkpoint = save_model(tmp_path / "paper.pt", variant="paper")
    path = export_onnx(checkpoint, tmp_path / "paper.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 3, SIZE, SIZE]
    assert session.get_outputs()[0].shape == ["batch", 2, SIZE, SIZE]  # two classes, at the input's size
    ts = export_torchscript(checkpoint, tmp_path / "paper.ts.pt")
    check = check_export(checkpoint, path, ts, phantom(slices=3))
    assert check.passed(), check
    with pytest.raises(InputError, match=r"exported for 32x32 slices"):
        check_export(save_model(tmp_path / "p64.pt", variant="paper", size=64), path, None, phantom(slices=2))


def test_size_not_a_multiple_of_the_depth_is_refused(tmp_path):
    checkpoint = save_model(tmp_path / "odd.pt", size=30)
    with pytest.raises(InputError, match=r"image size 30 is not a multiple of 2\*\*depth = 4; give --image-size 28"):
        export_onnx(checkpoint, tmp_path / "odd.onnx")


def test_model_card(reference, tmp_path):
    rows = [{"patient": f"P{k}", "split": "test", "dsc": str(v)} for k, v in enumerate((0.80, 0.90, 0.70, 0.85))]
    rows.append({"patient": "V", "split": "val", "dsc": "0.10"})  # not in the test spread
    metrics = {"split": "test", "n_volumes": 4, "dsc_mean": 0.8125, "dsc_median": 0.825, "iou_mean": 0.7,
               "iou_median": 0.71, "global_dice": 0.83, "tumour_slice_dice": 0.8, "per_volume": rows,
               "val": {"n_volumes": 1, "dsc_mean": 0.1, "dsc_median": 0.1}}
    cv = {"dsc": [0.81, 0.79, 0.84], "figure": "reports/cv_dsc.png"}
    path = write_model_card(tmp_path / "MODEL_CARD.md", checkpoint_meta=read_checkpoint_meta(reference["checkpoint"]),
                            metrics=metrics, cv=cv, data={"source": "kaggle"},
                            split={"method": "random", "val_fraction": 0.15, "test_fraction": 0.2, "seed": 42})
    text = path.read_text()
    spread = np.array([0.80, 0.90, 0.70, 0.85])
    assert f"**{spread.mean():.3f} ± {spread.std(ddof=1):.3f}** (mean ± SD, n = 4)" in text
    assert "range 0.700–0.900" in text and "| IoU | 0.700 | 0.710 |" in text
    assert "3-fold cross-validation" in text and "![per-fold DSC](reports/cv_dsc.png)" in text
    assert "0.813 ± 0.025" in text  # across folds
    for phrase in ("Research use only. Not a medical device", "lower-grade glioma", "skull-on",
                   "pre-contrast, FLAIR, post-contrast", "reference per-volume normalisation", "resize to 32 px",
                   "method random, val_fraction 0.15", "TCGA-LGG", "reference U-Net", "epoch 2 of 3 (train.select: best)",
                   "then the largest 3-D connected component"):
        assert phrase in text, phrase
    assert "Trained on synthetic data" not in text and "one public collection" in text
    synthetic = write_model_card(tmp_path / "synthetic.md", checkpoint_meta={"model_config": {"variant": "reference"}},
                                 metrics={"dsc_mean": 0.5}, data={"source": "synthetic"}).read_text()
    assert "Trained on synthetic data" in synthetic and "no per-volume scores given" in synthetic
    bare = write_model_card(tmp_path / "bare.md", checkpoint_meta={"epoch": 8}, metrics={}).read_text()
    assert "No evaluation metrics given" in bare and "saved at epoch 8" in bare and "not recorded" in bare


@pytest.mark.parametrize("data, says, never", [
    ({"source": "synthetic", "anatomy": "mni152"}, ["MNI152 2009a brain template", "Trained on synthetic images only"],
     ["phantom", "one public collection", "TCGA-LGG", ",:"]),
    ({"source": "synthetic", "synthetic": {"anatomy": "phantom"}}, ["synthetic ellipse phantoms", "synthetic images only"],
     ["MNI152", "one public collection", ",:"]),
    ({"source": "kaggle"}, ["Source: kaggle: the LGG segmentation dataset", "one public collection"],
     ["synthetic", ",:"]),
    ({}, ["Source: not recorded", "the recipe is for the LGG segmentation dataset"], ["synthetic", ",:"]),
])
def test_the_model_card_says_what_the_model_was_trained_on(tmp_path, data, says, never):
    text = write_model_card(tmp_path / "card.md", checkpoint_meta={"model_config": {"variant": "reference"}},
                            metrics={"dsc_mean": 0.5}, data=data).read_text()
    for phrase in says:
        assert phrase in text, phrase
    for phrase in never:
        assert phrase not in text, phrase


def test_read_metrics(tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps({"split": "test", "dsc_mean": 0.9}))
    (tmp_path / "pp.csv").write_text("patient,split,dsc\nA,test,0.9\nB,val,0.8\n")
    metrics = read_metrics(tmp_path / "eval.json", tmp_path / "pp.csv")
    assert metrics["per_volume"][1] == {"patient": "B", "split": "val", "dsc": "0.8"}
    with pytest.raises(InputError, match="dvc repro evaluate"):
        read_metrics(tmp_path / "missing.json")


def test_lgg_export_command(reference, tmp_path, capsys):
    volume = np.moveaxis(phantom(slices=4), 0, 2)  # (H, W, S, 3) uint8 NIfTI, as lgg-predict takes it
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(tmp_path / "scan.nii.gz"))
    out = tmp_path / "exports"
    assert main(["--model", str(reference["checkpoint"]), "--output", str(out),
                 "--check", str(tmp_path / "scan.nii.gz")]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["MODEL_CARD.md", "export_check.json", "model.onnx",
                                                     "model.torchscript.pt"]
    assert json.loads((out / "export_check.json").read_text())["passed"] is True
    assert "mask agreement" in capsys.readouterr().out
    assert main(["--model", str(tmp_path / "none.pt"), "--output", str(out)]) == 2


def test_check_on_preprocessed_slices_matches_the_check_on_raw_ones(reference):
    """The prepare stage's layout (S, H, W, 3) and the network's (S, 3, H, W) give the raw slices' figures."""
    from unet.export.check import check_prepared
    from unet.predict.segmenter import Segmenter

    raw = phantom()
    network, _ = Segmenter.from_checkpoint(reference["checkpoint"]).prepare(raw)
    on_raw = check_export(reference["checkpoint"], reference["onnx"], reference["ts"], raw)
    for slices in (network, network.transpose(0, 2, 3, 1)):
        check = check_prepared(reference["checkpoint"], reference["onnx"], reference["ts"], slices)
        assert check == on_raw
    with pytest.raises(InputError, match=r"expected preprocessed slices"):
        check_prepared(reference["checkpoint"], reference["onnx"], None, network[:, :2])
