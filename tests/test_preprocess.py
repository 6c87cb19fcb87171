"""The reference per-volume preprocessing and its inverse, on hand-built volumes."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.exposure import rescale_intensity
from skimage.transform import resize

from unet.preprocess import (
    Geometry,
    channels_present,
    crop_box,
    preprocess_volume,
    square_padding,
    statistics_slices,
    to_original,
)


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [(10, 10, (0, 0, 0, 0)), (6, 10, (2, 2, 0, 0)), (10, 5, (0, 0, 2, 3)), (1, 4, (1, 2, 0, 0))],
)
def test_square_padding(height, width, expected):
    top, bottom, left, right = square_padding(height, width)
    assert (top, bottom, left, right) == expected
    assert height + top + bottom == width + left + right


def test_crop_box_finds_the_bright_region_and_falls_back_to_the_whole_image():
    volume = np.zeros((2, 20, 30, 3), np.float32)
    volume[1, 4:9, 10:25, 2] = 100.0
    volume[0, 5, 5, 0] = 5.0  # under 10% of the max: background
    assert crop_box(volume, 0.1) == (4, 9, 10, 25)
    assert crop_box(np.zeros_like(volume), 0.1) == (0, 20, 0, 30)


def head_volume(slices=6, height=48, width=40):
    """An off-centre bright ellipse (head) with a square lesion bright in FLAIR on middle slices."""
    yy, xx = np.mgrid[:height, :width]
    head = ((yy - 20) / 14.0) ** 2 + ((xx - 22) / 10.0) ** 2 < 1
    image = np.zeros((slices, height, width, 3), np.uint8)
    image[:, head] = (80, 100, 60)
    mask = np.zeros((slices, height, width), np.uint8)
    mask[2:4, 16:24, 18:26] = 1
    image[2:4, 16:24, 18:26, 1] = 230
    return image, mask


def test_forward_shapes_statistics_and_geometry():
    image, mask = head_volume()
    volume, prepared_mask, geometry = preprocess_volume(image, mask, size=32)
    assert volume.shape == (6, 32, 32, 3) and volume.dtype == np.float32
    assert prepared_mask.shape == (6, 32, 32) and set(np.unique(prepared_mask)) <= {0, 1}
    # the reference's statistics: z-scored over the interior slices (all six hold signal), not all of them
    np.testing.assert_allclose(volume[1:-1].mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(volume[1:-1].std(axis=(0, 1, 2)), 1.0, atol=1e-3)
    # the lesion lies on interior slices only, so FLAIR's whole-stack mean is off zero
    assert volume[..., 1].mean() < -0.01
    volume_all, _, geometry_all = preprocess_volume(image, mask, size=32, statistics="all")
    assert geometry_all == geometry
    np.testing.assert_allclose(volume_all.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(volume_all.std(axis=(0, 1, 2)), 1.0, atol=1e-3)
    # the head spans rows 7..33 and columns 13..31: a 27 x 19 box, padded to 27 x 27
    assert (geometry.crop_y0, geometry.crop_y1, geometry.crop_x0, geometry.crop_x1) == (7, 34, 13, 32)
    assert (geometry.pad_left, geometry.pad_right, geometry.side) == (4, 4, 27)
    # the lesion is the brightest FLAIR region after normalisation
    flair = volume[..., 1]
    assert flair[prepared_mask == 1].mean() > flair[prepared_mask == 0].mean() + 1.0


def test_prediction_maps_back_onto_the_original_grid():
    image, mask = head_volume()
    _, prepared_mask, geometry = preprocess_volume(image, mask, size=64)
    restored = to_original(prepared_mask.astype(np.float32), geometry, order=1) >= 0.5
    assert restored.shape == mask.shape
    overlap = 2 * (restored & (mask == 1)).sum() / (restored.sum() + mask.sum())
    assert overlap > 0.95
    assert not restored[:, :7].any() and not restored[:, 34:].any()  # outside the crop: background


def test_to_original_refuses_maps_of_another_size():
    geometry = Geometry(256, 256, 0, 256, 0, 256, 0, 0, 0, 0, 64)
    with pytest.raises(ValueError, match=r"\(S, 64, 64\)"):
        to_original(np.zeros((3, 32, 32)), geometry)


@pytest.mark.parametrize(
    ("fill", "expected"),
    [(None, (True, True, True)), (0, (False, True, True)), (2, (True, True, False))],
)
def test_channels_present_detects_flair_standing_in(fill, expected):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (3, 8, 8, 3), dtype=np.uint8)
    if fill is not None:
        image[..., fill] = image[..., 1]
    assert channels_present(image) == expected


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="same S, H, W"):
        preprocess_volume(np.zeros((2, 8, 8, 3), np.uint8), np.zeros((3, 8, 8), np.uint8), size=16)


# --- the reference (mateuszbuda/brain-segmentation-pytorch), restated ---------------------------


def reference_preprocess(image, mask, size):
    """What the reference's dataset does to one patient's (S, H, W, 3) uint8 slices: drop the first
    and last, then crop_sample, pad_sample, resize_sample and normalize_volume.

    Returns the volume, the mask and the range of original slice indices it kept.
    """
    volume, labels = image[1:-1].copy(), mask[1:-1].copy()  # dataset.py: slices[1:-1]
    # crop_sample: zero under 10% of the max, crop to the non-zero box in z, y and x
    volume[volume < np.max(volume) * 0.1] = 0
    along = [np.flatnonzero(volume.max(axis=tuple(a for a in range(4) if a != axis))) for axis in range(3)]
    (z0, z1), (y0, y1), (x0, x1) = ((int(ix[0]), int(ix[-1]) + 1) for ix in along)
    volume, labels = volume[z0:z1, y0:y1, x0:x1], labels[z0:z1, y0:y1, x0:x1]
    # pad_sample: the short side padded to the long one, floor before and ceil after
    a, b = volume.shape[1:3]
    half = abs(a - b) / 2.0
    split = (int(np.floor(half)), int(np.ceil(half)))
    rows_cols = ((0, 0), split) if a > b else (split, (0, 0))
    labels = np.pad(labels, ((0, 0),) + rows_cols)
    volume = np.pad(volume, ((0, 0),) + rows_cols + ((0, 0),))
    # resize_sample: one 3-D resize of the whole (uint8, so rescaled to [0, 1]) volume
    labels = resize(labels, (labels.shape[0], size, size), order=0, mode="constant", cval=0, anti_aliasing=False)
    volume = resize(volume, (volume.shape[0], size, size, 3), order=2, mode="constant", cval=0,
                    anti_aliasing=False)
    # normalize_volume: percentiles of the whole volume, then per-channel z-score
    p10, p99 = np.percentile(volume, 10), np.percentile(volume, 99)
    volume = rescale_intensity(volume, in_range=(p10, p99))
    volume = (volume - volume.mean(axis=(0, 1, 2))) / volume.std(axis=(0, 1, 2))
    return volume, labels, (1 + z0, 1 + z1)


def reference_like_volume(seed=0, slices=12, height=64, width=48):
    """Noisy head with a FLAIR-bright blob, a dark (under 10%) noisy border, two faint slices after
    the first (the reference z-crops them) and first/last slices unlike the rest."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    head = ((yy - 36) / 22.0) ** 2 + ((xx - 21) / 15.0) ** 2 < 1
    blob = (yy - 30) ** 2 + (xx - 24) ** 2 < 40
    image = rng.integers(0, 12, (slices, height, width, 3)).astype(np.uint8)
    image[:, head] = rng.integers(15, 160, (slices, int(head.sum()), 3))  # some head voxels under 10%
    image[4:8, blob, 1] = rng.integers(180, 231, (4, int(blob.sum())))
    image[5, 30, 24, 1] = 230  # the interior max: the threshold is 23, exactly
    image[5, 31, 24, 1] = 23  # at the threshold: kept
    image[1:3] = rng.integers(0, 20, (2, height, width, 3))  # faint: zeroed, then z-cropped
    image[6, head] = 20  # a dark slice inside the run the reference keeps
    image[0] = rng.integers(90, 256, (height, width, 3))  # bright everywhere
    image[-1, :10, :10] = 255  # a bright corner outside the head
    mask = np.zeros((slices, height, width), np.uint8)
    mask[4:8][:, blob] = 1
    return image, mask


