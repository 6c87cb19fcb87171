"""Elastic deformation of the U-Net paper (Ronneberger et al. 2015), in torch, batched, CPU or GPU.

Displacements on a coarse ``grid x grid`` lattice, drawn from N(0, sigma^2) pixels, are
interpolated bicubically to every pixel; image, mask and weight map go through that one field
together, so they never drift apart: the image bicubic or bilinear (``image_mode``), the mask
nearest (only the input's 0/1 values come out, in its dtype), the weight map bilinear (it stays
within the input's range, so a positive map stays positive).

Conventions:
- Coarse nodes sit on the image corners: node (i, j) at pixel (i (H-1)/(grid-1), j (W-1)/(grid-1)).
  The dense field equals the coarse value exactly at every node that falls on a pixel (all nine
  for H = W = 33, grid = 3; the four corners at 256 px).
- Bicubic is torch's ``F.interpolate(mode="bicubic", align_corners=True)`` (Keys, a = -0.75, edge
  nodes replicated), computed as ``A_H @ coarse @ A_W^T`` with (size, grid) weight matrices got by
  interpolating unit vectors: the same numbers at a tenth of the cost.
- A displacement is (B, H, W, 2) in pixels, [..., 0] along x (columns), [..., 1] along y (rows),
  grid_sample's order; a backward map, ``out[y, x] = in[y + dy, x + dx]``, as in
  ``scipy.ndimage.map_coordinates``.
- Border: one ``padding_mode`` for all three, so what comes in from beyond the edge is the same
  tissue in image, mask and weight map. Default ``"reflection"``, mirrored about the edge pixel
  centres (scipy's ``mode="mirror"``), as the U-Net paper mirrors tile borders. Prepared images are
  z-scored, so their background is not 0: ``"zeros"`` would paint a frame at the volume mean, and
  ``"border"`` smears the edge row into streaks where the brain touches the crop box.
- Coarse vectors are drawn on the CPU (``generator``, else torch's global one) and moved to the
  image's device, so one seed gives one deformation on the CPU and on a GPU.

`deform_copies` is the numpy-facing entry point of the ``augment`` stage.
"""

from __future__ import annotations

import logging
import math
import numbers
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "coarse_displacement", "dense_displacement", "random_displacement", "sampling_grid",
    "elastic_deform", "deform_copies",
]

logger = logging.getLogger(__name__)

ImageMode = Literal["bicubic", "bilinear"]
PaddingMode = Literal["reflection", "border", "zeros"]
OutDtype = Literal["float16", "float32"]
_CPU_BATCH = 4
_DEVICE_BATCH = 256


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_params(grid: int, sigma: float, image_mode: str = "bicubic", padding_mode: str = "zeros") -> None:
    if not _is_int(grid) or grid < 2:
        raise ValueError(f"elastic: grid must be an integer >= 2 (nodes per side), got {grid!r}; the paper uses 3.")
    if not (isinstance(sigma, numbers.Real) and math.isfinite(sigma) and sigma >= 0):
        raise ValueError(
            f"elastic: sigma must be a finite number >= 0 (pixels), got {sigma!r}; "
            "the paper uses 10, and 0 gives no deformation."
        )
    for name, value, allowed in (("image_mode", image_mode, ImageMode), ("padding_mode", padding_mode, PaddingMode)):
        if value not in get_args(allowed):
            raise ValueError(f"elastic: {name} {value!r} is not one of {get_args(allowed)}.")


def _check_size(height: int, width: int) -> None:
    if height < 2 or width < 2:
        raise ValueError(f"elastic: images must be at least 2x2 pixels, got {height}x{width}.")


def _check_binary(mask: torch.Tensor | np.ndarray, name: str, fix: str) -> None:
    """Refuse a mask, torch or numpy, that holds anything but 0 and 1."""
    stray = (mask != 0) & (mask != 1)
    if stray.any():
        raise ValueError(
            f"elastic: {name} must be binary (0/1 or bool), found value {mask[stray][0].item()!r} "
            f"(dtype {mask.dtype}); threshold it first, e.g. {fix}."
        )


