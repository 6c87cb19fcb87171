"""Elastic deformation of the U-Net paper (Ronneberger et al. 2015), in torch, batched.

Random displacement vectors on a coarse ``grid x grid`` lattice, drawn from N(0, sigma^2) pixels,
are interpolated bicubically to a dense per-pixel field, and the image, the mask and the weight
map are resampled through that one field together, so they can never drift apart:

    image   bicubic or bilinear (``image_mode``)
    mask    nearest: the output holds only the input's 0/1 values, in the input's dtype
    weight  bilinear: stays within the input's range, so a positive map stays positive

Conventions (what a caller needs to build or read a displacement by hand):

- The coarse nodes are aligned with the image corners: node (i, j) sits at pixel
  (i * (H - 1) / (grid - 1), j * (W - 1) / (grid - 1)), so the corner nodes are the corner pixels.
  The dense field equals the coarse value exactly at every node that falls on a pixel (e.g. all
  nine for H = W = 33, grid = 3; the four corners for 256 px).
- Bicubic means torch's ``F.interpolate(mode="bicubic", align_corners=True)`` (Keys' cubic
  convolution, a = -0.75, edge nodes replicated). It is separable and linear, so it is computed as
  ``A_H @ coarse @ A_W^T`` with two small (size, grid) weight matrices, built by running
  ``F.interpolate`` on unit vectors: the same numbers at a tenth of the cost.
- A displacement is a (B, H, W, 2) tensor in pixels, channel 0 along x (columns, width),
  channel 1 along y (rows, height): grid_sample's order. It is a backward map:
  ``out[y, x] = in[y + d_y(y, x), x + d_x(y, x)]``, like ``scipy.ndimage.map_coordinates``.
- Border: one ``padding_mode`` for all three, so what is pulled in from beyond the edge is the same
  tissue in the image, the mask and the weight map. The default is ``"reflection"`` (mirror about
  the edge pixel centres, scipy's ``mode="mirror"``), the U-Net paper's own choice for tile
  borders. Prepared images are z-scored, so their background is not 0 and ``"zeros"`` would paint
  a frame at the volume mean; ``"border"`` smears the edge row into streaks where the brain
  touches the crop box. Reflection keeps the intensity distribution and the anatomy plausible.
- Randomness: coarse vectors are drawn on the CPU (from ``generator``, else torch's global one)
  and then moved to the image's device, so one seed gives one deformation on the CPU and the GPU.

`deform_copies` is the numpy-facing entry point of the ``augment`` stage.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "coarse_displacement",
    "dense_displacement",
    "random_displacement",
    "sampling_grid",
    "elastic_deform",
    "deform_copies",
]

logger = logging.getLogger(__name__)

ImageMode = Literal["bicubic", "bilinear"]
PaddingMode = Literal["reflection", "border", "zeros"]
_IMAGE_MODES = ("bicubic", "bilinear")
_PADDING_MODES = ("reflection", "border", "zeros")
_OUT_DTYPES = ("float16", "float32")


def _check_params(grid: int, sigma: float) -> None:
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 2:
        raise ValueError(f"elastic: grid must be an integer >= 2 (nodes per side), got {grid!r}; the paper uses 3.")
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma >= 0):
        raise ValueError(
            f"elastic: sigma must be a finite number >= 0 (pixels), got {sigma!r}; "
            "the paper uses 10, and 0 gives no deformation."
        )


def _check_size(height: int, width: int) -> None:
    if height < 2 or width < 2:
        raise ValueError(f"elastic: images must be at least 2x2 pixels, got {height}x{width}.")


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
    if batch < 0:
        raise ValueError(f"elastic: batch must be >= 0, got {batch}.")
    noise = torch.randn(batch, 2, grid, grid, generator=generator, dtype=dtype)
    return noise * sigma


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


def sampling_grid(displacement: torch.Tensor) -> torch.Tensor:
    """Pixel displacement (B, H, W, 2) -> grid for ``F.grid_sample(..., align_corners=True)``."""
    _, height, width, _ = displacement.shape
    _check_size(height, width)
    kw = {"device": displacement.device, "dtype": displacement.dtype}
    xs = torch.arange(width, **kw)  # (W,)
    ys = torch.arange(height, **kw)[:, None]  # (H, 1)
    grid = torch.empty_like(displacement, memory_format=torch.contiguous_format)
    torch.add(displacement[..., 0], xs, out=grid[..., 0]).mul_(2.0 / (width - 1)).sub_(1.0)
    torch.add(displacement[..., 1], ys, out=grid[..., 1]).mul_(2.0 / (height - 1)).sub_(1.0)
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
            raise ValueError(f"elastic: {name} is on {t.device} but the image on {image.device}; move both to one device.")
    if weight is not None and not weight.is_floating_point():
        raise ValueError(f"elastic: weight must be a float tensor, got {weight.dtype}; convert it with .float().")
    if mask is not None and mask.dtype != torch.bool:
        stray = (mask != 0) & (mask != 1)
        if stray.any():
            bad = mask[stray][0].item()
            raise ValueError(
                f"elastic: mask must be binary (0/1 or bool), found value {bad!r} (dtype {mask.dtype}); "
                "threshold it first, e.g. (mask > 0).to(torch.uint8)."
            )
    if displacement is not None and tuple(displacement.shape) != (batch, height, width, 2):
        raise ValueError(
            f"elastic: displacement shape {tuple(displacement.shape)} does not match the image; "
            f"it must be {(batch, height, width, 2)} in pixels (x, y)."
        )


def _warp(t: torch.Tensor, grid: torch.Tensor, mode: str, padding_mode: str) -> torch.Tensor:
    return F.grid_sample(t, grid.to(t.dtype), mode=mode, padding_mode=padding_mode, align_corners=True)


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
    _check_params(grid, sigma)
    if image_mode not in _IMAGE_MODES:
        raise ValueError(f"elastic: image_mode {image_mode!r} is not one of {_IMAGE_MODES}.")
    if padding_mode not in _PADDING_MODES:
        raise ValueError(f"elastic: padding_mode {padding_mode!r} is not one of {_PADDING_MODES}.")
    _check_inputs(image, mask, weight, displacement)
    batch, _, height, width = image.shape
    if displacement is None:
        displacement = random_displacement(
            batch, height, width, grid=grid, sigma=sigma, generator=generator, device=image.device
        )
    coords = sampling_grid(displacement.to(image.device))  # (B, H, W, 2) in [-1, 1] inside the image
    out_image = _warp(image, coords, image_mode, padding_mode)
    out_mask = None
    if mask is not None:
        out_mask = _warp(mask.to(image.dtype), coords, "nearest", padding_mode).to(mask.dtype)
    out_weight = None if weight is None else _warp(weight, coords, "bilinear", padding_mode)
    return out_image, out_mask, out_weight


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
            raise ValueError(
                f"elastic: {name} shape {a.shape} does not match images {images.shape}; it must be {expected}."
            )
    if not np.issubdtype(weights.dtype, np.floating):
        raise ValueError(f"elastic: weights must be a float array, got {weights.dtype}; use the weight-map stack.")
    if masks.dtype != bool:
        stray = (masks != 0) & (masks != 1)
        if stray.any():
            raise ValueError(
                f"elastic: masks must be binary (0/1 or bool), found value {masks[stray][0].item()!r} "
                f"(dtype {masks.dtype}); threshold them first, e.g. (masks > 0).astype(np.uint8)."
            )


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
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    dtype: Literal["float16", "float32"] = "float16",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`copies` elastic copies of each slice: images (copies, N, H, W, C), masks uint8, weights.

    Images and weights come out in `dtype`, masks as 0/1 uint8. Copy k of slice i depends only
    on (seed, k, i, grid, sigma): not on batch_size, device, N or copies, so adding copies or
    slices later keeps the existing ones. Call it once for a whole split, or vary `seed` between
    calls, else slice i of every call gets the same field.
    """
    _check_params(grid, sigma)
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 0:
        raise ValueError(f"elastic: copies must be an integer >= 0, got {copies!r}; 0 writes no copies.")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"elastic: seed must be an integer >= 0, got {seed!r}.")
    if batch_size < 1:
        raise ValueError(f"elastic: batch_size must be >= 1, got {batch_size}; 64 suits a CPU.")
    if dtype not in _OUT_DTYPES:
        raise ValueError(f"elastic: dtype {dtype!r} is not one of {_OUT_DTYPES}.")
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
        image = torch.from_numpy(images[start:stop]).to(device, torch.float32).permute(0, 3, 1, 2).contiguous()  # (b, C, H, W)
        mask = torch.from_numpy(masks[start:stop].astype(np.uint8)).to(device)[:, None]  # (b, 1, H, W)
        weight = torch.from_numpy(weights[start:stop]).to(device, torch.float32)[:, None]  # (b, 1, H, W)
        for k in range(copies):
            field = dense_displacement(coarse[k, start:stop].to(device), height, width)
            warped, warped_mask, warped_weight = elastic_deform(
                image, mask, weight, image_mode=image_mode, padding_mode=padding_mode, displacement=field
            )
            out_images[k, start:stop] = warped.permute(0, 2, 3, 1).cpu().numpy()
            out_masks[k, start:stop] = warped_mask[:, 0].cpu().numpy()
            out_weights[k, start:stop] = warped_weight[:, 0].cpu().numpy()
        logger.debug("elastic: slices %d-%d of %d, %d copies", start, stop - 1, n, copies)
    return out_images, out_masks, out_weights
