"""LGG-like FLAIR hyperintensities grown in the white matter of a brain template.

A lesion lives in the template's own millimetre frame, so the patient's pose and warp carry it with
the anatomy. Its shape is one to three ellipsoidal lobes round a seed in white matter (sometimes a
small satellite apart from them), whose margin is roughened by smooth random fields scaled by
``irregularity`` (0: the lobes' smooth union; 1: deeply lobulated, infiltrative margins) and drawn
a little towards white matter. The field is thresholded at the level that gives the drawn volume
inside the parenchyma, so irregularity changes the shape and not the size: a cluster variable tied
to it plants a shape association and nothing else.

``lesion_field`` evaluates it on a box grid around the lesion: a soft occupancy (1 inside, 0
outside, a linear ramp over about ``RAMP_MM`` across the margin: partial volume; the mask is where
it is >= 0.5) and a heterogeneity field (unit variance) for the lesion's own texture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

GRID_MM = 1.5  # spacing of the box grid the lesion is computed on
RAMP_MM = 1.5  # width of the occupancy ramp across the margin
VOLUME_ML = (7.0, 150.0)  # log-uniform range of the drawn volumes
SATELLITE_PROBABILITY = 0.3
MIN_COMPONENT = 0.01  # components under this share of the volume are dropped (specks)
NOISE = ((0.40, 0.45), (0.16, 3.5))  # (amplitude, control spacing: share of radius or mm) x 2
WM_PULL = 0.2  # the field rises by this much from grey to white matter


@dataclass(frozen=True)
class LesionSpec:
    """One lesion in template voxel coordinates (i, j, k = x, y, z; 1 mm voxels)."""

    volume_ml: float
    lobes: tuple[tuple[float, ...], ...]  # (ci, cj, ck, ri, rj, rk, yaw, pitch, roll), mm and rad
    irregularity: float  # 0 smooth .. 1 very irregular margin
    flair_boost: float  # FLAIR over the patient's white matter, e.g. 0.3 = +30%
    t1_drop: float  # pre-contrast below white matter
    enhancement: float  # post-contrast over pre-contrast inside the lesion
    texture_seed: int


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rz(yaw) @ Ry(roll) @ Rx(pitch), a 3x3 float64 matrix acting on (x, y, z)."""
    cz, sz, cy, sy, cx, sx = (math.cos(yaw), math.sin(yaw), math.cos(roll), math.sin(roll),
                              math.cos(pitch), math.sin(pitch))
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return rz @ ry @ rx


def _direction(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(3)
    return v / max(float(np.linalg.norm(v)), 1e-9)


def draw_lesion(rng: np.random.Generator, seeds: np.ndarray, irregularity: float | None = None) -> LesionSpec:
    """A lesion round one of ``seeds`` ((N, 3) candidate white-matter voxels, i j k)."""
    u = rng.uniform
    volume = math.exp(u(math.log(VOLUME_ML[0]), math.log(VOLUME_ML[1])))
    radius = (3 * volume * 1000 / (4 * math.pi)) ** (1 / 3)  # mm, the equal-volume sphere
    centre = seeds[int(rng.integers(len(seeds)))].astype(float)
    lobes = []
    for n in range(int(rng.integers(1, 4))):
        axes = np.exp(rng.uniform(-0.25, 0.25, 3))
        axes /= axes.prod() ** (1 / 3)
        scale = radius if n == 0 else radius * u(0.5, 0.8)
        offset = np.zeros(3) if n == 0 else _direction(rng) * radius * u(0.55, 0.9)
        lobes.append((*(centre + offset), *(axes * scale), u(-math.pi, math.pi), u(-0.6, 0.6), u(-0.6, 0.6)))
    if rng.random() < SATELLITE_PROBABILITY:
        offset = _direction(rng) * radius * u(1.5, 2.0)
        size = radius * u(0.22, 0.35)
        lobes.append((*(centre + offset), size, size, size * u(0.8, 1.2), 0.0, 0.0, 0.0))
    drawn = u(0.0, 1.0)
    return LesionSpec(
        volume_ml=volume, lobes=tuple(tuple(float(v) for v in lobe) for lobe in lobes),
        irregularity=drawn if irregularity is None else float(irregularity),
        flair_boost=u(0.3, 0.6), t1_drop=u(0.12, 0.28), enhancement=u(0.0, 0.05),
        texture_seed=int(rng.integers(2**31)))


def bspline_matrix(positions: np.ndarray, first: float, spacing: float, n_nodes: int) -> np.ndarray:
    """(len(positions), n_nodes) cubic B-spline weights for nodes at ``first + spacing * j``, rows
    scaled to unit L2 norm so a field from standard-normal node values has unit variance."""
    t = (np.asarray(positions, np.float64)[:, None] - first) / spacing - np.arange(n_nodes)
    a = np.abs(t)
    w = np.where(a < 1, 2 / 3 - a**2 + a**3 / 2, np.where(a < 2, (2 - a) ** 3 / 6, 0.0))
    return w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)