@pytest.mark.parametrize("size", [32, 100, 256])  # 256: float32 sums drift by 1e-3 there
def test_matches_the_reference_on_the_slices_it_keeps(size):
    image, mask = reference_like_volume()
    expected, expected_mask, (z0, z1) = reference_preprocess(image, mask, size)
    assert (z0, z1) == (3, 11)  # the faint slices 1, 2 dropped; dark slice 6 kept
    volume, prepared_mask, geometry = preprocess_volume(image, mask, size=size)
    assert volume.shape == (12, size, size, 3) and prepared_mask.shape == (12, size, size)
    np.testing.assert_allclose(volume[z0:z1], expected, atol=1e-3)
    np.testing.assert_array_equal(prepared_mask[z0:z1], expected_mask)
    # the statistics slices are the reference's and are z-scored as it does
    kept = image >= 23
    assert statistics_slices(kept & (image > 0)) == slice(3, 11)
    np.testing.assert_allclose(volume[z0:z1].mean(axis=(0, 1, 2), dtype=np.float64), 0.0, atol=1e-5)
    np.testing.assert_allclose(volume[z0:z1].std(axis=(0, 1, 2), dtype=np.float64), 1.0, atol=1e-5)
    # the box is the head's; taken over every slice it would be the whole (bright) first slice
    assert (geometry.crop_y0, geometry.crop_y1, geometry.crop_x0, geometry.crop_x1) != (0, 64, 0, 48)
    # statistics over every slice would be off by much more than the tolerance
    everywhere, _, _ = preprocess_volume(image, mask, size=size, statistics="all")
    assert np.abs(everywhere[z0:z1] - expected).max() > 0.05


