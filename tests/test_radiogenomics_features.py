"""Shape features on hand-built masks whose answers are known on paper, plus brute-force checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial import ConvexHull

from unet.errors import InputError
from unet.radiogenomics.features import (
    Ellipsoid,
    angular_std,
    bevr,
    khachiyan,
    largest_slice,
    margin_fluctuation,
    outline,
    patient_features,
    voxel_corners,
)

CUBE_BEVR = 2 / (math.pi * math.sqrt(3))  # ~0.3676: a cube in its circumscribed sphere


def box(shape: tuple[int, int, int], *ranges: tuple[int, int]) -> np.ndarray:
    """A bool volume, True inside the box given as (start, stop) per axis."""
    volume = np.zeros(shape, dtype=bool)
    volume[tuple(slice(a, b) for a, b in ranges)] = True
    return volume


def ball(radius: float, size: int = 48) -> np.ndarray:
    """Voxels whose centres lie within ``radius`` of a point just off the grid's centre."""
    grid = np.mgrid[:size, :size, :size] - (size / 2 - 0.4)
    return (grid**2).sum(axis=0) <= radius**2


def shape2d(radius: float, size: int = 160, *, rows: float = 1.0, star: float = 0.0, lobes: int = 6) -> np.ndarray:
    """r <= radius (1 + star cos(lobes theta)), with the row axis stretched by ``rows``: disc, ellipse, star."""
    yy, xx = np.mgrid[:size, :size]
    dy, dx = yy - size / 2 - 0.3, xx - size / 2 - 0.2
    return np.hypot(dy / rows, dx) <= radius * (1 + star * np.cos(lobes * np.arctan2(dy, dx)))


def cube_corners(side: float, origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    return np.array([[a, b, c] for a in (0, side) for b in (0, side) for c in (0, side)]) + origin


def ellipsoid_surface(centre, matrix, n: int, seed: int) -> np.ndarray:
    """``n`` random points on the surface {x: (x - c)^T A (x - c) = 1}."""
    directions = np.random.default_rng(seed).normal(size=(n, len(centre)))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return directions @ np.linalg.cholesky(np.linalg.inv(matrix)).T + centre


def rotated(axes, seed: int) -> np.ndarray:
    """diag(1 / axes^2) turned by a random rotation: an ellipsoid matrix with semi-axes ``axes``."""
    rotation = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(axes), len(axes))))[0]
    return rotation @ np.diag(1.0 / np.square(axes)) @ rotation.T


# ---------------------------------------------------------------- Khachiyan


@pytest.mark.parametrize(
    "points, volume, centre",
    [
        (cube_corners(1.0), math.pi * math.sqrt(3) / 2, (0.5, 0.5, 0.5)),  # sphere of radius sqrt(3)/2
        (cube_corners(2.5, (1, -2, 3)), math.pi * math.sqrt(3) / 2 * 2.5**3, (2.25, -0.75, 4.25)),
        (np.array([[0, 0], [2, 0], [0, 2], [2, 2]]), math.pi * 2.0, (1.0, 1.0)),  # circle of radius sqrt 2
        (np.array([[0, 0], [1, 0], [0, 1]]), 4 * math.pi / (3 * math.sqrt(3)) / 2, (1 / 3, 1 / 3)),  # Steiner
        (np.array([[-1.0], [3.0], [0.5]]), 4.0, (1.0,)),  # 1-D: the segment itself
    ],
)
def test_khachiyan_known_ellipsoids(points, volume, centre):
    ellipsoid = khachiyan(points, tol=1e-8)
    assert ellipsoid.volume == pytest.approx(volume, rel=1e-6)
    np.testing.assert_allclose(ellipsoid.centre, centre, atol=1e-6)
    assert ellipsoid.contains(points, tol=1e-9).all()


