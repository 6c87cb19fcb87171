"""Shape features of one patient's tumour mask (Mazurowski et al., J Neurooncol 2017; Buda et al. 2019).

Every mask is a binary (S, H, W) volume (slices, rows, columns) or one (H, W) slice; spacing is in
mm in the same axis order (the LGG set publishes none: (1, 1, 1) gives voxel units).

- BEVR, bounding ellipsoid volume ratio (``bevr``): the volume of the largest 3-D connected
  component divided by the volume of its minimum-volume enclosing ellipsoid (MVEE). Components
  use face connectivity by default (``REFERENCE_CONNECTIVITY``, the evaluation protocol's).
  Each voxel is the box it covers, spacing[0] x spacing[1] x spacing[2] mm, and the ellipsoid
  encloses the corners of those boxes, i.e. the voxel solid itself: a cube of side a gives exactly
  2 / (pi sqrt 3) ~ 0.368; a digitised ball gives less than 1, rising towards it with the radius
  (its staircase surface pokes out: 0.79 at radius 10 voxels, 0.88 at 20); a single voxel or a
  single slice is a box, never a flat ellipsoid. The 2017 paper interpolates between slices;
  here each slice stands for a slab of its thickness (nearest-neighbour interpolation) and the
  spacing scales the corner points into mm. BEVR cannot depend on the spacing through that
  scaling, though: a per-axis scaling is an affine map, which carries the MVEE of the points onto
  the MVEE of their images and multiplies both volumes by the same factor. Spacing matters to
  ``volume_ml`` and, in-plane, to MF and ASD; an interpolation between slices would change BEVR
  only through the shape it gives the solid.
- MF, margin fluctuation, and ASD, angular standard deviation (``margin_fluctuation``,
  ``angular_std``): on the slice with the most tumour pixels (``largest_slice``), the outline of
  the largest 2-D component (face connectivity, holes filled) is traced in order by marching
  squares at level 0.5 (``skimage.measure.find_contours``) and resampled to equal arc-length steps
  in mm, as many points as the trace has. The distances from the component's centroid (the mean
  of its pixel centres) to those points are divided by their mean. MF is the standard deviation
  (ddof 0) of the distances minus their circular moving average over a window of 10% of the
  points (made odd, centred); ASD is the mean, over the non-empty bins among 10 equal angular bins
  around the centroid, of the standard deviation (ddof 0) of the distances in each bin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull
from scipy.special import gammaln
from skimage import measure

from unet.errors import InputError
from unet.metrics import REFERENCE_CONNECTIVITY, largest_component_3d

__all__ = [
    "DEFAULT_TOL",
    "Ellipsoid",
    "angular_std",
    "bevr",
    "khachiyan",
    "largest_slice",
    "margin_fluctuation",
    "outline",
    "patient_features",
    "voxel_corners",
]

DEFAULT_TOL = 1e-4
_CORNERS = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)])


# ---------------------------------------------------------------- inputs


def _binary(name: str, mask: Any, ndim: int) -> np.ndarray:
    """``mask`` as a bool array of ``ndim`` dimensions; InputError saying what to fix otherwise."""
    array = np.asarray(mask)
    shape = "(S, H, W) volume" if ndim == 3 else "(H, W) slice"
    if array.ndim != ndim:
        raise InputError(f"{name}: expected one {shape}, got shape {array.shape}; pass one patient's mask.")
    if array.dtype == bool:
        return array
    if not np.isin(array, (0, 1)).all():
        values = np.unique(array)[:5].tolist()
        raise InputError(
            f"{name}: expected a binary mask of 0 and 1, got values {values}...; divide 0/255 masks by 255."
        )
    return array.astype(bool)


def _spacing(spacing: Sequence[float], n: int) -> tuple[float, ...]:
    """``spacing`` as ``n`` finite sizes > 0 in mm; InputError otherwise."""
    values = tuple(float(s) for s in spacing)
    if len(values) != n or not all(math.isfinite(s) and s > 0 for s in values):
        order = "(slice, row, column)" if n == 3 else "(row, column)"
        raise InputError(
            f"spacing must be {n} finite sizes > 0 in mm, {order} order, got {tuple(spacing)!r}; "
            "use 1.0 each for voxel units (the LGG set publishes no spacing)."
        )
    return values


def _check_connectivity(connectivity: int) -> None:
    if connectivity not in (1, 2, 3):
        raise InputError(
            f"connectivity must be 1 (faces, the reference protocol), 2 (faces and edges) or 3 (full), "
            f"got {connectivity!r}."
        )


# ---------------------------------------------------------------- minimum-volume enclosing ellipsoid


class Ellipsoid(NamedTuple):
    """The ellipsoid {x : (x - centre)^T matrix (x - centre) <= 1}."""

    centre: np.ndarray
    matrix: np.ndarray

    @property
    def volume(self) -> float:
        """pi^(d/2) / Gamma(d/2 + 1) (the unit d-ball) / sqrt(det matrix): (4/3) pi / sqrt(det A) in 3-D."""
        d = len(self.centre)
        unit_ball = math.exp(0.5 * d * math.log(math.pi) - gammaln(0.5 * d + 1.0))
        return unit_ball / math.sqrt(float(np.linalg.det(self.matrix)))

    def contains(self, points: np.ndarray, tol: float = 0.0) -> np.ndarray:
        """Per point: (x - centre)^T matrix (x - centre) <= 1 + tol."""
        offset = np.atleast_2d(points) - self.centre
        return np.einsum("ij,jk,ik->i", offset, self.matrix, offset) <= 1.0 + tol


def _extreme_points(points: np.ndarray) -> np.ndarray:
    """The vertices of the convex hull of ``points`` (the MVEE of a set is that of its hull)."""
    if points.shape[1] == 1:
        return points[[int(np.argmin(points[:, 0])), int(np.argmax(points[:, 0]))]]
    if len(points) <= points.shape[1] + 1:
        return points
    return points[ConvexHull(points).vertices]


def _mvee_weights(points: np.ndarray, tol: float, max_iter: int) -> np.ndarray:
    """Khachiyan's weights u on the points, with Todd and Yildirim's away steps, to tolerance ``tol``.

    Lift each point to q = (x, 1); with X = sum u_i q_i q_i^T and m_i = q_i^T X^-1 q_i, the weights
    are optimal when every m_i <= d + 1, with equality where u_i > 0. Each step moves weight
    towards the point with the largest m (or away from the supported point with the smallest),
    by the step that maximises log det X; it stops when max m <= (d + 1)(1 + tol) and every
    supported m >= (d + 1)(1 - tol).
    """
    n, d = points.shape
    lifted = np.column_stack([points, np.ones(n)])
    u = np.full(n, 1.0 / n)
    for _ in range(max_iter):
        inverse = np.linalg.inv(lifted.T @ (u[:, None] * lifted))
        m = np.einsum("ij,jk,ik->i", lifted, inverse, lifted)
        up = int(np.argmax(m))
        down = int(np.flatnonzero(u > 0)[np.argmin(m[u > 0])])
        gain, loss = m[up] / (d + 1) - 1.0, 1.0 - m[down] / (d + 1)
        if max(gain, loss) <= tol:
            return u
        j = up if gain >= loss else down
        step = (m[j] - (d + 1)) / ((d + 1) * (m[j] - 1.0))
        drop = j == down and gain < loss and step <= -u[j] / (1.0 - u[j])
        step = -u[j] / (1.0 - u[j]) if drop else step
        u *= 1.0 - step
        u[j] = 0.0 if drop else u[j] + step
    raise InputError(
        f"khachiyan: no convergence to tol={tol!r} within {max_iter} iterations on {n} points; "
        "raise tol (1e-4 is ample for a volume ratio) or max_iter."
    )


def khachiyan(points: Any, tol: float = DEFAULT_TOL, *, max_iter: int = 100_000) -> Ellipsoid:
    """The minimum-volume enclosing ellipsoid of ``points`` (n, d), by Khachiyan's algorithm.

    The solver runs on the convex hull's vertices (same ellipsoid, far fewer points) and stops at
    relative tolerance ``tol`` (``_mvee_weights``). From the weights u: centre c = sum u_i x_i and
    A = (sum u_i (x_i - c)(x_i - c)^T)^-1 / d; A is then scaled so that the farthest point lies
    on the surface, so the ellipsoid always encloses every point, and its volume exceeds the
    minimum by a factor that goes to 1 with ``tol`` (measured in 3-D: under 1 + 1.5 tol).
    """
    array = np.asarray(points, dtype=float)
    if array.ndim != 2 or not np.isfinite(array).all():
        raise InputError(f"khachiyan: expected an (n, d) array of finite coordinates, got shape {array.shape}.")
    n, d = array.shape
    offset = array - array.mean(axis=0)
    rank = int(np.linalg.matrix_rank(offset)) if n > 1 else 0
    if d == 0 or rank < d:
        raise InputError(
            f"khachiyan: the {n} points span {rank} of {d} dimensions, so their enclosing ellipsoid is flat; "
            "give each voxel its extent (its corner points, see voxel_corners)."
        )
    if not (math.isfinite(tol) and tol > 0):
        raise InputError(f"khachiyan: tol must be a finite number > 0, got {tol!r}; 1e-4 is the default.")
    centre0 = array.mean(axis=0)
    hull = _extreme_points(array - centre0)
    u = _mvee_weights(hull, tol, max_iter)
    centre = u @ hull
    scatter = (hull - centre).T @ ((hull - centre) * u[:, None])
    matrix = np.linalg.inv(scatter) / d
    farthest = float(np.max(np.einsum("ij,jk,ik->i", hull - centre, matrix, hull - centre)))
    return Ellipsoid(centre=centre + centre0, matrix=matrix / farthest)


# ---------------------------------------------------------------- BEVR


def voxel_corners(mask: Any, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """The distinct corner points, in mm, of the surface voxels of a (S, H, W) mask: (m, 3).

    Voxel (s, r, c) is the box [s, s+1] x [r, r+1] x [c, c+1] scaled by ``spacing``. Surface voxels
    (a face neighbour outside the mask or the array) suffice: an inner voxel's corners are corners
    of its neighbours too, so the convex hull, and the enclosing ellipsoid, are the voxel solid's.
    """
    volume = _binary("mask", mask, 3)
    sizes = np.array(_spacing(spacing, 3))
    inner = ndimage.binary_erosion(volume, structure=ndimage.generate_binary_structure(3, 1), border_value=0)
    surface = np.argwhere(volume & ~inner)
    corners = np.unique((surface[:, None, :] + _CORNERS[None, :, :]).reshape(-1, 3), axis=0)
    return corners * sizes


def bevr(
    mask: Any,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    connectivity: int = REFERENCE_CONNECTIVITY,
    tol: float = DEFAULT_TOL,
) -> float:
    """Bounding ellipsoid volume ratio of the largest 3-D component: its volume / its MVEE's volume.

    Volume = voxel count x prod(spacing); the MVEE (``khachiyan`` at ``tol``) encloses the corners
    of its voxels in mm (``voxel_corners``), so 0 < BEVR <= 1 up to ``tol``. ``connectivity`` 1 is
    face connectivity (6 neighbours, the default), 3 full (26). InputError on an empty mask.
    """
    _check_connectivity(connectivity)
    volume = _binary("mask", mask, 3)
    sizes = _spacing(spacing, 3)
    component = largest_component_3d(volume, connectivity=connectivity).astype(bool)
    if not component.any():
        raise InputError("bevr: the mask is empty, so there is no tumour to measure; patient_features gives NaN.")
    solid = float(np.count_nonzero(component)) * math.prod(sizes)
    return solid / khachiyan(voxel_corners(component, sizes), tol).volume


# ---------------------------------------------------------------- MF and ASD


def largest_slice(mask: Any) -> int:
    """Index of the slice (axis 0) with the most tumour pixels; the first of equal ones."""
    volume = _binary("mask", mask, 3)
    areas = volume.reshape(len(volume), -1).sum(axis=1)
    if not areas.any():
        raise InputError("largest_slice: the mask is empty, so no slice has tumour; check mask.any() first.")
    return int(np.argmax(areas))


def _largest_component_2d(mask2d: np.ndarray) -> np.ndarray:
    """The largest face-connected component of a slice, its holes filled (background 8-connected)."""
    labels, count = ndimage.label(mask2d, structure=ndimage.generate_binary_structure(2, 1))
    if count == 0:
        raise InputError("the slice is empty: no outline to trace; pick a slice with tumour (largest_slice).")
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    component = labels == int(np.argmax(sizes))
    return ndimage.binary_fill_holes(component, structure=np.ones((3, 3), dtype=bool))


def _resample_closed(points: np.ndarray, count: int) -> np.ndarray:
    """``count`` points at equal arc-length steps along the closed polygon ``points`` (first one kept)."""
    closed = np.vstack([points, points[:1]])
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(closed, axis=0), axis=1))])
    at = np.linspace(0.0, arc[-1], count, endpoint=False)
    return np.column_stack([np.interp(at, arc, closed[:, axis]) for axis in range(points.shape[1])])


def outline(mask2d: Any, spacing2d: Sequence[float] = (1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """The ordered outline (m, 2) in mm of a slice's largest component, and that component's centroid.

    Marching squares at 0.5 on the zero-padded component (``find_contours``; its longest contour),
    resampled to as many points at equal arc-length steps in mm; the centroid is the mean of the
    component's pixel centres, in mm, (row, column) order like the outline.
    """
    component = _largest_component_2d(_binary("mask2d", mask2d, 2))
    sizes = np.array(_spacing(spacing2d, 2))
    contours = measure.find_contours(np.pad(component, 1).astype(float), 0.5)
    trace = max(contours, key=len) - 1.0  # back to unpadded pixel coordinates
    if len(trace) > 1 and np.allclose(trace[0], trace[-1]):
        trace = trace[:-1]
    centroid = np.argwhere(component).mean(axis=0) * sizes
    return _resample_closed(trace * sizes, len(trace)), centroid


def _radial_profile(mask2d: Any, spacing2d: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Centroid-to-outline distances divided by their mean, and the angle of each point (radians)."""
    points, centroid = outline(mask2d, spacing2d)
    offset = points - centroid
    distance = np.hypot(offset[:, 0], offset[:, 1])
    return distance / distance.mean(), np.arctan2(offset[:, 0], offset[:, 1])