def smooth_field(rng: np.random.Generator, axes: tuple[np.ndarray, ...], spacing: float) -> np.ndarray:
    """A smooth unit-variance random field on the grid ``axes`` (mm positions, one array an axis):
    cubic B-splines through normal values on nodes ``spacing`` apart, covering the grid."""
    mats = []
    for pos in axes:
        n = int(math.ceil((pos[-1] - pos[0]) / spacing)) + 3
        mats.append(bspline_matrix(pos, pos[0] - spacing, spacing, n))
    field = rng.standard_normal(tuple(m.shape[1] for m in mats)).astype(np.float32)
    # one axis at a time, (nodes...) -> (grid...); einsum, not BLAS: OpenBLAS's threads stall when
    # the cores are busy, and these products are small
    for spec, m in zip(("ia,abc->ibc", "jb,abc->ajc", "kc,abc->abk"), mats):
        field = np.einsum(spec, m.astype(np.float32), field)
    return field


@dataclass(frozen=True)
class LesionField:
    """The lesion on a box grid of ``spacing`` mm whose element [0, 0, 0] sits at ``origin``: (k, j, i)
    in the index space of the maps it was computed from; arrays indexed [k, j, i] (z, y, x)."""

    origin: np.ndarray
    spacing: float
    occupancy: np.ndarray  # float32 0..1, mask where >= 0.5
    texture: np.ndarray  # float32, unit variance


def _box(centres: np.ndarray, radii: np.ndarray, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest (k, j, i) of a grid round every lobe, with room for the margin noise."""
    reach = radii.max(axis=1, keepdims=True) * 1.35 + 6.0
    lo = np.maximum((centres - reach).min(axis=0), 0.0)
    hi = np.minimum((centres + reach).max(axis=0), np.array(shape, float) - 1)
    return lo, hi


def _lobe_field(spec: LesionSpec, centres: np.ndarray, grid: tuple[np.ndarray, ...]) -> np.ndarray:
    """max over lobes of 1 - (ellipsoidal radius): 1 at a lobe's centre, 0 on its surface."""
    k, j, i = np.meshgrid(*grid, indexing="ij")
    field = np.full(k.shape, -np.inf, np.float32)
    for lobe, centre in zip(spec.lobes, centres):
        rot = rotation(*lobe[6:9]).T  # template -> lobe frame
        d = [i - centre[2], j - centre[1], k - centre[0]]
        rho2 = sum(((rot[a, 0] * d[0] + rot[a, 1] * d[1] + rot[a, 2] * d[2]) / lobe[3 + a]) ** 2 for a in range(3))
        np.maximum(field, 1 - np.sqrt(rho2), out=field)
    return field


def _on_grid(volume: np.ndarray, grid: tuple[np.ndarray, ...]) -> np.ndarray:
    """``volume`` (uint8, [k, j, i]) at the axis-aligned grid ``grid`` (index positions, one array an
    axis), trilinear, as float32 0..1: three separable passes over a small sub-volume."""
    lower = [np.clip(np.floor(g).astype(np.int64), 0, n - 2) for g, n in zip(grid, volume.shape)]
    block = volume[tuple(slice(int(lo[0]), int(lo[-1]) + 2) for lo in lower)].astype(np.float32) / 255
    for axis, (g, lo) in enumerate(zip(grid, lower)):
        t = np.clip(g - lo, 0, 1).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(3)])
        i = lo - lo[0]
        block = np.take(block, i, axis=axis) * (1 - t) + np.take(block, i + 1, axis=axis) * t
    return block


