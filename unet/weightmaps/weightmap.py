"""The U-Net paper's pixel weight maps (Ronneberger et al. 2015, eq. 2).

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

d1 and d2 are the Euclidean distances from pixel x to the nearest and the second-nearest object,
an object being an 8-connected component of the mask. The border term is added only on
background pixels and only where the slice holds two or more objects; otherwise the map is the
class-balancing term w_c alone (class_weights[0] on background, class_weights[1] on foreground),
so it is never zero and never NaN.

How it stays fast (the common way runs one full-image distance transform per object, stacks them
and sorts): no distance transform at all below two objects; each object's transform only inside
its bounding box grown by the radius beyond which the border term is negligible (see
`_cutoff_radius`); a running minimum of the two nearest distances instead of a sort.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import numpy as np
from scipy import ndimage

__all__ = [
    "class_weights_from_counts",
    "class_weights_from_masks",
    "weight_map",
    "weight_maps",
]

logger = logging.getLogger(__name__)

# 8-connectivity: pixels touching only at a corner belong to one object.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)

# The border term is dropped where it is below this fraction of w0 (10 * 1e-7 = 1e-6 absolute
# for the paper's w0 = 10, below float32 resolution at values near 1).
_TAIL = 1e-7

_METHODS = ("inverse_frequency", "sqrt_inverse_frequency", "none")


def _check_params(w0: float, sigma: float, class_weights: tuple[float, float]) -> None:
    if not (math.isfinite(w0) and w0 >= 0):
        raise ValueError(f"weight map: w0 must be a finite number >= 0, got {w0!r}; the paper uses 10.")
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"weight map: sigma must be a finite number > 0 (pixels), got {sigma!r}; the paper uses 5.")
    if len(class_weights) != 2:
        raise ValueError(
            f"weight map: class_weights must be (background, foreground), got {class_weights!r}; "
            "e.g. (1.0, 1.0) or class_weights_from_counts(...)."
        )
    for w in class_weights:
        if not (math.isfinite(w) and w > 0):
            raise ValueError(
                f"weight map: class weights must be finite and > 0, got {tuple(class_weights)!r}; "
                "use (1.0, 1.0) for no class balancing."
            )


def _as_binary(mask: np.ndarray, name: str) -> np.ndarray:
    """Return `mask` as a bool array, refusing anything but a 2-D {0,1}, {0,255} or bool mask."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(
            f"{name}: a weight map needs one non-empty 2-D mask (H, W), got shape {mask.shape}; "
            "pass a single slice, or a (N, H, W) stack to weight_maps()."
        )
    if mask.dtype == bool:
        return mask
    high = mask.max()
    if high == 0 or high == 1 or high == 255:
        stray = (mask != 0) & (mask != high)
        if not stray.any():
            return mask != 0
        bad = mask[stray][0].item()
    else:
        bad = high.item()
    raise ValueError(
        f"{name}: mask must be binary ({{0, 1}}, {{0, 255}} or bool), found value {bad!r} "
        f"(dtype {mask.dtype}); threshold it first, e.g. mask > 0."
    )


def _cutoff_radius(w0: float, sigma: float) -> float:
    """Distance beyond which an object cannot change the border term by more than w0 * _TAIL.

    w0 * exp(-s^2 / (2 sigma^2)) < w0 * _TAIL  <=>  s > sigma * sqrt(2 ln(1 / _TAIL)) = R.
    Crop exactness: an object's transform is computed only inside its bounding box grown by R,
    which holds all its pixels, so inside the crop the distance is exact; a pixel outside the
    crop is more than R away from the object, and there it is treated as infinitely far. Replacing
    distances by infinity can only raise the two smallest, so the computed d1 + d2 is never below
    the true one. If the true d1 + d2 <= R, both objects are within R of the pixel, both crops
    hold it and the computed sum is exact; otherwise both the true and the computed terms are below
    w0 * _TAIL, so the error is at most w0 * _TAIL everywhere.
    """
    return sigma * math.sqrt(2.0 * math.log(1.0 / _TAIL))


def _grown_boxes(labels: np.ndarray, n_objects: int, radius: float) -> list[tuple[slice, slice]]:
    """Each object's bounding box grown by `radius` on every side, clipped to the image."""
    height, width = labels.shape
    grow = math.ceil(radius)
    return [
        (
            slice(max(rows.start - grow, 0), min(rows.stop + grow, height)),
            slice(max(cols.start - grow, 0), min(cols.stop + grow, width)),
        )
        for rows, cols in ndimage.find_objects(labels, max_label=n_objects)
    ]