@pytest.mark.parametrize(
    "centre, axes, seed",
    [
        ((0.0, 0.0, 0.0), (3.0, 2.0, 1.0), 0),
        ((10.0, -4.0, 2.5), (7.0, 7.0, 0.5), 1),
        ((1.0, 2.0), (5.0, 1.5), 2),
    ],
)
def test_khachiyan_recovers_an_ellipsoid_from_points_on_its_surface(centre, axes, seed):
    matrix = rotated(axes, seed)
    points = ellipsoid_surface(np.array(centre), matrix, 600, seed)
    ellipsoid = khachiyan(points, tol=1e-8)
    np.testing.assert_allclose(ellipsoid.centre, centre, atol=1e-3 * max(axes))
    np.testing.assert_allclose(ellipsoid.matrix, matrix, atol=1e-3 * np.abs(matrix).max())


@pytest.mark.parametrize("seed, n, d", [(0, 40, 3), (1, 200, 3), (2, 25, 2), (3, 500, 2), (4, 9, 3)])
def test_khachiyan_on_random_clouds_encloses_and_is_bracketed(seed, n, d):
    points = np.random.default_rng(seed).normal(size=(n, d)) * np.arange(1, d + 1)
    tol = 1e-5
    ellipsoid = khachiyan(points, tol=tol)
    quadratic = np.einsum("ij,jk,ik->i", points - ellipsoid.centre, ellipsoid.matrix, points - ellipsoid.centre)
    assert quadratic.max() <= 1 + 1e-9  # brute force: every point inside
    assert quadratic.max() == pytest.approx(1.0)  # and one on the surface
    centre = (points.min(axis=0) + points.max(axis=0)) / 2
    radius = np.linalg.norm(points - centre, axis=1).max()
    sphere = Ellipsoid(centre, np.eye(d) / radius**2).volume  # one bounding sphere
    assert ConvexHull(points).volume <= ellipsoid.volume <= sphere * (1 + 2 * tol)


@pytest.mark.parametrize(
    "points, tol",
    [
        (np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]]), 1e-4),  # flat: a square in 3-D
        (np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]), 1e-4),  # collinear
        (np.array([[1.0, 2.0, 3.0]]), 1e-4),  # one point
        (np.array([[0.0, math.nan], [1.0, 0.0], [0.0, 1.0]]), 1e-4),
        (cube_corners(1.0), 0.0),
        (cube_corners(1.0), math.nan),
    ],
)
def test_khachiyan_refuses_flat_or_bad_input(points, tol):
    with pytest.raises(InputError):
        khachiyan(points, tol=tol)


# ---------------------------------------------------------------- BEVR


@pytest.mark.parametrize(
    "mask, spacing, expected",
    [
        (box((12, 12, 12), (2, 10), (2, 10), (2, 10)), (1, 1, 1), CUBE_BEVR),
        (box((3, 3, 3), (1, 2), (1, 2), (1, 2)), (1, 1, 1), CUBE_BEVR),  # one voxel: a box, not a point
        (box((5, 9, 9), (2, 3), (1, 7), (2, 8)), (1, 1, 1), CUBE_BEVR),  # one slice: a slab, not flat
        (box((9, 9, 12), (1, 4), (2, 7), (1, 11)), (1, 1, 1), CUBE_BEVR),  # any box, by affine invariance
        (box((12, 12, 12), (2, 10), (2, 10), (2, 10)), (5.0, 0.5, 0.8), CUBE_BEVR),
        (box((12, 12, 12), (2, 10), (2, 10), (2, 10)) | box((12, 12, 12), (11, 12), (0, 1), (11, 12)), (1, 1, 1),
         CUBE_BEVR),
    ],
    ids=["cube", "one-voxel", "one-slice", "box", "anisotropic-cube", "cube-and-stray-voxel"],
)
def test_bevr_of_boxes_is_the_cube_ratio(mask, spacing, expected):
    assert bevr(mask, spacing, tol=1e-7) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("radius, low, high", [(5, 0.60, 0.72), (10, 0.75, 0.83), (20, 0.86, 0.91)])
