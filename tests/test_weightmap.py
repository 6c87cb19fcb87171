"""Weight maps against a brute-force computation on hand-made masks, and the inputs they refuse."""

from __future__ import annotations

import numpy as np
import pytest

from unet.weightmaps.weightmap import (
    class_weights_from_counts,
    class_weights_from_masks,
    weight_map,
    weight_maps,
)

# ---------------------------------------------------------------- brute force, plain numpy


def components(mask: np.ndarray, diagonal: bool = True) -> list[np.ndarray]:
    """Connected components by flood fill: one (n, 2) array of (row, col) per object."""
    steps = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)]
    if not diagonal:
        steps = [(dr, dc) for dr, dc in steps if dr == 0 or dc == 0]
    seen = np.zeros(mask.shape, dtype=bool)
    found = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        stack, pixels = [start], []
        while stack:
            r, c = stack.pop()
            pixels.append((r, c))
            for dr, dc in steps:
                n = (r + dr, c + dc)
                if 0 <= n[0] < mask.shape[0] and 0 <= n[1] < mask.shape[1] and mask[n] and not seen[n]:
                    seen[n] = True
                    stack.append(n)
        found.append(np.array(pixels))
    return found


def brute_force(mask: np.ndarray, w0: float, sigma: float, class_weights: tuple[float, float]) -> np.ndarray:
    """Every pixel's distance to every pixel of every object; sort; the paper's formula."""
    mask = mask.astype(bool)
    weights = np.where(mask, class_weights[1], class_weights[0]).astype(np.float64)
    objects = components(mask)
    if len(objects) < 2:
        return weights
    rows, cols = np.indices(mask.shape)
    distances = np.stack(
        [np.sqrt((rows[..., None] - obj[:, 0]) ** 2 + (cols[..., None] - obj[:, 1]) ** 2).min(axis=-1) for obj in objects]
    )
    distances.sort(axis=0)
    border = w0 * np.exp(-((distances[0] + distances[1]) ** 2) / (2 * sigma**2))
    weights[~mask] += border[~mask]
    return weights


# ---------------------------------------------------------------- hand-made masks