def coarse_displacement(
    batch: int,
    *,
    grid: int = 3,
    sigma: float = 10.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(B, 2, grid, grid) CPU tensor of N(0, sigma^2) pixel displacements at the coarse nodes.

    Channel 0 is along x (columns), channel 1 along y (rows); ``[b, c, i, j]`` is node row i, column j.
    """
    _check_params(grid, sigma)
    return torch.randn(batch, 2, grid, grid, generator=generator, dtype=dtype) * sigma


def _interpolation_matrix(nodes: int, size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(size, nodes): row p holds the bicubic weights of the nodes at pixel p (corner-aligned)."""
    units = torch.eye(nodes, device=device, dtype=dtype).view(nodes, 1, nodes, 1)  # node k = 1
    weights = F.interpolate(units, size=(size, 1), mode="bicubic", align_corners=True)  # (nodes, 1, size, 1)
    return weights[:, 0, :, 0].T.contiguous()


def dense_displacement(coarse: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bicubic upsampling of a (B, 2, g, g) coarse field to a (B, H, W, 2) per-pixel field, in pixels."""
    if coarse.ndim != 4 or coarse.shape[1] != 2 or coarse.shape[2] != coarse.shape[3]:
        raise ValueError(
            f"elastic: a coarse displacement must be (B, 2, grid, grid), got shape {tuple(coarse.shape)}; "
            "build one with coarse_displacement()."
        )
    _check_size(height, width)
    nodes = coarse.shape[2]
    rows = _interpolation_matrix(nodes, height, coarse.device, coarse.dtype)  # (H, g)
    cols = _interpolation_matrix(nodes, width, coarse.device, coarse.dtype)  # (W, g)
    dense = rows @ coarse @ cols.T  # (B, 2, H, W)
    return dense.permute(0, 2, 3, 1)  # (B, H, W, 2)


def random_displacement(
    batch: int,
    height: int,
    width: int,
    *,
    grid: int = 3,
    sigma: float = 10.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(B, H, W, 2) dense displacement in pixels (x, y), on `device`; `generator` is a CPU generator."""
    coarse = coarse_displacement(batch, grid=grid, sigma=sigma, generator=generator, dtype=dtype)
    return dense_displacement(coarse.to(device), height, width)


def _mirror(coords: torch.Tensor, last: int) -> torch.Tensor:
    """Fold pixel coordinates into [0, last], mirroring about 0 and `last` (period 2 * last)."""
    return last - (coords.abs().remainder(2 * last) - last).abs()


def sampling_grid(displacement: torch.Tensor, *, reflect: bool = False, pad: int = 0) -> torch.Tensor:
    """Pixel displacement (B, H, W, 2) -> grid for ``F.grid_sample(..., align_corners=True)``.

    reflect: mirror the points into the image first; pad: for an input padded by `pad` px a side.
    """
    _, height, width, _ = displacement.shape
    _check_size(height, width)
    kw = {"device": displacement.device, "dtype": displacement.dtype}
    grid = torch.empty(displacement.shape, **kw)
    for axis, size, base in ((0, width, torch.arange(width, **kw)), (1, height, torch.arange(height, **kw)[:, None])):
        coords = displacement[..., axis] + base  # (B, H, W) pixels
        coords = _mirror(coords, size - 1) if reflect else coords
        torch.add(coords, pad, out=grid[..., axis]).mul_(2.0 / (size + 2 * pad - 1)).sub_(1.0)
    return grid


def _check_inputs(
    image: torch.Tensor, mask: torch.Tensor | None, weight: torch.Tensor | None, displacement: torch.Tensor | None
) -> None:
    if image.ndim != 4 or not image.is_floating_point():
        raise ValueError(
            f"elastic: image must be a float (B, C, H, W) tensor, got {image.dtype} of shape {tuple(image.shape)}; "
            "add a batch axis with image[None] and convert with .float()."
        )
    batch, _, height, width = image.shape
    _check_size(height, width)
    expected = (batch, 1, height, width)
    for name, t in (("mask", mask), ("weight", weight)):
        if t is not None and tuple(t.shape) != expected:
            raise ValueError(
                f"elastic: {name} shape {tuple(t.shape)} does not match the image {tuple(image.shape)}; "
                f"it must be {expected} (one channel, same batch and size)."
            )
        if t is not None and t.device != image.device:
            raise ValueError(f"elastic: {name} is on {t.device}, the image on {image.device}; use one device.")
    if weight is not None and not weight.is_floating_point():
        raise ValueError(f"elastic: weight must be a float tensor, got {weight.dtype}; convert it with .float().")
    if mask is not None:
        _check_binary(mask, "mask", "(mask > 0).to(torch.uint8)")
    if displacement is not None and tuple(displacement.shape) != (batch, height, width, 2):
        raise ValueError(
            f"elastic: displacement shape {tuple(displacement.shape)} does not match the image; "
            f"it must be {(batch, height, width, 2)} in pixels (x, y)."
        )


def _deform(
    image: torch.Tensor,
    mask: torch.Tensor | None,
    weight: torch.Tensor | None,
    displacement: torch.Tensor,
    image_mode: str,
    padding_mode: str,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The warp itself, on checked inputs: one grid for all three.

    Reflection is done on the coordinates, once a pixel, not by grid_sample once a tap (16 for
    bicubic, twice as slow as zero padding): the points are mirrored into the image, which gets a
    2-pixel mirrored rim (F.pad's "reflect" mirrors about the edge pixel too) for the taps next to
    the edge, and grid_sample's zero padding is never reached. Same values: a cubic or linear
    interpolant of a mirrored signal is itself mirrored.
    """
    _, _, height, width = image.shape
    pad = min(2, height - 1, width - 1) if padding_mode == "reflection" else 0
    coords = sampling_grid(displacement, reflect=pad > 0, pad=pad)  # (B, H, W, 2)

    def warp(t: torch.Tensor, mode: str) -> torch.Tensor:
        t = F.pad(t, (pad, pad, pad, pad), mode="reflect") if pad else t
        return F.grid_sample(
            t, coords.to(t.dtype), mode=mode, padding_mode="zeros" if pad else padding_mode, align_corners=True
        )

    out_image = warp(image, image_mode)
    out_mask = None if mask is None else warp(mask.to(image.dtype), "nearest").to(mask.dtype)
    out_weight = None if weight is None else warp(weight, "bilinear")
    return out_image, out_mask, out_weight


def elastic_deform(
    image: torch.Tensor,
    mask: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    *,
    grid: int = 3,
    sigma: float = 10.0,
    image_mode: ImageMode = "bicubic",
    padding_mode: PaddingMode = "reflection",
    generator: torch.Generator | None = None,
    displacement: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Warp image (B, C, H, W), mask and weight (B, 1, H, W) through one random elastic field.

    With `displacement` (B, H, W, 2, pixels) given, that field is used and grid, sigma and
    generator are ignored. Returns (image, mask, weight) in their input dtypes; None stays None.
    """
    _check_params(grid, sigma, image_mode, padding_mode)
    _check_inputs(image, mask, weight, displacement)
    batch, _, height, width = image.shape
    if displacement is None:
        displacement = random_displacement(
            batch, height, width, grid=grid, sigma=sigma, generator=generator, device=image.device
        )
    return _deform(image, mask, weight, displacement.to(image.device), image_mode, padding_mode)


def _copy_coarse(seed: int, copies: int, n: int, grid: int, sigma: float) -> torch.Tensor:
    """(copies, N, 2, g, g): copy k of slice i from its own stream, numpy SeedSequence([seed, k, i])."""
    coarse = np.empty((copies, n, 2, grid, grid), dtype=np.float64)
    for k in range(copies):
        for i in range(n):
            coarse[k, i] = np.random.default_rng([seed, k, i]).normal(0.0, sigma, size=(2, grid, grid))
    return torch.from_numpy(coarse).float()


def _check_arrays(images: np.ndarray, masks: np.ndarray, weights: np.ndarray) -> None:
    if images.ndim != 4 or not np.issubdtype(images.dtype, np.floating):
        raise ValueError(
            f"elastic: images must be a float (N, H, W, C) array, got {images.dtype} of shape {images.shape}; "
            "pass the prepared float16 stack."
        )
    expected = images.shape[:3]
    for name, a in (("masks", masks), ("weights", weights)):
        if a.shape != expected:
            raise ValueError(f"elastic: {name} shape {a.shape} does not match images {images.shape}: use {expected}.")
    if not np.issubdtype(weights.dtype, np.floating):
        raise ValueError(f"elastic: weights must be a float array, got {weights.dtype}; use the weight-map stack.")
    _check_binary(masks, "masks", "(masks > 0).astype(np.uint8)")


def deform_copies(
    images: np.ndarray,
    masks: np.ndarray,
    weights: np.ndarray,
    *,
    copies: int,
    grid: int = 3,
    sigma: float = 10.0,
    image_mode: ImageMode = "bicubic",
    padding_mode: PaddingMode = "reflection",
    seed: int = 0,
    batch_size: int | None = None,
    device: torch.device | str = "cpu",
    dtype: OutDtype = "float16",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`copies` elastic copies of each slice: images (copies, N, H, W, C), masks uint8, weights.

    Images and weights come out in `dtype`, masks as 0/1 uint8. Copy k of slice i depends only on
    (seed, k, i, grid, sigma), not on batch_size, device, N or copies: adding copies or slices
    later keeps the existing ones. Call it once for a whole split, or vary `seed` between calls,
    else slice i of every call gets the same field. batch_size None: 4 on the CPU (a batch then
    stays in cache, a third faster than 32), 256 on a GPU.
    """
    _check_params(grid, sigma, image_mode, padding_mode)
    if not _is_int(copies) or copies < 0:
        raise ValueError(f"elastic: copies must be an integer >= 0, got {copies!r}; 0 writes no copies.")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"elastic: seed must be an integer >= 0, got {seed!r}.")
    device = torch.device(device)
    if batch_size is None:
        batch_size = _CPU_BATCH if device.type == "cpu" else _DEVICE_BATCH
    if batch_size < 1:
        raise ValueError(f"elastic: batch_size must be >= 1, got {batch_size}; leave it None for a default.")
    if dtype not in get_args(OutDtype):
        raise ValueError(f"elastic: dtype {dtype!r} is not one of {get_args(OutDtype)}.")
    images, masks, weights = np.asarray(images), np.asarray(masks), np.asarray(weights)
    _check_arrays(images, masks, weights)
    n, height, width, channels = images.shape
    _check_size(height, width)
    out_images = np.empty((copies, n, height, width, channels), dtype=dtype)
    out_masks = np.empty((copies, n, height, width), dtype=np.uint8)
    out_weights = np.empty((copies, n, height, width), dtype=dtype)
    coarse = _copy_coarse(seed, copies, n, grid, sigma)  # (copies, N, 2, g, g), drawn up front
    for start in range(0, n if copies else 0, batch_size):
        stop = min(start + batch_size, n)
        # writable float32 copies (the inputs may be read-only memory maps), channels first
        image = np.ascontiguousarray(images[start:stop].transpose(0, 3, 1, 2), dtype=np.float32)
        image = torch.from_numpy(image).to(device)  # (b, C, H, W)
        mask = torch.from_numpy(masks[start:stop, None].astype(np.uint8)).to(device)  # (b, 1, H, W)
        weight = torch.from_numpy(weights[start:stop, None].astype(np.float32)).to(device)  # (b, 1, H, W)
        for k in range(copies):
            field = dense_displacement(coarse[k, start:stop].to(device), height, width)  # (b, H, W, 2)
            warped, warped_mask, warped_weight = _deform(image, mask, weight, field, image_mode, padding_mode)
            torch.from_numpy(out_images[k, start:stop]).copy_(warped.permute(0, 2, 3, 1))
            torch.from_numpy(out_masks[k, start:stop]).copy_(warped_mask[:, 0])
            torch.from_numpy(out_weights[k, start:stop]).copy_(warped_weight[:, 0])
        logger.debug("elastic: slices %d-%d of %d, %d copies", start, stop - 1, n, copies)
    return out_images, out_masks, out_weights