def _threshold(field: np.ndarray, tissue: np.ndarray, voxels: float) -> float:
    """The level above which ``field`` holds ``voxels`` voxels of the parenchyma (tissue >= 0.5)."""
    values = field[tissue >= 0.5]
    if values.size == 0:
        return float(field.max())
    n = int(min(max(round(voxels), 1), values.size))
    return float(np.partition(values, values.size - n)[values.size - n])


def _drop_specks(inside: np.ndarray) -> np.ndarray:
    """``inside`` less its components under MIN_COMPONENT of the whole (the largest always stays)."""
    labels, count = ndi.label(inside)
    if count <= 1:
        return inside
    sizes = np.bincount(labels.ravel())[1:]
    keep = (sizes >= MIN_COMPONENT * sizes.sum()) | (sizes == sizes.max())
    return np.concatenate([[False], keep])[labels]


def _occupancy(field: np.ndarray, tissue: np.ndarray, volume_ml: float, radius: float) -> np.ndarray:
    """Soft occupancy: >= 0.5 exactly on the thresholded lesion (less specks), a linear ramp about
    RAMP_MM wide across its margin, 0 beyond two grid steps from it."""
    level = _threshold(field, tissue, volume_ml * 1000 / GRID_MM**3)
    inside = _drop_specks((field >= level) & (tissue >= 0.5))
    gradient = np.linalg.norm(np.stack(np.gradient(field, GRID_MM)), axis=0)
    edge = inside ^ ndi.binary_erosion(inside)
    slope = float(np.median(gradient[edge])) if edge.any() else 1.0 / radius
    soft = np.minimum(np.clip(0.5 + (field - level) / (RAMP_MM * max(slope, 1e-3)), 0, 1),
                      np.clip(0.5 + (tissue - 0.5) / 0.3, 0, 1))  # ramps at the lesion's and the brain's edge
    soft = np.where(ndi.binary_dilation(inside, iterations=2), soft, 0)
    return np.where(inside, np.maximum(soft, 0.5), np.minimum(soft, 0.499)).astype(np.float32)


def lesion_field(spec: LesionSpec, gm: np.ndarray, wm: np.ndarray, shift: tuple[float, float, float],
                 irregularity: float | None = None) -> LesionField:
    """``spec`` evaluated round itself. ``gm``, ``wm``: the template's probability maps (uint8
    0..255) indexed [k, j, i], where template voxel (i, j, k) sits at (k, j, i) + ``shift`` (k, j, i).
    ``irregularity`` overrides the spec's."""
    irr = spec.irregularity if irregularity is None else float(irregularity)
    lobes = np.array(spec.lobes, np.float64)
    centres = lobes[:, 2::-1] + np.asarray(shift, np.float64)  # (k, j, i) in the maps' index space
    lo, hi = _box(centres, lobes[:, 3:6], gm.shape)
    grid = tuple(np.arange(lo[a], hi[a] + GRID_MM / 2, GRID_MM) for a in range(3))  # k, j, i
    rng = np.random.default_rng(spec.texture_seed)
    radius = (3 * spec.volume_ml * 1000 / (4 * math.pi)) ** (1 / 3)
    (a1, s1), (a2, s2) = NOISE
    coarse = smooth_field(rng, grid, max(6.0, s1 * radius))
    fine = smooth_field(rng, grid, s2)
    texture = smooth_field(rng, grid, 3.0)  # drawn whatever irr is: the other draws never move
    gm_box, wm_box = _on_grid(gm, grid), _on_grid(wm, grid)
    field = _lobe_field(spec, centres, grid) + irr * (a1 * coarse + a2 * fine) + WM_PULL * (wm_box - 0.5)
    occupancy = _occupancy(field, gm_box + wm_box, spec.volume_ml, radius)
    used = [np.flatnonzero(occupancy.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
    crop = tuple(slice(max(int(u[0]) - 1, 0), int(u[-1]) + 2) if u.size else slice(0, 1) for u in used)
    origin = lo + np.array([c.start for c in crop]) * GRID_MM
    return LesionField(origin=origin, spacing=GRID_MM, occupancy=np.ascontiguousarray(occupancy[crop]),
                       texture=np.ascontiguousarray(texture[crop]))
