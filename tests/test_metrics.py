"""Metrics on hand-built volumes whose answers are worked out on paper, plus brute-force oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage import measure

from unet.metrics import (
    dice,
    global_dice,
    largest_component_3d,
    postprocess,
    slice_dice_mean,
    summarise,
    tumour_slice_dice,
    volume_scores,
)

NAN = math.nan


def box(shape: tuple[int, int, int], *ranges: tuple[int, int]) -> np.ndarray:
    """A uint8 volume with 1 inside the box given as (start, stop) per axis."""
    volume = np.zeros(shape, dtype=np.uint8)
    volume[tuple(slice(a, b) for a, b in ranges)] = 1
    return volume


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b)


# ---------------------------------------------------------------- largest component

SHAPE = (6, 8, 8)
SMALL_CORNER = box(SHAPE, (0, 2), (0, 2), (0, 2))  # 8 voxels; (1, 1, 1) is its far corner
BIG_AT_CORNER = box(SHAPE, (2, 5), (2, 5), (2, 5))  # 27 voxels from (2, 2, 2): touches at a corner only
BIG_AT_EDGE = box(SHAPE, (2, 5), (2, 5), (0, 3))  # 27 voxels; (2, 2, 1) shares an edge with (1, 1, 1)
BIG_AT_FACE = box(SHAPE, (2, 5), (0, 3), (0, 3))  # 27 voxels; (2, 1, 1) shares a face with (1, 1, 1)


@pytest.mark.parametrize(
    "big, connectivity, small_kept",
    [
        (BIG_AT_CORNER, 1, False),
        (BIG_AT_CORNER, 2, False),
        (BIG_AT_CORNER, 3, True),  # full connectivity: a corner contact joins them
        (BIG_AT_EDGE, 1, False),
        (BIG_AT_EDGE, 2, True),
        (BIG_AT_EDGE, 3, True),
        (BIG_AT_FACE, 1, True),
    ],
)
def test_largest_component_by_contact_and_connectivity(big, connectivity, small_kept):
    kept = largest_component_3d(SMALL_CORNER | big, connectivity=connectivity)
    assert kept.dtype == np.uint8
    np.testing.assert_array_equal(kept, (SMALL_CORNER | big) if small_kept else big)


def test_default_connectivity_is_the_references_face_connectivity():
    kept = largest_component_3d(SMALL_CORNER | BIG_AT_CORNER)
    np.testing.assert_array_equal(kept, BIG_AT_CORNER)


def test_components_run_across_slices_not_per_slice():
    # an 'L' over three slices: each slice alone holds a different piece, in 3-D they are one
    mask = box(SHAPE, (0, 1), (0, 1), (0, 6)) | box(SHAPE, (0, 3), (0, 1), (0, 1)) | box(SHAPE, (5, 6), (7, 8), (7, 8))
    expected = mask.copy()
    expected[5, 7, 7] = 0
    np.testing.assert_array_equal(largest_component_3d(mask), expected)


TIE_FIRST = box(SHAPE, (0, 1), (0, 2), (0, 2))


@pytest.mark.parametrize(
    "mask, expected",
    [
        (np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)),  # empty in, empty out
        (SMALL_CORNER.astype(bool), SMALL_CORNER),  # one component: unchanged
        (TIE_FIRST | box(SHAPE, (4, 5), (0, 2), (0, 2)), TIE_FIRST),  # equal sizes: the first in raster order
    ],
)
def test_largest_component_edge_cases(mask, expected):
    np.testing.assert_array_equal(largest_component_3d(mask), expected)


@pytest.mark.parametrize("connectivity", [1, 2, 3])
def test_largest_component_matches_skimage_label(connectivity):
    rng = np.random.default_rng(connectivity)
    for _ in range(5):
        mask = rng.random((5, 9, 9)) < 0.3
        labels = measure.label(mask, connectivity=connectivity)
        sizes = np.bincount(labels.ravel())[1:]
        kept = largest_component_3d(mask, connectivity=connectivity)
        assert kept.sum() == sizes.max()
        assert len(np.unique(labels[kept == 1])) == 1


def test_skimage_default_is_full_connectivity():
    # what the brief assumed for the reference; the reference's medpy call uses connectivity 1 instead
    mask = SMALL_CORNER | BIG_AT_CORNER
    assert measure.label(mask).max() == 1
    assert measure.label(mask, connectivity=1).max() == 2


# ---------------------------------------------------------------- postprocess


def test_postprocess_thresholds_strictly_then_keeps_the_largest_component():
    p = np.zeros(SHAPE, np.float32)
    p[0, 0, 0:3] = [0.5, 0.51, 0.9]  # 0.5 is background, as np.round(0.5) == 0 in the reference
    p[4, 4:7, 4:7] = 0.7  # the largest blob
    expected_all = np.zeros(SHAPE, np.uint8)
    expected_all[0, 0, 1:3] = 1
    expected_all[4, 4:7, 4:7] = 1
    np.testing.assert_array_equal(postprocess(p, largest_component=False), expected_all)
    np.testing.assert_array_equal(postprocess(p), box(SHAPE, (4, 5), (4, 7), (4, 7)))
    high = postprocess(p, threshold=0.8, largest_component=False)
    np.testing.assert_array_equal(high[0, 0], [0, 0, 1, 0, 0, 0, 0, 0])


@pytest.mark.parametrize(
    "probabilities, threshold, message",
    [
        (np.full(SHAPE, 3.0), 0.5, "sigmoid"),
        (np.full(SHAPE, np.nan), 0.5, "diverged"),
        (np.zeros((8, 8)), 0.5, r"\(S, H, W\)"),
        (np.zeros(SHAPE), 1.0, "strictly between"),
        (np.zeros(SHAPE), 0.0, "strictly between"),
    ],
)
def test_postprocess_refuses(probabilities, threshold, message):
    with pytest.raises(ValueError, match=message):
        postprocess(probabilities, threshold)


# ---------------------------------------------------------------- dice and per-volume scores

S = (3, 6, 8)
SQUARE = box(S, (1, 2), (0, 2), (0, 2))  # 2x2 in the middle slice: 4 voxels
RECT = box(S, (1, 2), (0, 2), (0, 4))  # 2x4 holding the square: 8 voxels, overlap 4
SHIFTED = box(S, (1, 2), (0, 2), (3, 7))  # 2x4 over columns 3-6
TWO_APART = box(S, (1, 2), (3, 5), (4, 6))  # 2x2, disjoint from SQUARE
EMPTY = np.zeros(S, np.uint8)


@pytest.mark.parametrize(
    "pred, target, expected",
    [
        (RECT, RECT, 1.0),
        (SQUARE, TWO_APART, 0.0),  # disjoint
        (SQUARE, RECT, 2 * 4 / (4 + 8)),  # 2/3
        (box(S, (1, 2), (0, 2), (2, 4)), SHIFTED, 2 * 2 / (4 + 8)),  # 2x2 over columns 2-3: overlap column 3
        (EMPTY, EMPTY, 1.0),
        (EMPTY, SQUARE, 0.0),
        (SQUARE, EMPTY, 0.0),
    ],
)
def test_dice_known_answers(pred, target, expected):
    assert dice(pred, target) == pytest.approx(expected)
    assert dice(pred.astype(bool), target.astype(bool)) == pytest.approx(expected)


def test_dice_empty_value_is_the_callers_choice():
    assert math.isnan(dice(EMPTY, EMPTY, empty_value=NAN))


# hd95 of the square (pred) against the rectangle (target), both one voxel thick, so all voxels are
# surface: square -> rectangle distances are 0 0 0 0; rectangle -> square: columns 0-1 give 0 (4x),
# column 2 gives 1 (2x), column 3 gives 2 (2x). Pooled and sorted: eight 0, two 1, two 2; the 95th
# percentile sits at index 0.95 * 11 = 10.45, between two 2s: 2.
# hd95 of the square against TWO_APART (rows 3-4, columns 4-5): each square voxel's nearest is
# (3, 4), at sqrt(3^2 + 4^2) = 5, sqrt(3^2 + 3^2), sqrt(2^2 + 4^2), sqrt(2^2 + 3^2); the other way
# the same four by symmetry. Sorted, the last two are 5 and index 0.95 * 7 = 6.65 lies between: 5.
@pytest.mark.parametrize(
    "pred, target, dsc, iou, precision, recall, hd95, avd_voxels, avd_relative",
    [
        (RECT, RECT, 1, 1, 1, 1, 0, 0, 0),  # identical
        (SQUARE, RECT, 2 / 3, 0.5, 1, 0.5, 2, 4, 0.5),  # square inside the rectangle
        (RECT, SQUARE, 2 / 3, 0.5, 0.5, 1, 2, 4, 1),
        (SQUARE, TWO_APART, 0, 0, 0, 0, 5, 0, 0),  # disjoint
        (EMPTY, EMPTY, 1, 1, NAN, NAN, 0, 0, NAN),  # both empty
        (EMPTY, SQUARE, 0, 0, NAN, 0, NAN, 4, 1),  # missed tumour
        (SQUARE, EMPTY, 0, 0, 0, NAN, NAN, 4, NAN),  # false alarm
    ],
)
def test_volume_scores_known_answers(pred, target, dsc, iou, precision, recall, hd95, avd_voxels, avd_relative):
    scores = volume_scores(pred, target)
    expected = dict(dsc=dsc, iou=iou, precision=precision, recall=recall, hd95=hd95, avd_voxels=avd_voxels,
                    avd_relative=avd_relative)
    for key, value in expected.items():
        assert same(scores[key], value), (key, scores[key], value)
    assert scores["voxels_pred"] == pred.sum() and scores["voxels_true"] == target.sum()
    assert scores["pred_empty"] == (pred.sum() == 0) and scores["target_empty"] == (target.sum() == 0)
    for key in ("precision", "recall", "hd95", "avd_relative"):
        assert scores[f"{key}_defined"] == (not math.isnan(scores[key])), key


# Two n-cubes, the second shifted by k voxels along one axis. The far face of each cube (n*n voxels)
# is exactly k from the other's surface: every voxel of the other cube lies >= k further along the
# axis, and the voxel k along it is on the other's near face. No surface voxel is further than k
# (those inside the other's extent are on its side faces, distance 0, or within k of its far face).
# The two far faces are 2n^2 of the 2(n^3 - (n-2)^3) pooled distances (8/16 for n = 2, 32/112 for
# n = 4), over 5%, so the 95th percentile interpolates between two values k: HD95 = k exactly,
# overlapping (k < n) or not. Along an axis with spacing s every such distance scales to k * s.
@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (3.0, 0.5, 0.25)])
def test_hd95_of_shifted_cubes_is_the_shift(n, k, axis, spacing):
    shape = (12, 12, 12)
    a = box(shape, (1, 1 + n), (1, 1 + n), (1, 1 + n))
    b = np.roll(a, k, axis=axis)
    scores = volume_scores(a, b, spacing=spacing)
    assert scores["hd95"] == pytest.approx(k * spacing[axis])
    assert scores["hd95_defined"]


def brute_surface_points(mask: np.ndarray) -> np.ndarray:
    """(n, 3) indices of mask voxels with a face neighbour outside the mask or the array."""
    padded = np.pad(mask.astype(bool), 1)
    inner = padded[1:-1, 1:-1, 1:-1]
    all_in = np.ones_like(inner)
    for axis in range(3):
        for step in (-1, 1):
            all_in &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
    return np.argwhere(inner & ~all_in)


def brute_hd95(a: np.ndarray, b: np.ndarray, spacing) -> float:
    pa, pb = brute_surface_points(a) * spacing, brute_surface_points(b) * spacing
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return float(np.percentile(np.concatenate([d.min(axis=1), d.min(axis=0)]), 95))


@pytest.mark.parametrize("seed", range(4))
def test_hd95_matches_all_pairs_brute_force(seed):
    rng = np.random.default_rng(seed)
    spacing = np.array([2.5, 1.0, 0.7])
    a = rng.random((5, 9, 10)) < 0.35
    b = rng.random((5, 9, 10)) < 0.2
    assert volume_scores(a, b, spacing=spacing)["hd95"] == pytest.approx(brute_hd95(a, b, spacing))
    # isotropic spacing s scales the distances by s
    assert volume_scores(a, b, spacing=(2.0, 2.0, 2.0))["hd95"] == pytest.approx(2 * brute_hd95(a, b, np.ones(3)))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: dice(SQUARE * 255, SQUARE), "divide 0/255"),
        (lambda: dice(SQUARE, RECT[:2]), "shape"),
        (lambda: dice(SQUARE[1], RECT[1]), r"\(S, H, W\)"),
        (lambda: volume_scores(SQUARE, RECT, spacing=(1.0, 0.0, 1.0)), "spacing"),
        (lambda: volume_scores(SQUARE, RECT, spacing=(1.0, 1.0)), "spacing"),
        (lambda: largest_component_3d(SQUARE, connectivity=4), "connectivity"),
        (lambda: global_dice([SQUARE, RECT], [SQUARE]), "2 predicted volumes but 1"),
        (lambda: global_dice([], []), "no volumes"),
        (lambda: summarise([{"dsc": 1.0}]), "lacks"),
    ],
)
def test_refuses_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------- summarise


def four_patients(empty_value: float = 1.0) -> list[dict]:
    return [
        volume_scores(pred, target, empty_value=empty_value)
        for pred, target in [(SQUARE, RECT), (EMPTY, SQUARE), (SQUARE, EMPTY), (EMPTY, EMPTY)]
    ]


@pytest.mark.parametrize(
    "metric, mean, median, n, excluded",
    [
        ("dsc", (2 / 3 + 0 + 0 + 1) / 4, (0 + 2 / 3) / 2, 4, {}),
        ("iou", (0.5 + 0 + 0 + 1) / 4, 0.25, 4, {}),
        ("precision", (1 + 0) / 2, 0.5, 2, {"pred_empty": 1, "both_empty": 1}),
        ("recall", (0.5 + 0) / 2, 0.25, 2, {"target_empty": 1, "both_empty": 1}),
        ("hd95", (2 + 0) / 2, 1.0, 2, {"pred_empty": 1, "target_empty": 1}),
        ("avd_voxels", (4 + 4 + 4 + 0) / 4, 4.0, 4, {}),
        ("avd_relative", (0.5 + 1) / 2, 0.75, 2, {"target_empty": 1, "both_empty": 1}),
    ],
)
def test_summarise_leaves_undefined_values_out_and_counts_why(metric, mean, median, n, excluded):
    summary = summarise(four_patients())
    assert summary[metric]["mean"] == pytest.approx(mean)
    assert summary[metric]["median"] == pytest.approx(median)
    assert summary[metric]["n"] == n
    assert summary[metric]["excluded"] == excluded


def test_summarise_counts_and_optional_exclusion_of_empty_agreement():
    summary = summarise(four_patients(empty_value=NAN))
    counts = [summary[key] for key in ("n_volumes", "n_pred_empty", "n_target_empty", "n_both_empty")]
    assert counts == [4, 2, 2, 1]
    assert summary["dsc"]["n"] == 3 and summary["dsc"]["excluded"] == {"both_empty": 1}
    assert summary["dsc"]["mean"] == pytest.approx((2 / 3) / 3)
    nothing = summarise([])
    assert nothing["n_volumes"] == 0 and math.isnan(nothing["dsc"]["mean"]) and nothing["dsc"]["n"] == 0


# ---------------------------------------------------------------- dataset-level dice

# Patient 1, four 8x8 slices: two correctly empty; a 2x2 tumour found exactly; a 4x4 tumour of
# which the prediction covers a 2x4 half (slice DSC 2*8/(8+16) = 2/3).
# Patient 2, two slices: a false alarm of 2 voxels on a tumour-free slice (slice DSC 0); a 2x3
# tumour found exactly.
P1_TRUE = np.zeros((4, 8, 8), np.uint8)
P1_TRUE[2, 0:2, 0:2] = 1
P1_TRUE[3, 2:6, 2:6] = 1
P1_PRED = P1_TRUE.copy()
P1_PRED[3, 4:6, 2:6] = 0
P2_TRUE = np.zeros((2, 8, 8), np.uint8)
P2_TRUE[1, 5:7, 1:4] = 1
P2_PRED = P2_TRUE.copy()
P2_PRED[0, 7, 6:8] = 1
PREDS, TRUES = [P1_PRED, P2_PRED], [P1_TRUE, P2_TRUE]


def test_dataset_level_dice_figures_differ_by_design():
    # all slices: (1 + 1 + 1 + 2/3 + 0 + 1) / 6 = 7/9, the empty slices' free 1.0s inflating it
    assert slice_dice_mean(PREDS, TRUES) == pytest.approx(7 / 9)
    # tumour slices only: (1 + 2/3 + 1) / 3 = 8/9, the false alarm unseen
    assert tumour_slice_dice(PREDS, TRUES) == pytest.approx(8 / 9)
    # voxels pooled: overlap 4 + 8 + 6 = 18, |pred| 4 + 8 + 2 + 6 = 20, |true| 4 + 16 + 6 = 26: 36/46
    assert global_dice(PREDS, TRUES) == pytest.approx(18 / 23)


def test_dataset_level_dice_edge_cases():
    assert global_dice(P1_TRUE, P1_TRUE) == 1.0  # one volume may be passed bare
    empty = np.zeros((2, 8, 8), np.uint8)
    assert global_dice([empty], [empty]) == 1.0
    assert math.isnan(global_dice([empty], [empty], empty_value=NAN))
    assert math.isnan(tumour_slice_dice([P2_PRED[:1]], [empty[:1]]))
    assert slice_dice_mean([empty], [empty]) == 1.0