def test_first_and_last_slices_do_not_change_the_statistics():
    image, mask = reference_like_volume()
    volume, prepared_mask, geometry = preprocess_volume(image, mask, size=40)
    rng = np.random.default_rng(1)
    other = image.copy()
    other[0] = rng.integers(0, 256, other.shape[1:])
    other[-1] = 0
    other[-1, 40:, 30:] = 255
    changed, changed_mask, changed_geometry = preprocess_volume(other, mask, size=40)
    assert changed.shape == volume.shape == (12, 40, 40, 3)  # still every slice
    assert changed_geometry == geometry
    np.testing.assert_array_equal(changed[1:-1], volume[1:-1])
    np.testing.assert_array_equal(changed_mask, prepared_mask)
    assert not np.array_equal(changed[0], volume[0]) and not np.array_equal(changed[-1], volume[-1])
    # with every slice as statistics, they do change the interior
    a, _, _ = preprocess_volume(image, mask, size=40, statistics="all")
    b, _, _ = preprocess_volume(other, mask, size=40, statistics="all")
    assert not np.allclose(a[1:-1], b[1:-1], atol=1e-3)


@pytest.mark.parametrize("slices", [1, 2])
def test_fewer_than_three_slices_use_them_all(slices):
    image, mask = head_volume(slices=slices)
    volume, prepared_mask, _ = preprocess_volume(image, mask, size=16)
    assert volume.shape == (slices, 16, 16, 3) and prepared_mask.shape == (slices, 16, 16)
    np.testing.assert_allclose(volume.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    assert statistics_slices(np.ones((slices, 2, 2, 3), bool)) == slice(0, slices)


def test_statistics_slices_z_crop_and_fallback():
    signal = np.zeros((8, 2, 2, 3), bool)
    assert statistics_slices(signal) == slice(1, 7)  # no signal on the interior: no z-crop
    signal[[0, 2, 4, 7], 0, 0, 0] = True
    assert statistics_slices(signal) == slice(2, 5)  # the run from the first to the last, gap kept
    assert statistics_slices(signal, "all") == slice(0, 8)
    with pytest.raises(ValueError, match="statistics"):
        statistics_slices(signal, "interior")