def _two_nearest(
    labels: np.ndarray, n_objects: int, radius: float
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """Distances (d1, d2) to the nearest and second-nearest object inside a window.

    The window is the union box of the objects' grown boxes; outside it, and outside an object's
    own grown box, that object is farther than `radius` and counts as infinitely far.
    """
    boxes = _grown_boxes(labels, n_objects, radius)
    top, left = min(r.start for r, _ in boxes), min(c.start for _, c in boxes)
    window = (slice(top, max(r.stop for r, _ in boxes)), slice(left, max(c.stop for _, c in boxes)))
    labels = labels[window]
    d1 = np.full(labels.shape, np.inf)  # (h, w) of the window
    d2 = np.full(labels.shape, np.inf)
    for k, (rows, cols) in enumerate(boxes, start=1):
        box = (slice(rows.start - top, rows.stop - top), slice(cols.start - left, cols.stop - left))
        dk = ndimage.distance_transform_edt(labels[box] != k)  # exact: the object is in its box
        near, second = d1[box], d2[box]  # views: updated in place
        np.minimum(second, np.maximum(near, dk), out=second)
        np.minimum(near, dk, out=near)
    return window, d1, d2


def weight_map(
    mask: np.ndarray,
    *,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: tuple[float, float] = (1.0, 1.0),
    name: str = "mask",
) -> np.ndarray:
    """U-Net weight map of one 2-D binary mask, float32 with the mask's shape.

    `name` identifies the slice in error messages (a file name, a manifest row).
    """
    _check_params(w0, sigma, class_weights)
    foreground = _as_binary(mask, name)
    out = np.full(foreground.shape, class_weights[0], dtype=np.float32)
    if not foreground.any():
        return out
    out[foreground] = class_weights[1]
    if w0 == 0:
        return out
    labels, n_objects = ndimage.label(foreground, structure=_EIGHT_CONNECTED)
    if n_objects < 2:
        return out
    window, d1, d2 = _two_nearest(labels, n_objects, _cutoff_radius(w0, sigma))
    total = d1 + d2  # inf where the second-nearest object lies beyond the cut-off
    border = w0 * np.exp(-(total * total) / (2.0 * sigma * sigma))
    border[foreground[window]] = 0.0  # the border term is for background pixels only
    out[window] += border.astype(np.float32)
    return out


def weight_maps(
    masks: np.ndarray,
    *,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: tuple[float, float] = (1.0, 1.0),
    name: str = "masks",
) -> np.ndarray:
    """Weight maps of a (N, H, W) stack of binary masks, float32 (N, H, W); slice i is named name[i]."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(
            f"{name}: weight_maps needs a (N, H, W) stack of masks, got shape {masks.shape}; "
            "use weight_map() for a single (H, W) slice."
        )
    out = np.empty(masks.shape, dtype=np.float32)
    for i, mask in enumerate(masks):
        out[i] = weight_map(mask, w0=w0, sigma=sigma, class_weights=class_weights, name=f"{name}[{i}]")
    return out


def class_weights_from_counts(
    n_foreground: int, n_total: int, method: str = "inverse_frequency"
) -> tuple[float, float]:
    """Class weights (background, foreground) from the training split's pixel counts.

    inverse_frequency: w_k proportional to 1 / freq_k, normalised so that the background weight is
    1.0; the foreground weight is then n_background / n_foreground (about 100 when 1% of the
    pixels are tumour). Background is the reference because it is the majority class, so the
    weights of most pixels, and the loss scale, stay as without balancing. sqrt_inverse_frequency:
    the square root of that ratio (about 10 instead of 100), a softened balance: with the full ratio
    beside a Dice term, short trainings over-segment (benchmarks/README.md). "none": (1.0, 1.0).
    """
    if method not in _METHODS:
        raise ValueError(f"class weights: unknown method {method!r}; use one of {_METHODS}.")
    if method == "none":
        return (1.0, 1.0)
    if not (0 <= n_foreground <= n_total) or n_total <= 0:
        raise ValueError(
            f"class weights: need 0 <= n_foreground <= n_total and n_total > 0, got "
            f"n_foreground={n_foreground}, n_total={n_total}; pass pixel counts of the training split."
        )
    n_background = n_total - n_foreground
    if n_foreground == 0 or n_background == 0:
        missing = "foreground" if n_foreground == 0 else "background"
        raise ValueError(
            f"class weights: the training split has no {missing} pixels "
            f"(n_foreground={n_foreground}, n_total={n_total}), so its inverse frequency is "
            "undefined; check the masks or use method='none'."
        )
    ratio = n_background / n_foreground
    return (1.0, ratio if method == "inverse_frequency" else float(np.sqrt(ratio)))


def class_weights_from_masks(
    masks: Iterable[np.ndarray], method: str = "inverse_frequency", name: str = "masks"
) -> tuple[float, float]:
    """Class weights from an iterable of binary masks (or a (N, H, W) stack), streamed one at a time."""
    if method not in _METHODS:
        raise ValueError(f"class weights: unknown method {method!r}; use one of {_METHODS}.")
    if method == "none":
        return (1.0, 1.0)
    n_foreground = 0
    n_total = 0
    for i, mask in enumerate(masks):
        foreground = _as_binary(mask, f"{name}[{i}]")
        n_foreground += int(np.count_nonzero(foreground))
        n_total += foreground.size
    logger.info("class weights from %d foreground of %d pixels", n_foreground, n_total)
    return class_weights_from_counts(n_foreground, n_total, method)