def margin_fluctuation(mask2d: Any, spacing2d: Sequence[float] = (1.0, 1.0), *, window: float = 0.1) -> float:
    """MF: std (ddof 0) of the normalised radial distances minus their circular moving average.

    The moving average is centred, over ``window`` (a fraction, 10% by default) of the outline's
    points, rounded and made odd (at least 1 point); see the module docstring for the distances.
    """
    if not (0.0 < window <= 1.0):
        raise InputError(f"margin_fluctuation: window is a fraction of the outline in (0, 1], got {window!r}.")
    distance, _ = _radial_profile(mask2d, spacing2d)
    width = max(1, int(round(window * len(distance))))
    width += 1 - width % 2
    half = width // 2
    padded = np.concatenate([distance[-half:] if half else distance[:0], distance, distance[:half]])
    smooth = np.convolve(padded, np.full(width, 1.0 / width), mode="valid")
    return float(np.std(distance - smooth))


def angular_std(mask2d: Any, spacing2d: Sequence[float] = (1.0, 1.0), *, bins: int = 10) -> float:
    """ASD: mean over non-empty angular bins of the std (ddof 0) of the normalised radial distances.

    ``bins`` equal sectors of [-pi, pi) around the centroid (10 by default); a sector that no
    outline point falls in (possible when the centroid lies outside the shape) is left out.
    """
    if int(bins) != bins or bins < 1:
        raise InputError(f"angular_std: bins must be a whole number >= 1, got {bins!r}; the paper uses 10.")
    distance, angle = _radial_profile(mask2d, spacing2d)
    sector = np.minimum(((angle + math.pi) / (2 * math.pi) * bins).astype(int), int(bins) - 1)
    spreads = [float(np.std(distance[sector == k])) for k in range(int(bins)) if np.any(sector == k)]
    return float(np.mean(spreads))


