"""The reference per-volume preprocessing, and its inverse for predictions.

Forward (mateuszbuda/brain-segmentation-pytorch, per patient volume):
zero voxels under ``crop_threshold`` of the volume max, crop rows/columns to the non-zero box,
pad to a square, resize every slice to ``size`` (image spline order 2, mask order 0), clip to the
volume's 10th-99th percentile, z-score each channel over the volume.

Unlike the reference we keep every slice (no z-crop, first and last slices kept), so that a
prediction maps back slice for slice onto the original stack; ``Geometry`` records what
``to_original`` needs to undo the crop, pad and resize.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from skimage.transform import resize

CHANNELS = ("pre", "flair", "post")
FLAIR = 1


@dataclass(frozen=True)
class Geometry:
    """How one patient's slices were cropped, padded and resized (all in pixels)."""

    height: int
    width: int
    crop_y0: int
    crop_y1: int
    crop_x0: int
    crop_x1: int
    pad_top: int
    pad_bottom: int
    pad_left: int
    pad_right: int
    size: int

    @property
    def side(self) -> int:
        """The padded square's side, before the resize to ``size``."""
        return self.crop_y1 - self.crop_y0 + self.pad_top + self.pad_bottom

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def crop_box(volume: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    """Rows/columns holding any voxel at or above ``threshold`` x the volume max (whole image if none)."""
    # (S, H, W, C) -> (H, W): is any slice/channel bright here?
    bright = (volume >= threshold * volume.max()).any(axis=(0, 3)) if volume.max() > 0 else None
    if bright is None or not bright.any():
        return 0, volume.shape[1], 0, volume.shape[2]
    rows = np.flatnonzero(bright.any(axis=1))
    cols = np.flatnonzero(bright.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def square_padding(height: int, width: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) that pads the short side to the long one, split floor/ceil."""
    diff = abs(height - width)
    before, after = diff // 2, diff - diff // 2
    return (before, after, 0, 0) if height < width else (0, 0, before, after)


def preprocess_volume(
    image: np.ndarray,
    mask: np.ndarray | None,
    *,
    size: int,
    crop_threshold: float = 0.1,
    clip_percentiles: tuple[float, float] = (10.0, 99.0),
) -> tuple[np.ndarray, np.ndarray | None, Geometry]:
    """(S, H, W, 3) uint8 image and (S, H, W) 0/1 mask (or None, for inference) ->
    float32 (S, size, size, 3), uint8 (S, size, size) mask (or None) and the geometry."""
    if image.ndim != 4 or image.shape[-1] != 3 or (mask is not None and image.shape[:3] != mask.shape):
        shapes = f"{image.shape}" + ("" if mask is None else f" and {mask.shape}")
        raise ValueError(f"expected image (S, H, W, 3) and mask (S, H, W) of the same S, H, W; got {shapes}")
    volume = image.astype(np.float32)
    volume[volume < crop_threshold * volume.max()] = 0.0
    y0, y1, x0, x1 = crop_box(volume, crop_threshold)
    top, bottom, left, right = square_padding(y1 - y0, x1 - x0)
    geometry = Geometry(
        image.shape[1], image.shape[2], y0, y1, x0, x1, top, bottom, left, right, size
    )
    volume = np.pad(volume[:, y0:y1, x0:x1], ((0, 0), (top, bottom), (left, right), (0, 0)))
    volume = np.stack([_resize_planes(s, size) for s in volume])
    out_mask = None
    if mask is not None:
        cropped_mask = np.pad(mask[:, y0:y1, x0:x1], ((0, 0), (top, bottom), (left, right)))
        out_mask = np.stack(
            [resize(m, (size, size), order=0, mode="constant", cval=0, anti_aliasing=False, preserve_range=True)
             for m in cropped_mask]
        ).astype(np.uint8)
    return normalise(volume, clip_percentiles), out_mask, geometry


def _resize_planes(image: np.ndarray, size: int) -> np.ndarray:
    """(h, w, C) -> (size, size, C), order-2 spline per channel plane (the reference's resize order).

    One 2-D resize per channel: a 3-D resize would also run the spline prefilter along the
    channel axis, five times slower for the same values (to 2e-4, from the boundary handling).
    """
    return np.stack(
        [resize(image[..., c], (size, size), order=2, mode="constant", cval=0, anti_aliasing=False)
         for c in range(image.shape[-1])], axis=-1,
    ).astype(np.float32)


def normalise(volume: np.ndarray, clip_percentiles: tuple[float, float]) -> np.ndarray:
    """Clip to the volume's percentiles, scale to [0, 1], then z-score each channel over the volume."""
    low, high = np.percentile(volume, clip_percentiles)
    scaled = np.clip(volume, low, high)
    scaled = (scaled - low) / (high - low) if high > low else np.zeros_like(scaled)
    mean = scaled.mean(axis=(0, 1, 2))
    std = scaled.std(axis=(0, 1, 2))
    return ((scaled - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)


def to_original(prediction: np.ndarray, geometry: Geometry, *, order: int = 1) -> np.ndarray:
    """Map (S, size, size) maps from the preprocessed space back onto the (S, H, W) original grid.

    Use ``order=1`` for probabilities (threshold afterwards) and ``order=0`` for binary masks.
    Pixels outside the crop box are 0: the preprocessing found only background there.
    """
    g = geometry
    if prediction.ndim != 3 or prediction.shape[1:] != (g.size, g.size):
        raise ValueError(f"expected (S, {g.size}, {g.size}) maps, got {prediction.shape}")
    out = np.zeros((prediction.shape[0], g.height, g.width), dtype=np.float32)
    side = g.side
    for k, plane in enumerate(prediction):
        square = resize(
            plane.astype(np.float32), (side, side), order=order, mode="edge",
            anti_aliasing=False, preserve_range=True,
        )
        out[k, g.crop_y0 : g.crop_y1, g.crop_x0 : g.crop_x1] = square[
            g.pad_top : side - g.pad_bottom, g.pad_left : side - g.pad_right
        ]
    return out


def channels_present(image: np.ndarray) -> tuple[bool, bool, bool]:
    """Which sequences were acquired: a channel identical to FLAIR over the volume stood in for one."""
    flair = image[..., FLAIR]
    return tuple(  # type: ignore[return-value]
        c == FLAIR or not np.array_equal(image[..., c], flair) for c in range(len(CHANNELS))
    )