def disc(shape: tuple[int, int], center: tuple[int, int], radius: float) -> np.ndarray:
    rows, cols = np.indices(shape)
    return (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius**2


def two_discs_touching_diagonally() -> np.ndarray:
    # r = 3 discs: (12, 12) is the first's corner pixel, (13, 13) the second's: they meet at a corner
    return disc((32, 32), (10, 10), 3) | disc((32, 32), (15, 15), 3)


def two_discs_apart() -> np.ndarray:
    return disc((32, 32), (10, 10), 3) | disc((32, 32), (17, 18), 3)


def three_objects() -> np.ndarray:
    mask = disc((40, 40), (8, 9), 4) | disc((40, 40), (30, 12), 5)
    mask[20:26, 25:37] = True  # a rectangle
    return mask


def far_apart_64() -> np.ndarray:
    # a pair close together plus one far away: crops by the cut-off radius must stay exact
    mask = disc((64, 64), (6, 6), 3) | disc((64, 64), (6, 16), 2)
    mask[55:60, 50:62] = True
    return mask


def one_object() -> np.ndarray:
    return disc((32, 32), (16, 14), 6)


MASKS = {
    "touching_diagonally": (two_discs_touching_diagonally, 1),
    "two_apart": (two_discs_apart, 2),
    "three_objects": (three_objects, 3),
    "far_apart_64": (far_apart_64, 3),
    "one_object": (one_object, 1),
    "empty": (lambda: np.zeros((32, 32), dtype=bool), 0),
    "full": (lambda: np.ones((32, 32), dtype=bool), 1),
}


@pytest.mark.parametrize("case", sorted(MASKS))
@pytest.mark.parametrize(
    "w0, sigma, class_weights",
    [(10.0, 5.0, (1.0, 1.0)), (10.0, 2.0, (1.0, 7.5)), (3.0, 12.0, (0.5, 2.0)), (0.0, 5.0, (1.0, 3.0))],
)
def test_matches_brute_force(case, w0, sigma, class_weights):
    make, n_objects = MASKS[case]
    mask = make()
    assert len(components(mask)) == n_objects  # the hand-made mask is what its name says
    got = weight_map(mask, w0=w0, sigma=sigma, class_weights=class_weights)
    assert got.dtype == np.float32 and got.shape == mask.shape
    np.testing.assert_allclose(got, brute_force(mask, w0, sigma, class_weights), rtol=0, atol=1e-5)


def test_diagonal_touch_is_one_object_so_no_border_term():
    mask = two_discs_touching_diagonally()
    assert len(components(mask, diagonal=False)) == 2  # two objects under 4-connectivity
    got = weight_map(mask, class_weights=(1.0, 4.0))
    np.testing.assert_array_equal(got, np.where(mask, 4.0, 1.0).astype(np.float32))


def test_two_bars_known_answer():
    # bars at columns 0-3 and 10-13: in the gap d1 + d2 = 7 on every pixel; right of the second bar
    # (columns 14, 15) d1 + d2 = (c - 13) + (c - 3)
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[:, 0:4] = 1
    mask[:, 10:14] = 1
    got = weight_map(mask, w0=10.0, sigma=5.0, class_weights=(1.0, 2.0))
    border = {c: 10.0 * np.exp(-(s**2) / 50.0) for c, s in [(4, 7), (9, 7), (6, 7), (14, 12), (15, 14)]}
    for col, term in border.items():
        np.testing.assert_allclose(got[:, col], 1.0 + term, rtol=1e-6)
    assert np.all(got[mask == 1] == 2.0)


@pytest.mark.parametrize(
    "dtype, high", [(bool, True), (np.uint8, 1), (np.uint8, 255), (np.int64, 255), (np.float32, 1.0)]
)
def test_accepted_encodings_give_the_same_map(dtype, high):
    mask = three_objects()
    encoded = np.where(mask, high, 0).astype(dtype)
    np.testing.assert_array_equal(weight_map(encoded), weight_map(mask))


@pytest.mark.parametrize("value", [0, 1, 255])
def test_constant_masks_are_class_weight_only(value):
    mask = np.full((16, 24), value, dtype=np.uint8)
    expected = 2.0 if value else 0.5
    np.testing.assert_array_equal(weight_map(mask, class_weights=(0.5, 2.0)), np.full((16, 24), expected, np.float32))


def test_batch_equals_slice_by_slice():
    masks = np.stack([two_discs_apart(), one_object(), np.zeros((32, 32), bool), two_discs_touching_diagonally()])
    got = weight_maps(masks.astype(np.uint8) * 255, sigma=3.0, class_weights=(1.0, 2.0))
    assert got.shape == masks.shape and got.dtype == np.float32
    for i, mask in enumerate(masks):
        np.testing.assert_array_equal(got[i], weight_map(mask, sigma=3.0, class_weights=(1.0, 2.0)))


# ---------------------------------------------------------------- refused input


BAD_MASKS = [
    (np.zeros((2, 8, 8), np.uint8), "got shape \\(2, 8, 8\\)"),
    (np.zeros(8, np.uint8), "got shape \\(8,\\)"),
    (np.zeros((0, 8), np.uint8), "got shape \\(0, 8\\)"),
    (np.array([[0, 2], [0, 0]], np.uint8), "found value 2"),
    (np.array([[0, 1], [255, 0]], np.uint8), "found value 1"),
    (np.array([[0, 128], [255, 0]], np.uint8), "found value 128"),
    (np.array([[0.0, 0.5]], np.float32), "found value 0.5"),
    (np.array([[0.0, np.nan]]), "found value nan"),
    (np.array([[-1, 0]], np.int16), "found value -1"),
]


@pytest.mark.parametrize("mask, message", BAD_MASKS)
def test_bad_masks_are_refused_naming_the_slice(mask, message):
    with pytest.raises(ValueError, match=message) as error:
        weight_map(mask, name="TCGA_CS_4941_19960909_12_mask.tif")
    assert "TCGA_CS_4941_19960909_12_mask.tif" in str(error.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"w0": -1.0}, "w0"),
        ({"w0": float("nan")}, "w0"),
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -2.0}, "sigma"),
        ({"class_weights": (0.0, 1.0)}, "class weights"),
        ({"class_weights": (1.0, -3.0)}, "class weights"),
        ({"class_weights": (1.0, float("inf"))}, "class weights"),
        ({"class_weights": (1.0,)}, "class_weights"),
    ],
)
def test_bad_parameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        weight_map(one_object(), **kwargs)