def test_bevr_of_a_digitised_ball_rises_towards_one(radius, low, high):
    """The voxel solid of a ball pokes out at its staircase corners: BEVR ~ 0.79 at r = 10, 0.88 at 20."""
    assert low < bevr(ball(radius)) < high


def test_bevr_is_invariant_to_per_axis_spacing():
    """An axis scaling maps the MVEE to the MVEE and keeps volume ratios: spacing cannot move BEVR."""
    blob = ball(10, 30) | box((30, 30, 30), (5, 10), (5, 25), (14, 16))
    values = [bevr(blob, spacing) for spacing in [(1, 1, 1), (3, 1, 1), (5.0, 0.5, 0.8)]]
    assert values == pytest.approx([values[0]] * 3, rel=1e-4)
    assert values[0] < bevr(ball(10, 30))  # the fin makes it less ellipsoidal


@pytest.mark.parametrize(
    "connectivity, expected",
    [(1, CUBE_BEVR), (2, CUBE_BEVR), (3, None)],  # corner contact: one object only at full connectivity
)
def test_bevr_keeps_the_largest_component(connectivity, expected):
    mask = box((12, 12, 12), (0, 5), (0, 5), (0, 5)) | box((12, 12, 12), (5, 8), (5, 8), (5, 8))
    value = bevr(mask, connectivity=connectivity, tol=1e-7)
    if expected is None:
        assert value < CUBE_BEVR - 0.05
    else:
        assert value == pytest.approx(expected, rel=1e-5)


def test_voxel_corners_are_the_solid_s_corners_in_mm():
    corners = voxel_corners(box((4, 4, 4), (1, 3), (1, 2), (0, 1)), (3.0, 2.0, 0.5))
    expected = {(s * 3.0, r * 2.0, c * 0.5) for s in (1, 2, 3) for r in (1, 2) for c in (0, 1)}
    assert {tuple(point) for point in corners.tolist()} == expected


@pytest.mark.parametrize(
    "mask, spacing, kwargs",
    [
        (np.zeros((3, 3, 3), bool), (1, 1, 1), {}),  # empty
        (np.full((3, 3, 3), 255, np.uint8), (1, 1, 1), {}),  # 0/255
        (np.ones((3, 3), bool), (1, 1, 1), {}),  # one slice, not a volume
        (np.ones((3, 3, 3), bool), (1, 0, 1), {}),
        (np.ones((3, 3, 3), bool), (1, 1), {}),
        (np.ones((3, 3, 3), bool), (1, 1, 1), {"connectivity": 6}),
    ],
)
def test_bevr_refuses_bad_input(mask, spacing, kwargs):
    with pytest.raises(InputError):
        bevr(mask, spacing, **kwargs)


# ---------------------------------------------------------------- MF and ASD

DISC = shape2d(30)
STAR = shape2d(30, star=0.3)


@pytest.mark.parametrize("feature", [margin_fluctuation, angular_std])
def test_a_disc_is_smooth_and_a_star_is_not(feature):
    disc, star = feature(DISC), feature(STAR)
    assert disc < 0.02
    assert star > 5 * disc


@pytest.mark.parametrize(
    "mask, spacing, low, high",
    [
        (DISC, (1, 1), 0.0, 0.02),
        (shape2d(20, rows=2.0), (1, 1), 0.05, 0.10),  # an ellipse: the distance changes with the angle
        (shape2d(30), (2, 1), 0.05, 0.10),  # a disc of pixels 2 mm tall is that ellipse in mm
        (shape2d(25, rows=0.5), (2, 1), 0.0, 0.02),  # an ellipse of pixels that is a circle in mm
    ],
)
def test_asd_grows_with_elongation_in_mm(mask, spacing, low, high):
    assert low <= angular_std(mask, spacing) < high