# ---------------------------------------------------------------- one patient


def patient_features(
    mask: Any,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    connectivity: int = REFERENCE_CONNECTIVITY,
    tol: float = DEFAULT_TOL,
) -> dict[str, Any]:
    """BEVR, MF, ASD and the counts around them for one (S, H, W) mask; NaN, never an error, if empty.

    Keys: ``bevr``; ``mf`` and ``asd`` on ``largest_slice`` of the mask as given (with in-plane
    spacing ``spacing[1:]``); ``volume_ml``, all tumour voxels x prod(spacing) / 1000;
    ``n_components``, 3-D components at ``connectivity``; ``largest_slice``; ``empty``. An empty
    mask (e.g. a prediction that found nothing) gives NaN shape features, volume 0.0, 0
    components, ``largest_slice`` None and ``empty`` True.
    """
    _check_connectivity(connectivity)
    volume = _binary("mask", mask, 3)
    sizes = _spacing(spacing, 3)
    _, count = ndimage.label(volume, structure=ndimage.generate_binary_structure(3, connectivity))
    volume_ml = float(np.count_nonzero(volume)) * math.prod(sizes) / 1000.0
    if count == 0:
        return {"bevr": math.nan, "mf": math.nan, "asd": math.nan, "volume_ml": 0.0,
                "n_components": 0, "largest_slice": None, "empty": True}
    index = largest_slice(volume)
    return {
        "bevr": bevr(volume, sizes, connectivity=connectivity, tol=tol),
        "mf": margin_fluctuation(volume[index], sizes[1:]),
        "asd": angular_std(volume[index], sizes[1:]),
        "volume_ml": volume_ml,
        "n_components": int(count),
        "largest_slice": index,
        "empty": False,
    }