def test_batch_refuses_a_single_slice_and_names_the_bad_one():
    with pytest.raises(ValueError, match="weight_map\\(\\)"):
        weight_maps(one_object())
    masks = np.zeros((3, 8, 8), np.uint8)
    masks[2, 0, 0] = 7
    with pytest.raises(ValueError, match="masks\\[2\\]"):
        weight_maps(masks)


# ---------------------------------------------------------------- class weights


@pytest.mark.parametrize(
    "n_foreground, n_total, method, expected",
    [
        (25, 100, "inverse_frequency", (1.0, 3.0)),
        (50, 100, "inverse_frequency", (1.0, 1.0)),
        (1, 101, "inverse_frequency", (1.0, 100.0)),
        (80, 100, "inverse_frequency", (1.0, 0.25)),
        (25, 100, "none", (1.0, 1.0)),
        (0, 100, "none", (1.0, 1.0)),
    ],
)
def test_class_weights_from_counts(n_foreground, n_total, method, expected):
    assert class_weights_from_counts(n_foreground, n_total, method) == pytest.approx(expected)


@pytest.mark.parametrize(
    "n_foreground, n_total, method, message",
    [
        (0, 100, "inverse_frequency", "no foreground"),
        (100, 100, "inverse_frequency", "no background"),
        (5, 0, "inverse_frequency", "n_total > 0"),
        (-1, 100, "inverse_frequency", "n_foreground=-1"),
        (101, 100, "inverse_frequency", "n_foreground=101"),
        (25, 100, "median_frequency", "unknown method"),
    ],
)
def test_class_weights_refuse_undefined_frequencies(n_foreground, n_total, method, message):
    with pytest.raises(ValueError, match=message):
        class_weights_from_counts(n_foreground, n_total, method)


def test_class_weights_from_masks_streams_counts():
    first = np.zeros((10, 10), np.uint8)
    first[:2, :5] = 255  # 10 foreground pixels
    second = np.zeros((10, 10), bool)
    second[5:, 5:] = True  # 25 foreground pixels
    masks = (m for m in [first, second, np.zeros((10, 10), np.uint8)])  # a generator: one pass
    assert class_weights_from_masks(masks) == pytest.approx((1.0, 265 / 35))
    assert class_weights_from_masks(np.stack([first > 0, second])) == pytest.approx((1.0, 165 / 35))
    assert class_weights_from_masks([first], method="none") == (1.0, 1.0)


def test_class_weights_from_masks_names_a_bad_mask():
    with pytest.raises(ValueError, match="train\\[1\\].*found value 3"):
        class_weights_from_masks([np.zeros((4, 4)), np.full((4, 4), 3)], name="train")
    with pytest.raises(ValueError, match="no foreground"):
        class_weights_from_masks([np.zeros((4, 4))])


def test_the_stage_picture_shows_the_border_term_at_256_px(tmp_path):
    """Two tumour parts 6 px apart on a 256 px slice: the picture's map has the separation term."""
    import pandas as pd
    import tifffile

    from unet.weightmaps.figures import pick_slices, weightmap_figure

    mask = np.zeros((256, 256), np.uint8)
    mask[100:140, 60:120] = 255
    mask[100:140, 126:190] = 255
    tifffile.imwrite(tmp_path / "P_1_mask.tif", mask)
    single = np.zeros_like(mask)
    single[10:20, 10:20] = 255
    tifffile.imwrite(tmp_path / "P_2_mask.tif", single)
    manifest = pd.DataFrame({"patient": ["P", "P"], "slice": [1, 2], "has_tumour": [True, True],
                             "tumour_area": [int((mask > 0).sum()), 100],
                             "mask_path": [str(tmp_path / "P_1_mask.tif"), str(tmp_path / "P_2_mask.tif")]})
    (label, picked), *_ = pick_slices(manifest)
    assert label.endswith("#1")  # the slice with two parts first
    border = weight_map(picked, w0=10.0, sigma=5.0, class_weights=(1.0, 3.0))[100:140, 121:125]
    assert border.max() > 3.0 + 0.5  # between the parts the separation term lifts w above every class weight
    path = weightmap_figure(manifest, tmp_path / "wm.png", w0=10.0, sigma_256=5.0, weights=(1.0, 3.0))
    assert path.read_bytes()[:4] == b"\x89PNG"