@pytest.mark.parametrize(
    "small, large, tolerance",
    [
        (shape2d(20), shape2d(40), 0.01),  # both near 0
        (shape2d(15, star=0.3), STAR, 0.05 * margin_fluctuation(STAR)),
        (STAR, shape2d(60, size=256, star=0.3), 0.05 * margin_fluctuation(STAR)),
    ],
)
def test_mf_does_not_depend_on_scale(small, large, tolerance):
    assert abs(margin_fluctuation(small) - margin_fluctuation(large)) < tolerance


def test_mf_of_a_star_is_the_same_in_pixels_and_in_mm():
    assert margin_fluctuation(STAR, (0.5, 0.5)) == pytest.approx(margin_fluctuation(STAR), rel=1e-6)


def test_outline_is_ordered_and_about_the_perimeter():
    points, centroid = outline(DISC, (1.0, 1.0))
    steps = np.linalg.norm(np.diff(np.vstack([points, points[:1]]), axis=0), axis=1)
    assert steps.max() < 1.0  # consecutive points are neighbours along the boundary
    assert steps.sum() == pytest.approx(2 * math.pi * 30, rel=0.05)
    np.testing.assert_allclose(centroid, (80.3, 80.2), atol=0.05)


def test_outline_uses_the_largest_component_without_its_holes():
    mask = shape2d(30)
    mask[75:85, 75:85] = False  # a hole
    mask[:5, :5] = True  # a stray blob
    assert margin_fluctuation(mask) == pytest.approx(margin_fluctuation(DISC), abs=1e-3)


@pytest.mark.parametrize(
    "call",
    [
        lambda: margin_fluctuation(np.zeros((9, 9), bool)),
        lambda: angular_std(np.zeros((9, 9), bool)),
        lambda: margin_fluctuation(DISC, window=0.0),
        lambda: angular_std(DISC, bins=0),
        lambda: angular_std(DISC, (1.0, -1.0)),
        lambda: margin_fluctuation(np.ones((3, 3, 3), bool)),
    ],
)
def test_slice_features_refuse_bad_input(call):
    with pytest.raises(InputError):
        call()


@pytest.mark.parametrize(
    "areas, expected",
    [([0, 3, 9, 2], 2), ([5, 0, 5], 0), ([0, 0, 1], 2), ([4], 0)],
)
def test_largest_slice(areas, expected):
    mask = np.zeros((len(areas), 4, 4), bool)
    for index, area in enumerate(areas):
        mask[index].flat[:area] = True
    assert largest_slice(mask) == expected


def test_largest_slice_of_an_empty_mask_is_an_error():
    with pytest.raises(InputError):
        largest_slice(np.zeros((3, 4, 4), bool))


# ---------------------------------------------------------------- one patient


def test_patient_features_of_two_blobs():
    mask = box((10, 20, 20), (1, 9), (2, 10), (2, 10)) | box((10, 20, 20), (4, 5), (15, 17), (15, 17))
    features = patient_features(mask, (2.0, 0.5, 0.5))
    assert features["bevr"] == pytest.approx(CUBE_BEVR, rel=1e-3)
    assert features["volume_ml"] == pytest.approx((8 * 8 * 8 + 4) * 0.5 / 1000)
    assert (features["n_components"], features["largest_slice"], features["empty"]) == (2, 4, False)
    assert 0 < features["mf"] < 0.1 and 0 < features["asd"] < 0.1


@pytest.mark.parametrize("mask", [np.zeros((4, 8, 8), bool), np.zeros((1, 1, 1), np.uint8)])
def test_patient_features_of_an_empty_prediction_is_nan_not_an_error(mask):
    features = patient_features(mask)
    assert all(math.isnan(features[key]) for key in ("bevr", "mf", "asd"))
    assert features | {"bevr": 0, "mf": 0, "asd": 0} == {
        "bevr": 0, "mf": 0, "asd": 0, "volume_ml": 0.0, "n_components": 0, "largest_slice": None, "empty": True,
    }
