"""The reference per-volume preprocessing, and its inverse for predictions.

Forward, as in mateuszbuda/brain-segmentation-pytorch (``dataset.py`` with ``crop_sample``,
``pad_sample``, ``resize_sample`` and ``normalize_volume`` of ``utils.py``), per patient volume:

1. The *statistics slices*.  The reference reads a patient without its first and last slice;
   we take every statistic below over those interior slices (all slices when there are fewer
   than 3).  The reference then z-crops to the contiguous run of slices holding signal after
   step 2, before it resizes and normalises, so the range clip and the normalisation
   statistics use that run only; we do the same.
2. Voxels under ``crop_threshold`` x the interior slices' max are set to 0 (on every slice).
3. Rows and columns are cropped to the box of non-zero voxels on the statistics slices
   (the whole image when there are none), then padded with zeros to a square (floor/ceil split).
4. Every channel plane is resized to ``size`` x ``size`` (spline order 2, zero outside,
   no anti-aliasing) and the result clipped once to the statistics slices' [min, max] before
   the resize -- what the reference's single ``resize`` call of the whole volume clips to
   (widened to 0 the way ``skimage`` does when no voxel was 0).  The mask is resized with
   order 0.
5. Values are clipped to the ``clip_percentiles`` (10th, 99th) of the statistics slices
   (all channels pooled) and scaled to [0, 1], then each channel is z-scored with the mean and
   standard deviation of the statistics slices.

Where we still differ from the reference:

- We keep and return every slice (no z-crop, first and last slices kept), so that a prediction
  maps back slice for slice onto the original stack; the slices the reference drops get the
  same threshold, crop, clip and z-score as the others, computed without them.
  ``Geometry`` records what ``to_original`` needs to undo the crop, pad and resize.
- One 2-D resize per channel plane instead of one 3-D resize of the volume (the same values to
  rounding: the 3-D spline samples the slice and channel axes at their own knots, five times
  slower), in float32 instead of float64 and on the 0-255 scale instead of 0-1 (the z-scores
  do not depend on the scale; the output matches the reference's to ~1e-6).
- Volumes the reference cannot handle get a fallback: fewer than 3 slices (statistics over
  all of them), no voxel above the threshold (whole image kept, no z-crop) and equal
  percentiles (all zeros); a zero standard deviation divides by 1.
- ``statistics="all"`` takes the statistics over every slice with no z-crop instead (not the
  reference; for comparison).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from skimage.transform import resize

from unet.io.kaggle import CHANNELS, FLAIR

if TYPE_CHECKING:
    from unet.config import PrepareConfig



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
    peak = volume.max()
    return signal_box(volume >= threshold * peak if peak > 0 else np.zeros(volume.shape, bool))


def signal_box(signal: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the rows/columns where an (S, H, W, C) volume is non-zero (all if nowhere)."""
    # (S, H, W, C) -> (H, W): is any slice/channel non-zero here?
    bright = signal.any(axis=(0, 3))
    if not bright.any():
        return 0, signal.shape[1], 0, signal.shape[2]
    rows = np.flatnonzero(bright.any(axis=1))
    cols = np.flatnonzero(bright.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def square_padding(height: int, width: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) that pads the short side to the long one, split floor/ceil."""
    diff = abs(height - width)
    before, after = diff // 2, diff - diff // 2
    return (before, after, 0, 0) if height < width else (0, 0, before, after)


STATISTICS = ("reference", "all")


def statistics_slices(signal: np.ndarray, statistics: str = "reference") -> slice:
    """The slices whose statistics preprocess every slice, from the (S, ...) thresholded volume.

    ``"reference"``: the interior slices (all when fewer than 3), narrowed to the contiguous run
    of them holding any non-zero voxel (the reference's z-crop; no narrowing when none does).
    ``"all"``: every slice.
    """
    if statistics not in STATISTICS:
        raise ValueError(f"statistics must be one of {STATISTICS}, got {statistics!r}")
    n = signal.shape[0]
    if statistics == "all":
        return slice(0, n)
    lo, hi = (1, n - 1) if n >= 3 else (0, n)
    held = np.flatnonzero(signal[lo:hi].reshape(hi - lo, -1).any(axis=1))
    return slice(lo + int(held[0]), lo + int(held[-1]) + 1) if held.size else slice(lo, hi)


def preprocess_volume(
    image: np.ndarray,
    mask: np.ndarray | None,
    *,
    size: int,
    crop_threshold: float = 0.1,
    clip_percentiles: tuple[float, float] = (10.0, 99.0),
    statistics: str = "reference",
) -> tuple[np.ndarray, np.ndarray | None, Geometry]:
    """(S, H, W, 3) uint8 image and (S, H, W) 0/1 mask (or None, for inference) ->
    float32 (S, size, size, 3), uint8 (S, size, size) mask (or None) and the geometry.

    Every slice is returned; the statistics come from ``statistics_slices`` (module docstring).
    """
    if image.ndim != 4 or image.shape[-1] != 3 or (mask is not None and image.shape[:3] != mask.shape):
        shapes = f"{image.shape}" + ("" if mask is None else f" and {mask.shape}")
        raise ValueError(f"expected image (S, H, W, 3) and mask (S, H, W) of the same S, H, W; got {shapes}")
    if statistics not in STATISTICS:
        raise ValueError(f"statistics must be one of {STATISTICS}, got {statistics!r}")
    n = image.shape[0]
    interior = slice(1, n - 1) if statistics == "reference" and n >= 3 else slice(0, n)
    # a float64 threshold compared with the integers, exactly as the reference does on its uint8 volume
    limit = crop_threshold * float(image[interior].max())
    signal = (image >= limit) & (image > 0)  # what survives the zeroing, non-zero
    keep = statistics_slices(signal, statistics)
    y0, y1, x0, x1 = signal_box(signal[keep])
    top, bottom, left, right = square_padding(y1 - y0, x1 - x0)
    geometry = Geometry(
        image.shape[1], image.shape[2], y0, y1, x0, x1, top, bottom, left, right, size
    )
    pad = ((0, 0), (top, bottom), (left, right))
    cropped = np.where(signal[:, y0:y1, x0:x1], image[:, y0:y1, x0:x1], 0).astype(np.float32)
    cropped = np.pad(cropped, pad + ((0, 0),))
    volume = _resize_planes(cropped, size)
    low, high = float(cropped[keep].min()), float(cropped[keep].max())
    if low > 0 and volume[keep].min() <= 0 <= volume[keep].max():
        low = 0.0  # skimage's clip keeps its cval (0) when the output reaches it
    np.clip(volume, low, high, out=volume)
    out_mask = None
    if mask is not None:
        cropped_mask = np.pad(mask[:, y0:y1, x0:x1], pad)
        out_mask = np.stack(
            [resize(m, (size, size), order=0, mode="constant", cval=0, anti_aliasing=False, preserve_range=True)
             for m in cropped_mask]
        ).astype(np.uint8)
    return normalise(volume, clip_percentiles, keep), out_mask, geometry


def _resize_planes(volume: np.ndarray, size: int) -> np.ndarray:
    """(S, h, w, C) float32 -> (S, size, size, C): an order-2 spline resize of each 2-D channel plane.

    The reference resizes the whole volume in one 3-D call; its spline samples the slice and
    channel axes at their own knots, so the values are the same (to rounding), five times slower.
    Each plane is resized with ``clip=False``: skimage would otherwise clip every plane to its own
    range, where the reference's one call clips to the volume's -- the caller clips once instead.
    """
    out = np.empty((volume.shape[0], size, size, volume.shape[-1]), np.float32)
    for k in range(volume.shape[0]):
        for c in range(volume.shape[-1]):
            out[k, ..., c] = resize(
                volume[k, ..., c], (size, size), order=2, mode="constant", cval=0,
                anti_aliasing=False, clip=False,
            )
    return out


def normalise(
    volume: np.ndarray, clip_percentiles: tuple[float, float], statistics: slice = slice(None)
) -> np.ndarray:
    """Clip to the percentiles of ``volume[statistics]``, scale to [0, 1], then z-score each channel
    with the mean and standard deviation of ``volume[statistics]`` (all slices by default)."""
    low, high = (float(v) for v in np.percentile(volume[statistics], clip_percentiles))
    scaled = np.clip(volume, low, high, dtype=np.float32)
    if high > low:
        scaled -= low
        scaled /= high - low
    else:
        scaled[...] = 0.0
    # float64 accumulators: a float32 sum over the slice, row and column axes (channels last)
    # adds row by row, with errors of ~1e-3 on a 256 x 256 volume
    mean = scaled[statistics].mean(axis=(0, 1, 2), dtype=np.float64)
    std = scaled[statistics].std(axis=(0, 1, 2), dtype=np.float64)
    scaled -= mean.astype(np.float32)
    scaled /= np.where(std > 0, std, 1.0).astype(np.float32)
    return scaled


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


def preprocess_metadata(config: PrepareConfig) -> dict[str, Any]:
    """What inference needs to preprocess new volumes the way the training data was."""
    return {"image_size": config.image_size, "crop_threshold": config.crop_threshold,
            "clip_percentiles": list(config.clip_percentiles), "statistics": "reference"}
