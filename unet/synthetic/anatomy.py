"""Synthetic patients on real brain anatomy: the MNI152 2009a template, posed, warped and imaged.

The same contract as ``unet.synthetic.phantom`` (``patient_spec(seed, index, min_slices,
max_slices)`` draws a small ``AnatomySpec``; ``render_volume(spec, size)`` returns images (Z, size,
size, 3) uint8 [pre-contrast, FLAIR, post-contrast] and masks (Z, size, size) uint8 0/255), so
``write_synthetic_dataset`` can render either. ``render_patient`` adds the irregularity hook and
the tissue labels. The anatomy is nilearn's bundled ICBM 2009a nonlinear symmetric template at
1 mm (T1 and grey/white-matter probability maps, 197 x 233 x 189); nothing is downloaded, and
nilearn is only located, not imported.

Once a process (``load_template``, ~2 s CPU), the template becomes eight uint8 maps packed into one
uint64 a voxel: T1 detail (the T1 less what the tissue shares predict), grey matter, white matter,
CSF (the non-GM/WM share of the brain mask where the T1 is dark), other tissue (that share where it
is bright: vessels, dura), the distance outside the head core, and the skull-base fill. The head
core is the brain closed by a 4 mm smoothing and filled to each axial plane's convex hull (the
lowest plane carried down as a neck); CSF, skull (tables and diploe), galea, fat and skin are
layers of the distance from it, through a per-patient look-up table.

A patient is a random pose (rotation, scale, shift) and a smooth warp (4x4x4 B-spline control
displacements), evaluated with the bias field on a coarse grid (every ``NODE_PX`` pixels) and
interpolated to each pixel that may hold the head; one trilinear gather a pixel then reads all eight
maps at once (integer weights, 1/8 voxel in-plane, 1/4 through-plane). The maps are mixed into the
three channels with the patient's contrasts, the lesion (``unet.synthetic.lesions``) blended in,
then a smooth bias field, Rician noise, gain and offset. Slices run inferior to superior over the
brain's height (slice thickness = height / count), radiological orientation (anterior up, the
patient's right on the image's left), ``FOV_MM`` across the image.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from unet.errors import EnvironmentMismatch, InputError
from unet.synthetic.lesions import LesionField, LesionSpec, bspline_matrix, draw_lesion, lesion_field, rotation
from unet.synthetic.phantom import FLAIR, POST, PRE, slice_count

__all__ = ["AnatomySpec", "FOV_MM", "TISSUE_LABELS", "draw_spec", "load_template", "patient_spec",
           "render_patient", "render_volume", "template_files", "FLAIR", "POST", "PRE"]

NILEARN_VERSION = "0.14.1"  # the version whose bundled files this was built on
TEMPLATE_FILES = {name: f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz" for name in ("t1", "gm", "wm")}
FOV_MM = 240.0  # field of view: 0.94 mm pixels at 256, the head fills ~85% of the frame
NODE_PX = 8  # spacing of the coarse grid the pose, warp and bias are evaluated on
# The packed maps, one byte each.
RES, GM, WM, CSF, OTHER, DIST, BASE = range(7)
DIST_MM = 0.1  # mm a step of DIST (0..25.5 mm; 255 = further, air)
PAD = ((28, 4), (4, 4), (4, 4))  # (z, y, x) voxels added round the template before cropping
MISSING_PROBABILITY = 0.2
# Labels of the optional tissue volume (render_patient(..., with_tissue=True)).
TISSUE_LABELS = {"air": 0, "csf": 1, "gm": 2, "wm": 3, "other": 4, "bone": 5, "scalp": 6}
# Contrasts (pre-contrast, FLAIR, post-contrast), 0..1 before bias, gain and noise.
TISSUE = {"gm": (0.40, 0.43, 0.42), "wm": (0.55, 0.36, 0.56), "csf": (0.12, 0.07, 0.13),
          "other": (0.33, 0.28, 0.62), "base": (0.10, 0.09, 0.12)}
SHELL = {"bone": (0.05, 0.04, 0.06), "diploe": (0.50, 0.36, 0.52), "galea": (0.28, 0.26, 0.30),
         "fat": (0.88, 0.72, 0.90), "skin": (0.48, 0.44, 0.50)}
T1_DETAIL = 0.6  # share of the template T1's own detail (deep grey nuclei...) in pre/post-contrast
DURA_POST = 0.3  # post-contrast rise of the dura, a thin band at the inner skull
LESION_TEXTURE = (0.025, 0.045, 0.025)  # relative heterogeneity of the lesion signal per channel


# -- the template, once a process -----------------------------------------------------------------

def template_files() -> dict[str, Path]:
    """The bundled nilearn files used: T1, grey matter and white matter at 1 mm."""
    found = importlib.util.find_spec("nilearn")  # located, not imported (importing costs ~1.5 s)
    if found is None or found.origin is None:
        raise EnvironmentMismatch("anatomy 'mni152' needs nilearn's bundled MNI152 template: "
                                  f"pip install nilearn=={NILEARN_VERSION} (or use anatomy 'phantom')")
    folder = Path(found.origin).parent / "datasets" / "data"
    files = {name: folder / file for name, file in TEMPLATE_FILES.items()}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise EnvironmentMismatch(f"nilearn is installed but lacks {missing}: reinstall nilearn=={NILEARN_VERSION}")
    return files


def _read(path: Path) -> np.ndarray:
    """A template file as uint8 0..255 indexed [z, y, x] (C order: x fastest)."""
    import nibabel as nib

    data = np.asarray(nib.load(str(path)).dataobj)
    if data.dtype != np.uint8:
        data = np.asarray(data, np.float64)
        data = np.clip(np.rint(data * (255.0 if data.max() <= 1.0 + 1e-6 else 1.0)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(data.transpose(2, 1, 0))


def _upsample2(a: np.ndarray) -> np.ndarray:
    """Twice the size along every axis, linear interpolation between voxel centres (edges held)."""
    a = a.astype(np.float32)
    for axis in range(a.ndim):
        a = np.moveaxis(a, axis, 0)
        quarter = 0.25 * a
        out = np.empty((2 * a.shape[0], *a.shape[1:]), np.float32)
        even, odd = out[0::2], out[1::2]
        np.multiply(a, np.float32(0.75), out=even)
        np.copyto(odd, even)
        even[1:] += quarter[:-1]
        even[0] += quarter[0]
        odd[:-1] += quarter[1:]
        odd[-1] += quarter[-1]
        a = np.moveaxis(out, 0, axis)
    return np.ascontiguousarray(a)


def _head_core(brain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At 2 mm: the signed distance (mm, > 0 outside) from the head core (the brain closed by a 4 mm
    smoothing, filled to each axial plane's convex hull, the lowest plane carried down as a neck),
    and the smoothed brain."""
    from skimage.morphology import convex_hull_image

    z, y, x = brain.shape
    coarse = brain.reshape(z // 2, 2, y // 2, 2, x // 2, 2).mean(axis=(1, 3, 5), dtype=np.float32)
    smooth = ndi.gaussian_filter(coarse, 2.0)
    core = (smooth >= 0.3) | (coarse >= 0.5)
    for k in range(len(core)):
        if core[k].any():
            core[k] = convex_hull_image(core[k])
    first = int(np.flatnonzero(core.any(axis=(1, 2)))[0])
    core[:first] = core[first]  # the template stops at the brainstem: carry the lowest plane down (neck)
    core = ndi.gaussian_filter(core.astype(np.float32), 1.5) >= 0.5  # round the hulls' corners
    signed = ndi.distance_transform_edt(~core, sampling=2.0) - ndi.distance_transform_edt(core, sampling=2.0)
    return signed.astype(np.float32), smooth


def _brain_maps(t1: np.ndarray, gm: np.ndarray, wm: np.ndarray, brain: np.ndarray) -> dict[int, np.ndarray]:
    """RES (T1 minus what the tissue shares predict, + 128), CSF and OTHER (the non-GM/WM share of
    the brain mask where the T1 is dark / bright), computed on the brain's voxels only."""
    where = np.flatnonzero(brain)
    g, w, t = (v.reshape(-1)[where].astype(np.float32) for v in (gm, wm, t1))
    rest = np.clip(255 - g - w, 0, 255)
    csf = np.rint(rest * np.clip((140.0 - t) / 40.0, 0.0, 1.0))
    other = rest - csf
    shares = [g / 255, w / 255, csf / 255, other / 255]
    sample = np.stack([v[::7] for v in shares], 1).astype(np.float64)  # least squares, BLAS-free
    fit = np.linalg.solve(np.einsum("ni,nj->ij", sample, sample), np.einsum("ni,n->i", sample, t[::7]))
    predicted = sum(np.float32(f) * v for f, v in zip(fit, shares))
    maps = {RES: np.full(brain.size, 128, np.uint8), CSF: np.zeros(brain.size, np.uint8),
            OTHER: np.zeros(brain.size, np.uint8)}
    maps[RES][where] = np.clip(np.rint(t - predicted + 128), 0, 255)
    maps[CSF][where] = csf
    maps[OTHER][where] = other
    return {c: m.reshape(brain.shape) for c, m in maps.items()}


@dataclass(frozen=True)
class _Template:
    flat: np.ndarray  # uint64 a voxel, eight uint8 maps (RES, GM, WM, CSF, OTHER, DIST, BASE, 0)
    shape: tuple[int, int, int]  # (Z, Y, X)
    shift: np.ndarray  # (k, j, i) array index of template voxel (i, j, k) = (0, 0, 0)
    centre: np.ndarray  # (i, j, k): centre of the brain's bounding box, template voxels
    k_range: tuple[float, float]  # the brain's lowest and highest template k
    seeds: np.ndarray  # (N, 3) i, j, k: deep white matter above the tentorium, off the midline

    def channel(self, c: int) -> np.ndarray:
        return self.flat.view(np.uint8).reshape(*self.shape, 8)[..., c]


def _seeds(wm: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Lesion seed candidates in template voxels (i, j, k): white matter >= 90%, template k >= 50
    (supratentorial), 10+ mm off the midline (i = 98), every second voxel. ``origin``: the array
    index (k, j, i) of template voxel 0."""
    k, j, i = np.nonzero(wm[::2, ::2, ::2] >= 230)
    ijk = np.stack([i, j, k], 1) * 2 - origin[::-1]  # array index -> template voxel
    keep = (ijk[:, 2] >= 50) & (np.abs(ijk[:, 0] - 98) >= 10)
    return ijk[keep].astype(np.float64)


def _crop(signed: np.ndarray) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """The 2 mm box holding every voxel within 25.5 mm of the head core (and a voxel more), and
    the same box at 1 mm."""
    near = signed < 255 * DIST_MM + 2.0
    boxes = [np.flatnonzero(near.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
    coarse = tuple(slice(max(int(b[0]) - 1, 0), int(b[-1]) + 2) for b in boxes)
    return coarse, tuple(slice(2 * c.start, 2 * c.stop) for c in coarse)


@functools.lru_cache(maxsize=1)
def load_template() -> _Template:
    """Read the template and derive the packed maps (a few seconds; cached for the process)."""
    files = template_files()
    volumes = [np.pad(_read(files[name]), PAD) for name in ("t1", "gm", "wm")]
    t1, gm, wm = (np.pad(v, tuple((0, n % 2) for n in v.shape)) for v in volumes)
    signed, smooth = _head_core(t1 > 0)
    coarse, crop = _crop(signed)
    t1, gm, wm = t1[crop], gm[crop], wm[crop]
    signed, smooth = _upsample2(signed[coarse]), _upsample2(smooth[coarse])
    brain = t1 > 0
    closed = (smooth >= 0.3) | brain
    core = (signed <= 0) | closed
    packed = np.zeros((*t1.shape, 8), np.uint8)
    for c, m in {GM: gm, WM: wm, **_brain_maps(t1, gm, wm, brain)}.items():
        packed[..., c] = m
    packed[..., CSF][closed & ~brain] = 255
    packed[..., BASE][core & ~closed] = 255
    packed[..., DIST] = np.where(core, 0, np.clip(np.rint(signed / DIST_MM), 1, 255))
    origin = np.array([PAD[a][0] - crop[a].start for a in range(3)], np.float64)  # template 0 in the array
    k, j, i = (np.flatnonzero(brain.any(axis=axes)) - origin[n] for n, axes in enumerate([(1, 2), (0, 2), (0, 1)]))
    flat = packed.reshape(-1).view(np.uint64)
    flat.flags.writeable = False
    return _Template(flat=flat, shape=packed.shape[:3], shift=origin,
                     centre=np.array([(i[0] + i[-1]) / 2, (j[0] + j[-1]) / 2, (k[0] + k[-1]) / 2]),
                     k_range=(float(k[0]), float(k[-1])), seeds=_seeds(wm, origin))


# -- one patient's draw -----------------------------------------------------------------------------

@dataclass(frozen=True)
class AnatomySpec:
    """One patient: pose, warp, contrasts, shell, lesion and acquisition; ``texture_seed`` drives the
    warp, bias-field shape, shell thickness field and noise."""

    n_slices: int
    angles: tuple[float, float, float]  # yaw (in-plane), pitch (about x), roll (about y), radians
    scale: tuple[float, float, float]  # patient size over the template's, x y z
    shift: tuple[float, float, float]  # mm: where the brain's centre sits in the patient frame
    k_range: tuple[float, float]  # template k covered by the slices, inferior to superior
    warp_mm: float  # standard deviation of the control-point displacements
    tissue: dict[str, tuple[float, float, float]]  # TISSUE, per patient
    shell: dict[str, tuple[float, float, float]]  # SHELL, per patient
    layers: tuple[float, ...]  # mm: CSF, inner table, diploe, outer table, galea, fat, skin
    lesion: LesionSpec
    missing_channel: int | None  # PRE or POST filled with FLAIR, or None
    gains: tuple[float, float, float]
    offset: float
    bias: tuple[float, ...]  # x, y, z, x^2, y^2, z^2, xy coefficients (coordinates in 100 mm)
    noise_sigma: float
    texture_seed: int


def _jitter(rng: np.random.Generator, table: dict[str, tuple[float, ...]], spread: float) -> dict:
    return {name: tuple(float(v * rng.uniform(1 - spread, 1 + spread)) for v in row) for name, row in table.items()}


def draw_spec(rng: np.random.Generator, n_slices: int, *, margin_irregularity: float | None = None) -> AnatomySpec:
    """Draw one patient from ``rng`` (the template is loaded for the lesion's seed)."""
    tpl = load_template()
    u = rng.uniform
    deg = math.pi / 180
    size = u(0.9, 1.1)
    lo, hi = tpl.k_range
    missing = (PRE, POST)[int(rng.integers(2))] if rng.random() < MISSING_PROBABILITY else None
    return AnatomySpec(
        n_slices=int(n_slices),
        angles=(u(-10, 10) * deg, u(-5, 5) * deg, u(-4, 4) * deg),
        scale=tuple(float(size * u(0.97, 1.03)) for _ in range(3)),
        shift=(u(-4, 4), u(-4, 4), u(-3, 3)),
        k_range=(lo + u(6, 16), hi + u(2, 8)),
        warp_mm=u(1.5, 3.0),
        tissue=_jitter(rng, TISSUE, 0.06), shell=_jitter(rng, SHELL, 0.08),
        layers=(u(1.0, 2.5), u(1.2, 2.0), u(1.0, 3.0), u(1.2, 2.0), u(0.5, 1.0), u(2.5, 6.0), u(1.0, 2.0)),
        lesion=draw_lesion(rng, tpl.seeds, margin_irregularity),
        missing_channel=missing,
        gains=(u(0.85, 1.05), u(0.85, 1.05), u(0.85, 1.05)),
        offset=u(0.0, 0.008),
        bias=(*rng.normal(0.0, 0.1, 3).tolist(), *rng.normal(0.0, 0.06, 4).tolist()),
        noise_sigma=u(0.006, 0.015),
        texture_seed=int(rng.integers(2**31)),
    )


def patient_spec(seed: int, index: int, min_slices: int = 20, max_slices: int = 88) -> AnatomySpec:
    """The ``index``-th patient (0-based) of a set written with ``seed``: its own stream
    ``SeedSequence([seed, index, 0])``, as ``unet.synthetic.generate`` draws phantoms."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, 0]))
    return draw_spec(rng, slice_count(rng, min_slices, max_slices))


# -- rendering ----------------------------------------------------------------------------------

def _hat(size: int, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation from the coarse nodes to every pixel: each pixel's lower node (size,)
    and its weight on the next node (size,) float32."""
    lower = np.clip(np.searchsorted(nodes, np.arange(size), side="right") - 1, 0, len(nodes) - 2)
    weight = (np.arange(size) - nodes[lower]) / (nodes[lower + 1] - nodes[lower])
    return lower, weight.astype(np.float32)


def _interpolate(coarse: np.ndarray, hat: tuple[np.ndarray, np.ndarray], rows: slice, cols: slice) -> np.ndarray:
    """(C, n, n) node values -> (C, h, w) at the pixels ``rows`` x ``cols`` (no BLAS: the products
    are tiny, and OpenBLAS's threads stall when the cores are busy)."""
    lower, weight = hat
    r, wr = lower[rows], weight[rows][None, :, None]
    part = coarse[:, r] * (1 - wr) + coarse[:, r + 1] * wr  # (C, h, n)
    c, wc = lower[cols], weight[cols][None, None, :]
    return part[:, :, c] * (1 - wc) + part[:, :, c + 1] * wc


def _slice_z(spec: AnatomySpec, tpl: _Template) -> np.ndarray:
    """Slice centres along the patient's z (mm), inferior to superior."""
    lo, hi = spec.k_range
    step = (hi - lo) / spec.n_slices
    return spec.shift[2] + spec.scale[2] * (lo - tpl.centre[2] + (np.arange(spec.n_slices) + 0.5) * step)


def _coarse(spec: AnatomySpec, size: int, tpl: _Template, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(Z, 5, n, n) on the coarse grid: array coordinates k, j, i of the template, the bias field
    and the shell's thickness factor's inverse; and the nodes' pixel positions (n,)."""
    n = max(3, math.ceil((size - 1) / NODE_PX) + 1)
    nodes = np.linspace(0.0, size - 1.0, n)
    across = -(nodes - (size - 1) / 2) * (FOV_MM / size)  # radiological: image left = patient right
    z = _slice_z(spec, tpl)
    q = np.stack(np.broadcast_arrays(across[None, None, :], across[None, :, None], z[:, None, None]), -1)
    half = FOV_MM / 2
    z_lo, z_span = float(z[0]) - 1.0, max(float(z[-1] - z[0]) + 2.0, 1.0)
    basis = [bspline_matrix(across, -half, 2 * half / 3, 4), bspline_matrix(z, z_lo, z_span / 3, 4)]
    control = rng.standard_normal((4, 4, 4, 4))  # warp x, y, z and the shell factor, on z, y, x nodes
    fields = np.einsum("za,abcd->zbcd", basis[1], control)  # one axis at a time: cheap, no BLAS
    fields = np.einsum("yb,zbcd->zycd", basis[0], fields)
    fields = np.einsum("xc,zycd->zyxd", basis[0], fields)
    pose = rotation(*spec.angles) / np.asarray(spec.scale)[None, :]  # patient mm -> template mm
    p = tpl.centre + np.einsum("zyxa,ba->zyxb", q - np.asarray(spec.shift), pose) + spec.warp_mm * fields[..., :3]
    x, y, zz = (q[..., a] / 100.0 for a in range(3))
    b = spec.bias
    bias = np.exp(b[0] * x + b[1] * y + b[2] * zz + b[3] * x * x + b[4] * y * y + b[5] * zz * zz + b[6] * x * y)
    out = np.stack([p[..., 2] + tpl.shift[0], p[..., 1] + tpl.shift[1], p[..., 0] + tpl.shift[2],
                    bias, np.clip(np.exp(-0.15 * fields[..., 3]), 0.75, 1.33)], 1)
    return out.astype(np.float32), nodes


def _span(hit: np.ndarray, nodes: np.ndarray, size: int) -> slice | None:
    """Pixels covering the nodes in ``hit`` (1-D bool) and one node either side, or None."""
    where = np.flatnonzero(hit)
    if where.size == 0:
        return None
    lo, hi = nodes[max(where[0] - 1, 0)], nodes[min(where[-1] + 1, len(nodes) - 1)]
    return slice(int(math.floor(lo)), min(int(math.ceil(hi)) + 1, size))


def _boxes(coarse: np.ndarray, nodes: np.ndarray, size: int, inside: np.ndarray) -> list[tuple[slice, slice] | None]:
    """Per slice the rows and columns holding the nodes in ``inside`` (Z, n, n), or None."""
    boxes = []
    for k in range(len(coarse)):
        rows, cols = _span(inside[k].any(axis=1), nodes, size), _span(inside[k].any(axis=0), nodes, size)
        boxes.append(None if rows is None or cols is None else (rows, cols))
    return boxes


def _head_nodes(coarse: np.ndarray, tpl: _Template, spec: AnatomySpec) -> np.ndarray:
    """(Z, n, n) bool: nodes within 3 mm of the scalp's outer surface, nearest voxel."""
    idx = [np.clip(np.rint(coarse[:, a]), 0, tpl.shape[a] - 1).astype(np.int64) for a in range(3)]
    flat = (idx[0] * tpl.shape[1] + idx[1]) * tpl.shape[2] + idx[2]
    dist = tpl.flat[flat].view(np.uint8).reshape(*flat.shape, 8)[..., DIST] * coarse[:, 4] * DIST_MM
    return dist < sum(spec.layers) + 3.0


def _lesion_nodes(coarse: np.ndarray, field: LesionField, margin: float) -> np.ndarray:
    lo = field.origin - margin
    hi = field.origin + (np.array(field.occupancy.shape) - 1) * field.spacing + margin
    return np.all([(coarse[:, a] >= lo[a]) & (coarse[:, a] <= hi[a]) for a in range(3)], axis=0)


def _trilinear(tpl: _Template, cz: np.ndarray, cy: np.ndarray, cx: np.ndarray) -> np.ndarray:
    """All eight maps at the points (array coordinates), trilinear: (n, 8) uint16 0..255.

    Integer weights, 1/8 voxel in-plane and 1/4 through-plane (8 x 8 x 4 = 256 in all, so the
    eight corner weights sum to exactly 256 and 255 * 256 fits in uint16): a corner costs one
    gather, one multiply and one add over its eight bytes.
    """
    zmax, ymax, xmax = tpl.shape
    cz, cy, cx = (np.clip(c, 0, m - 1.001) for c, m in ((cz, zmax), (cy, ymax), (cx, xmax)))
    fz, fy, fx = np.floor(cz), np.floor(cy), np.floor(cx)
    base = ((fz.astype(np.int32) * ymax + fy.astype(np.int32)) * xmax + fx.astype(np.int32)).reshape(-1)
    wz = np.rint((cz - fz) * 4).astype(np.uint16).reshape(-1)
    wy = np.rint((cy - fy) * 8).astype(np.uint16).reshape(-1)
    wx = np.rint((cx - fx) * 8).astype(np.uint16).reshape(-1)
    zy = [(4 - wz) * (8 - wy), (4 - wz) * wy, wz * (8 - wy), wz * wy]
    plane, row = ymax * xmax, xmax
    total = np.zeros((base.size, 8), np.uint16)
    for n, (dz, dy) in enumerate(((0, 0), (0, row), (plane, 0), (plane, row))):
        for dx, w in ((0, zy[n] * (8 - wx)), (1, zy[n] * wx)):
            corner = tpl.flat.take(base + (dz + dy + dx)).view(np.uint8).reshape(-1, 8)
            total += corner * w[:, None]
    total += 128
    total >>= 8
    return total


def _shell_tables(spec: AnatomySpec) -> tuple[np.ndarray, np.ndarray]:
    """(3, 256) float32 signal and (256,) uint8 tissue label against the DIST byte."""
    names = ("csf", "bone", "diploe", "bone", "galea", "fat", "skin")
    labels = {"csf": 1, "bone": 5, "diploe": 5, "galea": 6, "fat": 6, "skin": 6}
    edges = np.cumsum(spec.layers)
    d = np.arange(256) * DIST_MM
    zone = np.searchsorted(edges, d, side="left")  # 0..6 inside the layers, 7 beyond: air
    rows = [spec.tissue["csf"]] + [spec.shell[name] for name in names[1:]] + [(0.0, 0.0, 0.0)]
    signal = np.asarray(rows, np.float32)[zone]
    signal[:, POST] += DURA_POST * np.exp(-0.5 * ((d - edges[0]) / 0.4) ** 2)
    signal = ndi.gaussian_filter1d(signal, 0.4 / DIST_MM, axis=0, mode="nearest")
    signal[0] = 0.0  # DIST 0 is inside the head core: the tissue maps speak there
    label = np.array([labels[name] for name in names] + [0], np.uint8)[zone]
    return np.ascontiguousarray(signal.T, np.float32), label


def _mixing(spec: AnatomySpec) -> tuple[np.ndarray, np.ndarray]:
    """(8, 3) weights from the map bytes to the three channels, and the (3,) constant term."""
    mix = np.zeros((8, 3), np.float32)
    for c, name in ((GM, "gm"), (WM, "wm"), (CSF, "csf"), (OTHER, "other"), (BASE, "base")):
        mix[c] = np.asarray(spec.tissue[name]) / 255
    detail = T1_DETAIL * (spec.tissue["wm"][PRE] - spec.tissue["gm"][PRE]) / (57.0 / 255)  # template WM-GM: ~57
    mix[RES, [PRE, POST]] = detail / 255
    constant = np.zeros(3, np.float32)
    constant[[PRE, POST]] = -128 * detail / 255
    return mix, constant


class _Noise:
    """Rician noise from one bank per patient (two planes: real and imaginary parts) read at a random
    offset per slice and channel; gain and offset per channel."""

    def __init__(self, rng: np.random.Generator, spec: AnatomySpec, size: int):
        pad = max(1, size // 2)
        self.size, self.width = size, size + pad
        bank = rng.standard_normal((2, self.width * self.width), dtype=np.float32)
        # truncated at 3.2 sigma: the air stays under the reference's 10%-of-max crop threshold
        self.bank = np.clip(bank, -3.2, 3.2) * np.float32(spec.noise_sigma)
        self.offsets = rng.integers(0, pad + 1, (spec.n_slices, 3, 2))
        self.shift = (self.offsets[..., 0] * self.width + self.offsets[..., 1]).tolist()  # (Z, 3) flat offsets
        self.gain = [np.float32(g * 255) for g in spec.gains]
        self.offset = np.float32(spec.offset * 255 + 0.5)  # + 0.5: round on the cast to uint8
        rayleigh = np.hypot(self.bank[0], self.bank[1]).reshape(self.width, self.width)
        self.background = [self._uint8(rayleigh, c) for c in range(3)]

    def _uint8(self, magnitude: np.ndarray, c: int) -> np.ndarray:
        return np.clip(magnitude * self.gain[c] + self.offset, 0, 255).astype(np.uint8)

    def empty(self, k: int, image: np.ndarray) -> None:
        """Fill ``image`` (size, size, 3) with slice ``k``'s noise alone."""
        for c in range(3):
            y, x = self.offsets[k, c]
            image[..., c] = self.background[c][y:y + self.size, x:x + self.size]

    def add(self, signal: np.ndarray, k: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """``signal`` (3, m) at pixels (``rows``, ``cols``) of slice ``k`` with noise: (m, 3) uint8."""
        at = rows * self.width + cols
        out = np.empty((len(at), 3), np.uint8)
        for c in range(3):
            where = at + self.shift[k][c]
            real = self.bank[0].take(where) + signal[c]
            imag = self.bank[1].take(where)
            out[:, c] = self._uint8(np.sqrt(real * real + imag * imag), c)
        return out


@dataclass
class _Patient:
    """What every slice of one patient's render reads."""

    size: int
    tpl: _Template
    coarse: np.ndarray  # (Z, 5, n, n)
    hat: tuple[np.ndarray, np.ndarray]
    heads: list  # per slice (rows, cols) or None
    cells: np.ndarray  # (Z, n - 1, n - 1) bool: coarse cells that may hold the head
    lesion_boxes: list  # per slice (rows, cols) holding the lesion's box, or None
    lesion: LesionField
    lesion_signal: np.ndarray  # (3,)
    mix: np.ndarray
    constant: np.ndarray
    shell: np.ndarray
    shell_label: np.ndarray
    noise: _Noise


def _prepare(spec: AnatomySpec, size: int, irregularity: float | None) -> _Patient:
    tpl = load_template()
    rng = np.random.default_rng(spec.texture_seed)
    coarse, nodes = _coarse(spec, size, tpl, rng)
    field = lesion_field(spec.lesion, tpl.channel(GM), tpl.channel(WM), tuple(tpl.shift), irregularity)
    wm = spec.tissue["wm"]
    lesion = spec.lesion
    pre = wm[PRE] * (1 - lesion.t1_drop)
    signal = np.array([pre, wm[FLAIR] * (1 + lesion.flair_boost), pre * (1 + lesion.enhancement)], np.float32)
    inside = _head_nodes(coarse, tpl, spec)
    cells = inside[:, :-1, :-1] | inside[:, 1:, :-1] | inside[:, :-1, 1:] | inside[:, 1:, 1:]
    mix, constant = _mixing(spec)
    shell, shell_label = _shell_tables(spec)
    return _Patient(size=size, tpl=tpl, coarse=coarse, hat=_hat(size, nodes), heads=_boxes(coarse, nodes, size, inside),
                    cells=cells, lesion_boxes=_boxes(coarse, nodes, size, _lesion_nodes(coarse, field, field.spacing)),
                    lesion=field, lesion_signal=signal, mix=mix, constant=constant, shell=shell,
                    shell_label=shell_label, noise=_Noise(rng, spec, size))


def _tissue_labels(maps: np.ndarray, dist: np.ndarray, pat: _Patient) -> np.ndarray:
    """(m,) uint8 TISSUE_LABELS: the largest brain share where brain shares make half, else the shell.
    ``maps``: (8, m)."""
    brain = maps[[CSF, GM, WM, OTHER, BASE]]
    label = np.array([1, 2, 3, 4, 5], np.uint8)[np.argmax(brain, axis=0)]
    return np.where(brain.sum(axis=0) >= 128, label, pat.shell_label[dist])


def _points(pat: _Patient, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The pixels of slice ``k`` in coarse cells that may hold the head: rows (m,), columns (m,)
    and the coarse-grid values there (5, m); None when there are none."""
    box = pat.heads[k]
    if box is None:
        return None
    rows, cols = box
    lower = pat.hat[0]
    near = pat.cells[k][lower[rows][:, None], lower[cols][None, :]]  # (h, w)
    local = np.flatnonzero(near)
    if local.size == 0:
        return None
    values = _interpolate(pat.coarse[k], pat.hat, rows, cols).reshape(5, -1)[:, local]
    r, c = np.divmod(local, near.shape[1])
    return r + rows.start, c + cols.start, values


def _lesion_into(pat: _Patient, k: int, rows: np.ndarray, cols: np.ndarray, values: np.ndarray,
                 signal: np.ndarray) -> np.ndarray | None:
    """Blend the lesion into ``signal`` (3, m) at pixels (``rows``, ``cols``); return the indices of
    the points in its mask."""
    box = pat.lesion_boxes[k]
    if box is None:
        return None
    near = np.flatnonzero((rows >= box[0].start) & (rows < box[0].stop) & (cols >= box[1].start) & (cols < box[1].stop))
    if near.size == 0:
        return None
    field = pat.lesion
    at = (values[:3, near] - field.origin[:, None].astype(np.float32)) / np.float32(field.spacing)
    occupancy = ndi.map_coordinates(field.occupancy, at, order=1, mode="constant", cval=0.0)
    hit = occupancy > 0
    near, at, occupancy = near[hit], at[:, hit], occupancy[hit]
    texture = ndi.map_coordinates(field.texture, at, order=1, mode="nearest")
    for c in range(3):
        part = signal[c, near]
        signal[c, near] = part + (pat.lesion_signal[c] * (1 + LESION_TEXTURE[c] * texture) - part) * occupancy
    return near[occupancy >= 0.5]


def _signal(pat: _Patient, maps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The noise-free (3, m) signal before the lesion and bias, and the shell table index (m,)."""
    shares = {c: maps[c].astype(np.float32) for c in (RES, GM, WM, CSF, OTHER, BASE)}
    brain = shares[GM] + shares[WM] + shares[CSF] + shares[OTHER] + shares[BASE]
    outside = np.clip(1 - brain / 255, 0, 1)
    far = maps[DIST] >= 255  # beyond 25.5 mm: air whatever the thickness factor
    dist = np.where(far, 255, np.minimum(maps[DIST] * values[4], 254)).astype(np.intp)
    signal = np.empty((3, maps.shape[1]), np.float32)
    for c in range(3):
        total = pat.shell[c][dist] * outside + pat.constant[c]
        for m, share in shares.items():
            if pat.mix[m, c] != 0:
                total += share * pat.mix[m, c]
        signal[c] = total
    return signal, dist


def _render_slice(pat: _Patient, k: int, image: np.ndarray, mask: np.ndarray, tissue: np.ndarray | None) -> None:
    """Slice ``k`` into ``image`` (size, size, 3), ``mask`` and (if given) ``tissue``: the
    background noise everywhere, the head where the coarse grid says it may be."""
    pat.noise.empty(k, image)
    found = _points(pat, k)
    if found is None:
        return
    rows, cols, values = found
    maps = np.ascontiguousarray(_trilinear(pat.tpl, values[0], values[1], values[2]).T)  # (8, m)
    signal, dist = _signal(pat, maps, values)
    lesion = _lesion_into(pat, k, rows, cols, values, signal)
    signal *= values[3]
    pixels = rows * pat.size + cols
    image.reshape(-1, 3)[pixels] = pat.noise.add(signal, k, rows, cols)
    if lesion is not None:
        mask.reshape(-1)[pixels[lesion]] = 255
    if tissue is not None:
        tissue.reshape(-1)[pixels] = _tissue_labels(maps, dist, pat)


def _check(size: object, irregularity: object) -> tuple[int, float | None]:
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or not 16 <= int(size) <= 2048:
        raise InputError(f"size must be an integer 16..2048 (pixels a side), got {size!r}")
    if irregularity is not None:
        if not isinstance(irregularity, (int, float, np.floating)) or not 0.0 <= float(irregularity) <= 1.0:
            raise InputError(f"margin_irregularity must be a number in 0..1 (0 smooth, 1 very irregular), "
                             f"got {irregularity!r}")
        irregularity = float(irregularity)
    return int(size), irregularity


def render_patient(spec_or_seed: AnatomySpec | int | tuple[int, int], size: int = 256, *,
                   margin_irregularity: float | None = None, min_slices: int = 20, max_slices: int = 88,
                   with_tissue: bool = False):
    """Render one patient: ``(images, masks)``, or ``(images, masks, tissue)`` with ``with_tissue``.

    ``spec_or_seed``: an ``AnatomySpec``, a seed (patient 0 of that seed) or ``(seed, index)``;
    the slice count is then drawn in ``min_slices..max_slices``. ``margin_irregularity`` (0 smooth
    .. 1 very irregular) replaces the spec's without changing anything else about the patient (the
    lesion's volume included), so a caller can tie it to a cluster variable. images (Z, size, size,
    3) uint8 [pre, FLAIR, post]; masks (Z, size, size) uint8 0/255; tissue (Z, size, size) uint8
    ``TISSUE_LABELS`` from the template's maps (the lesion not drawn in).
    """
    size, irregularity = _check(size, margin_irregularity)
    if isinstance(spec_or_seed, AnatomySpec):
        spec = spec_or_seed
    else:
        seed, index = spec_or_seed if isinstance(spec_or_seed, tuple) else (spec_or_seed, 0)
        spec = patient_spec(int(seed), int(index), min_slices, max_slices)
    pat = _prepare(spec, size, irregularity)
    images = np.empty((spec.n_slices, size, size, 3), np.uint8)
    masks = np.zeros((spec.n_slices, size, size), np.uint8)
    tissue = np.zeros((spec.n_slices, size, size), np.uint8) if with_tissue else None
    for k in range(spec.n_slices):
        _render_slice(pat, k, images[k], masks[k], None if tissue is None else tissue[k])
    if spec.missing_channel is not None:
        images[..., spec.missing_channel] = images[..., FLAIR]
    return (images, masks, tissue) if with_tissue else (images, masks)


def render_volume(spec: AnatomySpec, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (Z, size, size, 3) uint8 [pre, FLAIR, post] and masks (Z, size, size) uint8 0/255:
    the contract of ``unet.synthetic.phantom.render_volume``."""
    return render_patient(spec, size)
