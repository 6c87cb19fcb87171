"""The MNI152-anatomy patients: the phantom's contract, determinism, believable contrasts, a head
round the brain, LGG-like lesions in white matter, missing sequences, and the irregularity hook."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

pytest.importorskip("nilearn", reason="anatomy 'mni152' needs nilearn's bundled template")

from unet.errors import InputError  # noqa: E402
from unet.synthetic import anatomy  # noqa: E402
from unet.synthetic.anatomy import FLAIR, POST, PRE, TISSUE_LABELS, patient_spec, render_patient, render_volume  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BRAIN = [TISSUE_LABELS[name] for name in ("csf", "gm", "wm", "other")]


def few_slices(seed: int, index: int, n_slices: int = 8) -> anatomy.AnatomySpec:
    """Patient ``index`` of ``seed`` with fewer, thicker slices (the same brain extent)."""
    return dataclasses.replace(patient_spec(seed, index), n_slices=n_slices)


@pytest.fixture(scope="module")
def labelled():
    """Three patients at 96 px, 12 slices, with their tissue labels (one misses a sequence)."""
    specs = [few_slices(0, i, 12) for i in (0, 1, 2)]
    assert [s.missing_channel for s in specs] == [PRE, None, None]
    return [(spec, *render_patient(spec, 96, with_tissue=True)) for spec in specs]


def test_template_loads_offline_from_the_nilearn_wheel():
    files = anatomy.template_files()
    assert sorted(files) == ["gm", "t1", "wm"] and all(p.is_file() for p in files.values())
    tpl = anatomy.load_template()
    assert tpl.k_range == (0.0, 154.0) and len(tpl.seeds) > 1000  # MNI 2009a at 1 mm: brain k 0..154
    assert anatomy.load_template() is tpl  # once a process


def test_contract_is_the_phantoms():
    images, masks = render_patient((3, 1), 64, min_slices=6, max_slices=10)
    assert 6 <= len(images) <= 10
    assert images.shape == (len(images), 64, 64, 3) and images.dtype == np.uint8
    assert masks.shape == images.shape[:3] and masks.dtype == np.uint8
    assert set(np.unique(masks)) <= {0, 255}
    spec = patient_spec(3, 1, 6, 10)
    again = render_volume(spec, 64)
    assert spec.n_slices == len(images)
    assert all(np.array_equal(a, b) for a, b in zip(again, (images, masks)))
    assert images.max() > 150 and np.median(images[:, :4, :4]) < 15  # a bright head on a dark ground


def test_same_seed_same_bytes_and_seeds_differ():
    first = render_patient(few_slices(7, 2), 48)
    second = render_patient(few_slices(7, 2), 48)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(first, second))
    assert patient_spec(7, 2) == patient_spec(7, 2)
    assert patient_spec(7, 2) != patient_spec(7, 3) and patient_spec(7, 2) != patient_spec(8, 2)
    other = render_patient(few_slices(7, 3), 48)
    assert not np.array_equal(first[0], other[0])


def digest(seed: int, index: int) -> str:
    images, masks = render_patient(few_slices(seed, index, 4), 32)
    return hashlib.sha256(images.tobytes() + masks.tobytes()).hexdigest()


def test_bytes_are_the_same_in_a_fresh_process():
    """The template's derived maps (hulls, distances, fits) come out the same in every process."""
    code = ("import sys; sys.path.insert(0, 'tests'); import test_anatomy as t; print(t.digest(5, 4))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                         check=True)
    assert out.stdout.strip().splitlines()[-1] == digest(5, 4)


def channel_means(images, masks, tissue, channel) -> dict[str, float]:
    clean = masks == 0
    return {name: float(images[..., channel][(tissue == TISSUE_LABELS[name]) & clean].mean())
            for name in ("gm", "wm", "csf")}


def test_flair_and_t1_contrasts(labelled):
    for spec, images, masks, tissue in labelled:
        flair = channel_means(images, masks, tissue, FLAIR)
        assert flair["gm"] > 1.08 * flair["wm"] and flair["wm"] > 2.0 * flair["csf"], flair
        for channel in {PRE, POST} - {spec.missing_channel}:
            t1 = channel_means(images, masks, tissue, channel)
            assert t1["wm"] > 1.15 * t1["gm"] and t1["gm"] > 1.8 * t1["csf"], t1


def test_a_skull_and_scalp_surround_the_brain(labelled):
    for _, images, _masks, tissue in labelled:
        flair = images[..., FLAIR].astype(float)
        scalp, bone = tissue == TISSUE_LABELS["scalp"], tissue == TISSUE_LABELS["bone"]
        assert scalp.sum() > 0.1 * np.isin(tissue, BRAIN).sum() and bone.sum() > 0
        assert flair[scalp].mean() > 2.5 * flair[bone].mean()  # bright scalp, dark skull
        # the reference's crop (voxels over 10% of the max) keeps the scalp: it has work to do
        bright = flair > 0.1 * flair.max()
        assert (bright & ~np.isin(tissue, BRAIN)).sum() > 0.05 * bright.sum()
        assert not bright[:, :2].any() and not bright[:, :, :2].any()  # air at the edges


def test_lesion_lies_in_the_brain_mostly_in_white_matter(labelled):
    for _, images, masks, tissue in labelled:
        lesion = masks > 0
        assert lesion.any()
        labels = tissue[lesion]
        assert np.isin(labels, BRAIN).mean() > 0.97
        assert (labels == TISSUE_LABELS["wm"]).mean() > 0.5
        flair = images[..., FLAIR].astype(float)
        wm = (tissue == TISSUE_LABELS["wm"]) & ~ndi.binary_dilation(lesion, iterations=2)
        assert flair[lesion].mean() > 1.2 * flair[wm].mean()  # a hyperintensity, not a glare


def test_tumour_on_about_a_third_of_the_slices():
    shares = []
    for index in range(20):
        masks = render_patient((0, index), 48)[1]
        shares.append(masks.any(axis=(1, 2)).mean())
    assert 0.2 <= np.mean(shares) <= 0.5, shares
    assert min(shares) > 0  # every patient has a tumour


def test_missing_sequence_is_flair():
    specs = [patient_spec(1, i) for i in range(40)]
    missing = [s for s in specs if s.missing_channel is not None]
    assert 2 <= len(missing) <= 16  # about one in five
    spec = dataclasses.replace(missing[0], n_slices=4)
    images, _ = render_patient(spec, 32)
    assert np.array_equal(images[..., spec.missing_channel], images[..., FLAIR])
    full = dataclasses.replace(next(s for s in specs if s.missing_channel is None), n_slices=4)
    images, _ = render_patient(full, 32)
    assert not np.array_equal(images[..., PRE], images[..., FLAIR])
    assert not np.array_equal(images[..., POST], images[..., FLAIR])


def roughness(masks: np.ndarray) -> float:
    """Boundary pixels over sqrt(area) on the slice with the largest lesion (a disc: 2 sqrt(pi))."""
    k = int(np.argmax(masks.sum(axis=(1, 2))))
    lesion = masks[k] > 0
    edge = lesion & ~ndi.binary_erosion(lesion)
    return edge.sum() / np.sqrt(lesion.sum())


def test_margin_irregularity_roughens_the_margin_not_the_size():
    smooth, rough, ratio = [], [], []
    for index in range(5):
        spec = few_slices(2, index, 16)
        a = render_patient(spec, 128, margin_irregularity=0.0)[1]
        b = render_patient(spec, 128, margin_irregularity=1.0)[1]
        smooth.append(roughness(a))
        rough.append(roughness(b))
        ratio.append((b > 0).sum() / (a > 0).sum())
    assert np.mean(rough) > 1.2 * np.mean(smooth), (smooth, rough)
    assert 0.7 < np.median(ratio) < 1.4, ratio  # the volume is held
    spec = few_slices(2, 0, 16)
    (a, ma), (b, mb) = (render_patient(spec, 128, margin_irregularity=irr) for irr in (0.0, 1.0))
    away = ~ndi.binary_dilation((ma > 0) | (mb > 0), iterations=3)
    assert (a[away] != b[away]).any(axis=-1).mean() < 1e-3  # nothing but the lesion (and its faint
    # fringe: the sub-threshold ramp round dropped specks) moves


def test_bad_arguments_are_refused():
    spec = few_slices(0, 0, 2)
    with pytest.raises(InputError, match="size"):
        render_patient(spec, 8)
    with pytest.raises(InputError, match="margin_irregularity"):
        render_patient(spec, 32, margin_irregularity=1.5)


def test_the_synthetic_source_plants_margin_irregularity_by_rnaseq_cluster(tmp_path):
    """RNASeqCluster sets the lesion margin's irregularity on the anatomical set; nothing else does."""
    import csv

    from unet.synthetic.generate import (
        PLANTED,
        clinical_rows,
        lgg_patient_names,
        margin_irregularity,
        write_synthetic_dataset,
    )

    names = lgg_patient_names(40)
    rows = clinical_rows(names, seed=3)
    column, levels, jitter = PLANTED
    for index, row in enumerate(rows):
        value = margin_irregularity(row, 3, index)
        if row[column]:
            assert abs(value - levels[int(float(row[column]))]) <= jitter + 1e-9
        assert 0 <= value <= 1
    root = write_synthetic_dataset(tmp_path / "kaggle_3m", n_patients=2, min_slices=4, max_slices=5,
                                   image_size=32, seed=3, anatomy="mni152")
    with (root / "data.csv").open() as handle:
        assert [r["RNASeqCluster"] for r in csv.DictReader(handle)] == [r["RNASeqCluster"] for r in rows[:2]]
