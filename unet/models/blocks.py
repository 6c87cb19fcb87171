"""The U-Nets' small parts: conv blocks, centre crop, He init, and the sizes each variant accepts.

Two kinds of block compose the models in ``unet.models.unet``:

* ``reference_block``: two padded 3x3 conv (no bias) + BatchNorm + ReLU, with the submodule names
  of the published brain-segmentation U-Net (``enc1conv1``, ``enc1norm1``, ``enc1relu1``, ...), so
  that a state dict saved by that code loads key for key;
* ``paper_block``: two unpadded 3x3 conv (with bias) + ReLU, each conv shrinking the map by 2 px,
  as in Ronneberger et al. 2015.

Mirror padding and tile starts serve overlap-tile inference. The size helpers say which input
sizes a variant accepts and, when one does not fit, which nearby sizes do, so that a model can
refuse a bad input with a message the user can act on.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn


def reference_block(in_channels: int, features: int, name: str) -> nn.Sequential:
    """(conv3x3 pad 1, no bias -> BatchNorm -> ReLU) x 2, named ``<name>conv1``, ``<name>norm1``, ..."""
    layers: list[tuple[str, nn.Module]] = []
    for i, c_in in enumerate((in_channels, features), start=1):
        layers += [
            (f"{name}conv{i}", nn.Conv2d(c_in, features, kernel_size=3, padding=1, bias=False)),
            (f"{name}norm{i}", nn.BatchNorm2d(features)),
            (f"{name}relu{i}", nn.ReLU(inplace=True)),
        ]
    return nn.Sequential(OrderedDict(layers))


def paper_block(in_channels: int, features: int) -> nn.Sequential:
    """(unpadded conv3x3 with bias -> ReLU) x 2: an (H, W) map comes out (H - 4, W - 4)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, features, kernel_size=3),
        nn.ReLU(inplace=True),
        nn.Conv2d(features, features, kernel_size=3),
        nn.ReLU(inplace=True),
    )


def center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The central (height, width) window of a (..., H, W) tensor (the paper's skip crop)."""
    h, w = x.shape[-2:]
    if height > h or width > w:
        raise ValueError(f"cannot centre-crop a {h}x{w} map to {height}x{width}: the crop must be smaller")
    top, left = (h - height) // 2, (w - width) // 2
    return x[..., top : top + height, left : left + width]


def he_normal_(module: nn.Module) -> None:
    """He init of the paper: weights ~ N(0, 2/N), N = incoming nodes of one output neuron; bias 0.

    A conv's neuron sees k*k*in_channels inputs. A transposed conv with stride s sees
    (k/s)^2 * in_channels of them: for the paper's 2x2 stride-2 up-conv that is in_channels.
    """
    for layer in module.modules():
        if isinstance(layer, nn.ConvTranspose2d):
            (kh, kw), (sh, sw) = layer.kernel_size, layer.stride
            fan_in = layer.in_channels * max(kh // sh, 1) * max(kw // sw, 1)
        elif isinstance(layer, nn.Conv2d):
            kh, kw = layer.kernel_size
            fan_in = layer.in_channels * kh * kw
        else:
            continue
        nn.init.normal_(layer.weight, mean=0.0, std=math.sqrt(2.0 / fan_in))
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


# ---- mirroring and tiling ------------------------------------------------------------------


def _mirror_index(n: int, start: int, stop: int) -> torch.Tensor:
    """Indices into range(n) for positions start..stop-1 of the signal mirrored at both edges
    without repeating the edge pixel ("reflect"), as many times over as needed."""
    positions = torch.arange(start, stop)
    if n == 1:
        return torch.zeros_like(positions)
    period = 2 * (n - 1)
    positions = positions.remainder(period)
    return torch.where(positions >= n, period - positions, positions)


def mirror_pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Reflect-pad a (..., H, W) tensor by any amount, even more than H or W (torch's pad cannot)."""
    h, w = x.shape[-2:]
    rows = _mirror_index(h, -top, h + bottom).to(x.device)
    cols = _mirror_index(w, -left, w + right).to(x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def tile_starts(size: int, tile_out: int, step: int) -> list[int]:
    """Starts of output tiles, ``step`` apart, until they cover ``size`` pixels."""
    count = -(-max(size - tile_out, 0) // step) + 1
    return [k * step for k in range(count)]



# ---- sizes the reference (padded) U-Net accepts ---------------------------------------------


def check_reference_size(size: int, depth: int, axis: str = "size") -> None:
    """The padded U-Net halves ``depth`` times: each side must be a multiple of 2**depth."""
    step = 2**depth
    if size < step or size % step:
        below, above = (size // step) * step, -(-size // step) * step
        nearest = [s for s in (below, above) if s >= step] or [step]
        raise ValueError(
            f"input {axis} {size} is not a multiple of 2**depth = {step} (depth {depth}): "
            f"pad or resize to {' or '.join(map(str, dict.fromkeys(nearest)))}"
        )


# ---- sizes the paper (unpadded) U-Net accepts -----------------------------------------------


def _paper_sizes(input_size: int, depth: int) -> int | None:
    """Output size for a valid input size, or None where a map goes odd before a pool or empty."""
    size = input_size
    for _ in range(depth):
        size -= 4
        if size <= 0 or size % 2:
            return None
        size //= 2
    size -= 4  # bottleneck
    for _ in range(depth):
        size = 2 * size - 4
        if size <= 0:
            return None
    return size


def _paper_input_for(bottom: int, depth: int) -> int:
    """The input size whose map is ``bottom`` px on entry to the bottleneck."""
    size = bottom
    for _ in range(depth):
        size = 2 * size + 4
    return size


def _smallest_bottom(depth: int) -> int:
    bottom = 1
    while _paper_sizes(_paper_input_for(bottom, depth), depth) is None:
        bottom += 1
    return bottom


def paper_valid_inputs_near(size: int, depth: int) -> list[int]:
    """The valid paper input sizes just below and just above ``size`` (the smallest if none below)."""
    bottom = _smallest_bottom(depth)
    while _paper_input_for(bottom + 1, depth) <= size:
        bottom += 1
    below = _paper_input_for(bottom, depth)
    if below > size:
        return [below]
    return [below, _paper_input_for(bottom + 1, depth)]


def check_paper_size(size: int, depth: int, axis: str = "input size") -> int:
    """Output side for an input side of the unpadded U-Net; ValueError naming the nearest valid ones."""
    if depth < 1:
        raise ValueError(f"depth {depth} is below 1: a U-Net needs at least one pooling level")
    output = _paper_sizes(size, depth)
    if output is None:
        near = " or ".join(map(str, paper_valid_inputs_near(size, depth)))
        raise ValueError(
            f"{axis} {size} does not fit the unpadded U-Net of depth {depth} "
            f"(a feature map would be odd before a 2x2 pool, or empty): use {near}"
        )
    return output


def paper_output_size(input_size: int, depth: int = 4) -> int:
    """Side of the paper U-Net's output for a side of ``input_size`` (572 -> 388 at depth 4).

    Raises ValueError naming the nearest valid input sizes where a map would be odd before a
    2x2 pool, or shrink to nothing.
    """
    return check_paper_size(input_size, depth)


def paper_valid_input_size(min_output: int, depth: int = 4) -> int:
    """The smallest valid input side whose output side is at least ``min_output``."""
    if depth < 1:
        raise ValueError(f"depth {depth} is below 1: a U-Net needs at least one pooling level")
    bottom = _smallest_bottom(depth)
    while _paper_sizes(_paper_input_for(bottom, depth), depth) < min_output:
        bottom += 1
    return _paper_input_for(bottom, depth)
