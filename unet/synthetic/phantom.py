"""A brain-MRI phantom: one patient's volume as three sequences and a FLAIR-abnormality mask.

The head is an ellipsoid whose cross-section shrinks towards the first and last slices. Inside it,
in order outwards from the centre: white and grey matter mixed by a smooth random field, two
lateral ventricles (CSF: dark in every channel, FLAIR included), a thin CSF rim, dark bone and a
bright scalp. The tumour is an ellipsoid with a lumpy boundary (radius modulated by a smooth 3-D
field) spanning consecutive middle slices: clearly bright in FLAIR, mild in pre/post-contrast. A
smooth multiplicative bias field and Rician noise finish each slice.

Everything random about a patient is drawn once into a small ``PhantomSpec`` (``draw_spec``);
``render_volume`` turns a spec into uint8 arrays, deterministically, at any image size. Work is
vectorised per slice so that the temporaries stay in cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PRE, FLAIR, POST = 0, 1, 2
# Intensities (pre-contrast, FLAIR, post-contrast) on a 0..1 scale before bias, gain and noise.
SCALP = np.array([0.80, 0.55, 0.85], np.float32)
BONE = np.array([0.08, 0.06, 0.10], np.float32)
CSF = np.array([0.18, 0.08, 0.20], np.float32)
GREY = np.array([0.40, 0.46, 0.44], np.float32)
WHITE = np.array([0.53, 0.36, 0.55], np.float32)
# Radii of the head layers, as fractions of the head ellipse: brain < CSF rim < bone < scalp.
BRAIN_R, CSF_R, BONE_R = 0.80, 0.84, 0.89
MISSING_PROBABILITY = 0.2  # share of patients with one sequence missing (FLAIR fills its channel)
SMALL_TUMOUR_PROBABILITY = 0.15  # share with a small tumour seen in only a few slices
MIN_TUMOUR_PX = 2.5  # in-plane semi-axis floor, so a tumour survives tiny image sizes
MIN_TUMOUR_SLICES = 1.0  # through-plane semi-axis floor, in slices


@dataclass(frozen=True)
class PhantomSpec:
    """One patient, in size-free units: head-ellipse coordinates (the head's half-axes are 1)
    in-plane, slices through-plane. ``texture_seed`` drives texture, bias and noise."""

    n_slices: int
    head_axes: tuple[float, float]  # half-axes (x, y) as fractions of half the image
    head_centre: tuple[float, float]  # offset from the image centre, fractions of half the image
    head_angle: float  # radians
    head_taper: tuple[float, float]  # ellipsoid z half-axis beyond the first/last slice (> 1)
    outline: tuple[float, float, float, float]  # amplitude/phase of the 2nd and 3rd harmonics
    ventricles: tuple[float, float, float]  # z centre (-1..1), z half-extent, x separation
    tumour_centre: tuple[float, float, float]  # head coords x, y and slice index (0-based)
    tumour_axes: tuple[float, float, float]  # head-coord half-axes x, y, and slices
    tumour_lumps: float  # boundary radius varies by +- this fraction
    tumour_intensity: tuple[float, float, float]  # pre, FLAIR, post
    satellites: tuple[tuple[float, ...], ...]  # small lesions beside the tumour: x, y, z, rx, ry, rz
    missing_channel: int | None  # PRE or POST filled with FLAIR, or None
    gains: tuple[float, float, float]
    bias: tuple[float, float, float, float, float, float]  # u, v, u^2, v^2, uv, z coefficients
    noise_sigma: float
    texture_seed: int


def slice_count(rng: np.random.Generator, min_slices: int, max_slices: int) -> int:
    """Skewed towards ``min_slices`` like the real set (20..88, mean 36)."""
    return min_slices + int(round((max_slices - min_slices) * rng.random() ** 3.3))


def draw_spec(rng: np.random.Generator, n_slices: int) -> PhantomSpec:
    """Draw one patient's anatomy, tumour and acquisition from ``rng``."""
    u = rng.uniform
    small = rng.random() < SMALL_TUMOUR_PROBABILITY
    z_rel = u(-0.25, 0.3)  # tumour centre in -1..1 through the volume
    taper = (u(1.1, 1.35), u(1.03, 1.12))
    scale = math.sqrt(1.0 - (z_rel / (taper[0] if z_rel < 0 else taper[1])) ** 2)
    distance = u(0.1, 0.5) * BRAIN_R * scale
    direction = u(0.0, 2 * math.pi)
    if small:
        axes = (u(0.06, 0.12), u(0.06, 0.12), u(0.02, 0.06) * n_slices)
    else:
        axes = (u(0.13, 0.3), u(0.13, 0.3), u(0.11, 0.25) * n_slices)
    missing = (PRE, POST)[int(rng.integers(2))] if rng.random() < MISSING_PROBABILITY else None
    return PhantomSpec(
        n_slices=n_slices,
        head_axes=(u(0.66, 0.76), u(0.8, 0.9)),
        head_centre=(u(-0.04, 0.04), u(-0.05, 0.05)),
        head_angle=u(-0.15, 0.15),
        head_taper=taper,
        outline=(u(0.0, 0.03), u(0, 2 * math.pi), u(0.0, 0.02), u(0, 2 * math.pi)),
        ventricles=(u(0.0, 0.2), u(0.2, 0.3), u(0.08, 0.14)),
        tumour_centre=(distance * math.cos(direction), distance * math.sin(direction),
                       (z_rel + 1) / 2 * n_slices - 0.5),
        tumour_axes=axes,
        tumour_lumps=u(0.15, 0.3),
        tumour_intensity=(u(0.3, 0.38), u(0.78, 0.92), u(0.4, 0.55)),
        missing_channel=missing,
        gains=(u(0.85, 1.0), u(0.85, 1.0), u(0.85, 1.0)),
        bias=(*rng.normal(0.0, 0.08, 5).tolist(), float(rng.normal(0.0, 0.06))),
        noise_sigma=u(0.008, 0.014),
        texture_seed=int(rng.integers(2**31)),
        satellites=_satellites(rng, (distance * math.cos(direction), distance * math.sin(direction),
                                     (z_rel + 1) / 2 * n_slices - 0.5), axes, small),
    )


def _satellites(rng: np.random.Generator, centre: tuple[float, float, float], axes: tuple[float, float, float],
                small: bool) -> tuple[tuple[float, ...], ...]:
    """Up to two small lesions a little apart from the main tumour (drawn last, so the rest of a
    patient's draw is unchanged): slices with two or more objects, where the weight maps' border
    term lives, as in the real set."""
    count = 0 if small else int(rng.choice([0, 0, 1, 2]))
    lesions = []
    for _ in range(count):
        angle = rng.uniform(0, 2 * math.pi)
        gap = rng.uniform(1.3, 1.8) * max(axes[0], axes[1])
        radius = rng.uniform(0.25, 0.45) * min(axes[0], axes[1])
        lesions.append((centre[0] + gap * math.cos(angle), centre[1] + gap * math.sin(angle),
                        centre[2] + rng.uniform(-0.3, 0.3) * axes[2], radius, radius,
                        rng.uniform(0.4, 0.7) * axes[2]))
    return tuple(lesions)


def _spline_weights(n: int, nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Cubic B-spline interpolation from ``nodes`` control values to ``n`` points.

    Returns (n, 4) node indices and (n, 4) weights; rows are scaled to unit L2 norm, so a field
    interpolated from standard-normal nodes has (nearly) unit variance everywhere.
    """
    position = 1 + (nodes - 3) * (np.arange(n) + 0.5) / n  # in node units, inside 1..nodes-2
    base = np.floor(position).astype(np.int64)
    t = position - base
    weights = np.stack([(1 - t) ** 3, 3 * t**3 - 6 * t**2 + 4, -3 * t**3 + 3 * t**2 + 3 * t + 1, t**3], 1)
    weights /= np.linalg.norm(weights, axis=1, keepdims=True)
    return base[:, None] + np.arange(-1, 3), weights.astype(np.float32)


class _SmoothField:
    """A smooth 3-D Gaussian random field of unit variance, (size, size) a slice.

    Cubic B-splines through a coarse grid of normal values, separably: each output pixel reads
    four rows, so no dense matrix product (OpenBLAS's threading costs more than such small
    products) and no large temporary. Slices ``first..last-1`` only, to spare unused work.
    """

    def __init__(self, rng: np.random.Generator, n_slices: int, size: int, nodes_xy: int,
                 nodes_z: int, first: int = 0, last: int | None = None):
        nodes = rng.standard_normal((max(4, nodes_z), max(4, nodes_xy), max(4, nodes_xy)))
        iz, wz = (a[first:last] for a in _spline_weights(n_slices, len(nodes)))
        self.index, self.weights = _spline_weights(size, nodes.shape[1])  # same for y and x
        planes = np.einsum("zt,ztyx->zyx", wz, nodes[iz].astype(np.float32))  # (z, ny, nx)
        self.rows = np.einsum("xt,zyxt->zyx", self.weights, planes[:, :, self.index])  # (z, ny, size)
        self.first = first

    def slice(self, k: int, box: tuple[slice, slice] = (slice(None), slice(None))) -> np.ndarray:
        """Slice ``k`` of the field, only the pixels in ``box`` (rows, columns)."""
        rows = self.rows[k - self.first][:, box[1]]  # (ny, w)
        w, i = self.weights[box[0]], self.index[box[0]]  # (h, 4) each
        return (w[:, 0:1] * rows[i[:, 0]] + w[:, 1:2] * rows[i[:, 1]]
                + w[:, 2:3] * rows[i[:, 2]] + w[:, 3:4] * rows[i[:, 3]])


def _ramp(x: np.ndarray, width: float) -> np.ndarray:
    """0 below -width/2, 1 above +width/2, linear between: an anti-aliased step."""
    return np.clip(x / width + 0.5, 0.0, 1.0)


class _Geometry:
    """Per-patient in-plane coordinates, computed once and reused for every slice."""

    def __init__(self, spec: PhantomSpec, size: int):
        half = size / 2
        coords = (np.arange(size, dtype=np.float32) - (size - 1) / 2) / half
        v, u = np.meshgrid(coords, coords, indexing="ij")  # rows (y), columns (x)
        u, v = u - spec.head_centre[0], v - spec.head_centre[1]
        cos, sin = math.cos(spec.head_angle), math.sin(spec.head_angle)
        self.hx = (cos * u + sin * v) / spec.head_axes[0]  # head coordinates: ellipse -> unit disc
        self.hy = (-sin * u + cos * v) / spec.head_axes[1]
        angle = np.arctan2(self.hy, self.hx)
        a2, p2, a3, p3 = spec.outline
        wobble = 1 + a2 * np.cos(2 * angle + p2) + a3 * np.cos(3 * angle + p3)
        self.rho = (np.hypot(self.hx, self.hy) / wobble).astype(np.float32)
        self.px = half * min(spec.head_axes)  # pixels per head unit (the shorter axis)
        b = spec.bias
        self.bias = np.exp(b[0] * u + b[1] * v + b[2] * u * u + b[3] * v * v + b[4] * u * v)
        n = spec.n_slices
        self.z = 2 * (np.arange(n) + 0.5) / n - 1  # slice centres in -1..1
        taper = np.where(self.z < 0, spec.head_taper[0], spec.head_taper[1])
        self.scale = np.sqrt(1 - (self.z / taper) ** 2)  # head cross-section per slice
        # Per-slice scalars as Python floats: a NumPy float64 scalar would promote the float32
        # planes to float64 and double the cost of every operation.
        self.z, self.scale = self.z.tolist(), self.scale.tolist()
        self.bias = self.bias.astype(np.float32)
        self.edge = 1.5 / self.px  # anti-aliasing width of the layer boundaries, in head units
        self._row_min, self._col_min = self.rho.min(axis=1), self.rho.min(axis=0)

    def head_box(self, k: int) -> tuple[slice, slice] | None:
        """Rows and columns that hold any of the head at slice ``k``; None when it is empty."""
        limit = self.scale[k] * (1 + self.edge)
        rows = np.flatnonzero(self._row_min < limit)
        cols = np.flatnonzero(self._col_min < limit)
        if rows.size == 0 or cols.size == 0:
            return None
        return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _tumour(spec: PhantomSpec, geo: _Geometry, rng: np.random.Generator) -> list[np.ndarray | None]:
    """Per slice, the tumour's soft occupancy (0..1, mask where >= 0.5) or None.

    Lumps can leave a stray cross-section off the main body; only the run of consecutive slices
    holding the largest cross-section is kept, so the tumour always spans consecutive slices.
    """
    tx, ty, tz = spec.tumour_centre
    rx = max(spec.tumour_axes[0], MIN_TUMOUR_PX / geo.px)
    ry = max(spec.tumour_axes[1], MIN_TUMOUR_PX / geo.px)
    rz = max(spec.tumour_axes[2], MIN_TUMOUR_SLICES)
    reach = rz * (1 + spec.tumour_lumps)
    first = min(spec.n_slices - 1, max(0, math.floor(tz - reach)))
    last = max(first + 1, min(spec.n_slices, math.ceil(tz + reach) + 1))
    lumps = _SmoothField(rng, spec.n_slices, len(geo.rho), 20, max(4, spec.n_slices // 3), first, last)
    in_plane = ((geo.hx - tx) / rx) ** 2 + ((geo.hy - ty) / ry) ** 2
    edge = 1.5 / (geo.px * min(rx, ry))  # 1.5 px in units of the normalised tumour radius
    occupancy: list[np.ndarray | None] = [None] * spec.n_slices
    for k in range(first, last):
        radius = np.sqrt(in_plane + ((k - tz) / rz) ** 2)
        boundary = 1 + spec.tumour_lumps * np.clip(lumps.slice(k), -1.0, 1.0)
        inside = _ramp(boundary - radius, edge)
        for sx, sy, sz, srx, sry, srz in spec.satellites:
            srx, sry = max(srx, MIN_TUMOUR_PX / geo.px), max(sry, MIN_TUMOUR_PX / geo.px)
            satellite = np.sqrt(((geo.hx - sx) / srx) ** 2 + ((geo.hy - sy) / sry) ** 2 + ((k - sz) / max(srz, 0.5)) ** 2)
            inside = np.maximum(inside, _ramp(1 - satellite, 1.5 / (geo.px * min(srx, sry))))
        inside *= _ramp(BRAIN_R - geo.rho / geo.scale[k], 0.02)  # tumour stays in the brain
        occupancy[k] = inside if (inside >= 0.5).any() else None
    areas = [0 if t is None else int((t >= 0.5).sum()) for t in occupancy]
    if max(areas) > 0:
        lo = hi = int(np.argmax(areas))
        while lo > 0 and areas[lo - 1] > 0:
            lo -= 1
        while hi < spec.n_slices - 1 and areas[hi + 1] > 0:
            hi += 1
        occupancy = [t if lo <= k <= hi else None for k, t in enumerate(occupancy)]
    return occupancy


class _RicianNoise:
    """Rician noise, |signal + complex Gaussian|, from one noise bank per patient read at a random
    offset per slice and channel: drawing 6 normals per pixel would dominate the run time."""

    def __init__(self, rng: np.random.Generator, spec: PhantomSpec, size: int):
        pad = max(1, size // 2)
        self.size = size
        self.bank = rng.standard_normal((2, size + pad, size + pad), dtype=np.float32) * spec.noise_sigma
        self.offsets = rng.integers(0, pad + 1, (spec.n_slices, 3, 2)).tolist()
        self.gains = [255 * g for g in spec.gains]
        rayleigh = np.hypot(self.bank[0], self.bank[1])  # the noise where the signal is zero
        self.background = [_to_uint8(rayleigh * g) for g in self.gains]

    def _window(self, k: int, c: int) -> tuple[slice, slice]:
        y, x = self.offsets[k][c]
        return slice(y, y + self.size), slice(x, x + self.size)

    def empty(self, k: int, c: int) -> np.ndarray:
        """A slice channel with no signal, as uint8."""
        return self.background[c][self._window(k, c)]

    def add(self, signal: np.ndarray, k: int, c: int, box: tuple[slice, slice]) -> np.ndarray:
        """``signal`` (the ``box`` of slice ``k``, channel ``c``) with noise, as uint8."""
        real = self.bank[0][self._window(k, c)][box] + signal
        imag = self.bank[1][self._window(k, c)][box]
        return _to_uint8(np.sqrt(real * real + imag * imag) * self.gains[c])


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def _signal(spec: PhantomSpec, geo: _Geometry, k: int, box: tuple[slice, slice],
            fields: tuple[_SmoothField, _SmoothField], tumour: np.ndarray | None) -> np.ndarray:
    """The noise-free (3, h, w) signal of slice ``k`` inside ``box``, bias field applied."""
    rho = geo.rho[box] / geo.scale[k]  # 3-D ellipsoid radius at this slice
    head = _ramp(1 - rho, geo.edge)
    bone_in = _ramp(BONE_R - rho, geo.edge)
    csf_in = _ramp(CSF_R - rho, geo.edge)
    brain = _ramp(BRAIN_R - rho, geo.edge)
    coarse, detail = fields[0].slice(k, box), fields[1].slice(k, box)
    grey = np.clip(3.5 * (rho - 0.62) + 0.3 * coarse + 0.45 * detail + 0.3, 0, 1)
    ventricle = np.zeros_like(rho)
    vz, vhz, vsep = spec.ventricles
    dz = ((geo.z[k] - vz) / vhz) ** 2
    if dz < 1:
        hx, hy = geo.hx[box], geo.hy[box]
        for side in (-1, 1):
            ellipse = ((hx - side * vsep) / 0.09) ** 2 + ((hy + 0.05) / 0.3) ** 2 + dz
            np.maximum(ventricle, _ramp(1 - ellipse, 0.3), out=ventricle)
    bias = geo.bias[box] * math.exp(spec.bias[5] * geo.z[k])
    scalp, bone, rim = (head - bone_in) * bias, (bone_in - csf_in) * bias, (csf_in - brain) * bias
    brain *= bias
    signal = np.empty((3, *rho.shape), np.float32)
    for c in range(3):
        tissue = WHITE[c] + (GREY[c] - WHITE[c]) * grey
        tissue += (CSF[c] - tissue) * ventricle
        if tumour is not None:
            lesion = spec.tumour_intensity[c]
            if c == FLAIR:
                lesion = lesion * (1 + 0.05 * detail)
            tissue += (lesion - tissue) * tumour[box]
        signal[c] = SCALP[c] * scalp + BONE[c] * bone + CSF[c] * rim + tissue * brain
    return signal


def render_volume(spec: PhantomSpec, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (Z, size, size, 3) uint8 [pre, FLAIR, post] and masks (Z, size, size) uint8 0/255."""
    rng = np.random.default_rng(spec.texture_seed)
    geo = _Geometry(spec, size)
    fields = (_SmoothField(rng, spec.n_slices, size, 6, 4),
              _SmoothField(rng, spec.n_slices, size, 28, max(4, spec.n_slices // 3)))
    occupancy = _tumour(spec, geo, rng)
    noise = _RicianNoise(rng, spec, size)
    images = np.empty((spec.n_slices, size, size, 3), np.uint8)
    masks = np.zeros((spec.n_slices, size, size), np.uint8)
    for k in range(spec.n_slices):
        for c in range(3):
            images[k, :, :, c] = noise.empty(k, c)
        box = geo.head_box(k)
        if box is not None:
            signal = _signal(spec, geo, k, box, fields, occupancy[k])
            for c in range(3):
                images[k][box][..., c] = noise.add(signal[c], k, c, box)
        if occupancy[k] is not None:
            masks[k][occupancy[k] >= 0.5] = 255
    if spec.missing_channel is not None:
        images[..., spec.missing_channel] = images[..., FLAIR]
    return images, masks
