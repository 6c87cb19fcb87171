"""The reference per-volume preprocessing and its inverse, on hand-built volumes."""

from __future__ import annotations

import numpy as np
import pytest

from unet.preprocess import Geometry, channels_present, crop_box, preprocess_volume, square_padding, to_original


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
    np.testing.assert_allclose(volume.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(volume.std(axis=(0, 1, 2)), 1.0, atol=1e-3)
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
