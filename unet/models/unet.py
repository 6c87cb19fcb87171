"""The two U-Nets, picked by ``variant``, and a factory that rebuilds either from its ``config``.

* ``reference``: the published brain-segmentation U-Net (mateuszbuda/brain-segmentation-pytorch),
  padded convs + BatchNorm, 3 -> 1 channels, 32 features: 7,763,041 parameters. Its state-dict
  keys and shapes are the published ones (``unet/resources/reference_unet_state_dict.json``).
* ``paper``: Ronneberger et al. 2015, unpadded convs, 64 features, dropout at the end of the
  contracting path, He init, 2-class output; its output is smaller than its input (572 -> 388).

Both ``forward`` methods return LOGITS (B, out_channels, H', W'); ``predict_proba`` turns them
into probabilities (sigmoid for one channel, softmax over channels otherwise).
``load_reference_weights`` wraps a reference net loaded from published weights so that it gives
what the published net gives: sigmoid probabilities.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from typing import Any

import torch
from torch import nn

from unet.models.blocks import (
    center_crop,
    check_paper_size,
    mirror_pad,
    tile_starts,
    check_reference_size,
    he_normal_,
    paper_block,
    paper_output_size,
    paper_valid_input_size,
    paper_valid_inputs_near,
    reference_block,
)
from unet.models.probability import probabilities

__all__ = [
    "DEFAULTS",
    "PaperUNet",
    "ReferenceProbabilities",
    "ReferenceUNet",
    "build_model",
    "load_reference_weights",
    "mirror_pad",
    "paper_output_size",
    "paper_valid_input_size",
    "predict_tiled",
    "probabilities",
    "reference_state_dict_shapes",
]

# Per-variant defaults for the arguments left as None.
DEFAULTS: dict[str, dict[str, int]] = {
    "reference": {"features": 32, "out_channels": 1},
    "paper": {"features": 64, "out_channels": 2},
}


def _check_args(variant: str, in_channels: int, out_channels: int, features: int, depth: int,
                dropout: float) -> None:
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("features", features)):
        if value <= 0:
            raise ValueError(f"{variant} U-Net: {name} is {value}; it must be a positive integer")
    if depth < 1:
        raise ValueError(f"{variant} U-Net: depth is {depth}; use 1 or more (4 in both papers)")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"{variant} U-Net: dropout is {dropout}; use a probability in [0, 1), e.g. 0.5")


class _UNet(nn.Module):
    """What both variants share: the config, the input check and ``predict_proba``."""

    config: dict[str, Any]

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.config["in_channels"]:
            raise ValueError(
                f"{self.config['variant']} U-Net expects (B, {self.config['in_channels']}, H, W), "
                f"got {tuple(x.shape)}"
            )

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities (B, out_channels, H', W') for a batch, without gradients."""
        return probabilities(self(x))


class ReferenceUNet(_UNet):
    """Padded U-Net with BatchNorm and the published submodule names; returns logits."""

    def __init__(self, in_channels: int = 3, out_channels: int = 1, features: int = 32, depth: int = 4,
                 dropout: float = 0.5) -> None:
        super().__init__()
        _check_args("reference", in_channels, out_channels, features, depth, dropout)
        # dropout is kept in the config only so that every variant takes the same arguments.
        self.config = dict(variant="reference", in_channels=in_channels, out_channels=out_channels,
                           features=features, depth=depth, dropout=dropout)
        self.depth = depth
        widths = [features * 2**i for i in range(depth + 1)]  # 32, 64, 128, 256 | 512
        for level in range(1, depth + 1):
            c_in = in_channels if level == 1 else widths[level - 2]
            self.add_module(f"encoder{level}", reference_block(c_in, widths[level - 1], f"enc{level}"))
            self.add_module(f"pool{level}", nn.MaxPool2d(kernel_size=2, stride=2))
        self.bottleneck = reference_block(widths[depth - 1], widths[depth], "bottleneck")
        for level in range(depth, 0, -1):
            c = widths[level - 1]
            self.add_module(f"upconv{level}", nn.ConvTranspose2d(2 * c, c, kernel_size=2, stride=2))
            self.add_module(f"decoder{level}", reference_block(2 * c, c, f"dec{level}"))
        self.conv = nn.Conv2d(features, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        check_reference_size(x.shape[-2], self.depth, "height")
        check_reference_size(x.shape[-1], self.depth, "width")
        skips = []
        for level in range(1, self.depth + 1):
            x = self.get_submodule(f"encoder{level}")(x)  # (B, F*2^(l-1), H/2^(l-1), W/2^(l-1))
            skips.append(x)
            x = self.get_submodule(f"pool{level}")(x)
        x = self.bottleneck(x)  # (B, F*2^depth, H/2^depth, W/2^depth)
        for level in range(self.depth, 0, -1):
            x = self.get_submodule(f"upconv{level}")(x)  # channels halved, size doubled
            x = self.get_submodule(f"decoder{level}")(torch.cat((x, skips[level - 1]), dim=1))
        return self.conv(x)  # (B, out_channels, H, W) logits


class PaperUNet(_UNet):
    """Ronneberger's unpadded U-Net; returns logits, ``paper_output_size`` px a side smaller input."""

    def __init__(self, in_channels: int = 3, out_channels: int = 2, features: int = 64, depth: int = 4,
                 dropout: float = 0.5) -> None:
        super().__init__()
        _check_args("paper", in_channels, out_channels, features, depth, dropout)
        self.config = dict(variant="paper", in_channels=in_channels, out_channels=out_channels,
                           features=features, depth=depth, dropout=dropout)
        self.depth = depth
        widths = [features * 2**i for i in range(depth + 1)]  # 64, 128, 256, 512 | 1024
        self.encoders = nn.ModuleList(
            paper_block(in_channels if i == 0 else widths[i - 1], widths[i]) for i in range(depth)
        )
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.bottleneck = paper_block(widths[depth - 1], widths[depth])
        self.dropout = nn.Dropout(dropout)  # "drop-out layers at the end of the contracting path"
        self.upconvs = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], kernel_size=2, stride=2) for i in reversed(range(depth))
        )
        self.decoders = nn.ModuleList(paper_block(2 * widths[i], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(features, out_channels, kernel_size=1)
        he_normal_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        check_paper_size(x.shape[-2], self.depth, "paper U-Net input height")
        check_paper_size(x.shape[-1], self.depth, "paper U-Net input width")
        skips = []
        for encoder in self.encoders:
            x = encoder(x)  # (B, F_l, S - 4, S - 4)
            skips.append(x)
            x = self.pool(x)  # (B, F_l, (S - 4) / 2, ...)
        x = self.dropout(self.bottleneck(x))  # (B, F*2^depth, s, s)
        for upconv, decoder, skip in zip(self.upconvs, self.decoders, reversed(skips)):
            x = upconv(x)  # channels halved, size doubled
            x = decoder(torch.cat((center_crop(skip, *x.shape[-2:]), x), dim=1))  # size - 4
        return self.head(x)  # (B, out_channels, H', W') logits


VARIANTS: dict[str, type[_UNet]] = {"reference": ReferenceUNet, "paper": PaperUNet}


def build_model(variant: str, *, in_channels: int = 3, out_channels: int | None = None,
                features: int | None = None, depth: int = 4, dropout: float = 0.5) -> nn.Module:
    """A fresh U-Net; None takes the variant's default. ``build_model(**model.config)`` rebuilds one."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown model variant {variant!r}: use one of {sorted(VARIANTS)}")
    defaults = DEFAULTS[variant]
    return VARIANTS[variant](
        in_channels=in_channels,
        out_channels=defaults["out_channels"] if out_channels is None else out_channels,
        features=defaults["features"] if features is None else features,
        depth=depth,
        dropout=dropout,
    )


# ---- the published weights ------------------------------------------------------------------


class ReferenceProbabilities(nn.Module):
    """The published net's forward: sigmoid of a ReferenceUNet's logits."""

    def __init__(self, unet: ReferenceUNet) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return probabilities(self.unet(x))


def reference_state_dict_shapes() -> dict[str, list[int]]:
    """The published net's state-dict keys and shapes, as shipped in ``unet/resources``."""
    text = resources.files("unet").joinpath("resources/reference_unet_state_dict.json").read_text()
    return json.loads(text)


def _offenders(state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size]) -> list[str]:
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [k for k in expected if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k])]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing, e.g. {missing[:3]}")
    if unexpected:
        hint = " (saved from DataParallel? strip the 'module.' prefix)" if all(
            k.startswith("module.") for k in unexpected) else ""
        problems.append(f"{len(unexpected)} unexpected, e.g. {unexpected[:3]}{hint}")
    if misshaped:
        problems.append("mis-shaped: " + ", ".join(
            f"{k} is {list(state_dict[k].shape)}, expected {list(expected[k])}" for k in misshaped[:3]))
    return problems


def load_reference_weights(state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """The published net (sigmoid probabilities out) in eval mode, from its published state dict."""
    unet = ReferenceUNet()
    expected = {k: v.shape for k, v in unet.state_dict().items()}
    problems = _offenders(state_dict, expected)
    if problems:
        raise ValueError(
            "state dict does not match the published brain-segmentation U-Net "
            "(3 -> 1 channels, 32 features, depth 4; keys in unet/resources/reference_unet_state_dict.json): "
            + "; ".join(problems)
        )
    unet.load_state_dict(dict(state_dict))
    return ReferenceProbabilities(unet).eval()


# ---- overlap-tile inference (paper) ---------------------------------------------------------


@torch.no_grad()
def predict_tiled(model: nn.Module, image: torch.Tensor, tile_out: int | None = None) -> torch.Tensor:
    """Overlap-tile prediction of the paper U-Net: probabilities (B, classes, H, W) for any H, W.

    The input is mirrored (reflect) on every side by the net's margin, so every output pixel has
    its full context; output tiles of ``tile_out`` px (a valid output size; None: one tile that
    covers the image) are predicted one at a time and stitched. Tiles start at multiples of
    2**depth, so the max-pools see the same grid as one big tile: the result equals one big-tile
    run on the same mirrored input (neighbouring tiles overlap by ``tile_out mod 2**depth`` px).
    The model runs in eval mode (no dropout) and is put back in the mode it was in.
    """
    if not isinstance(model, PaperUNet):
        raise ValueError(
            f"predict_tiled needs the paper U-Net, got {type(model).__name__}: a padded U-Net keeps "
            "the input size, so call model.predict_proba(image) on the whole image"
        )
    if image.ndim != 4:
        raise ValueError(f"predict_tiled expects an image batch (B, C, H, W), got shape {tuple(image.shape)}")
    depth, (b, _, h, w) = model.depth, image.shape
    if tile_out is None:
        tile_out = check_paper_size(paper_valid_input_size(max(h, w), depth), depth)
    tile_in = paper_valid_input_size(tile_out, depth)
    if check_paper_size(tile_in, depth) != tile_out:
        below = [check_paper_size(s, depth) for s in paper_valid_inputs_near(tile_in - 1, depth)]
        raise ValueError(f"tile_out {tile_out} is not an output size of the depth-{depth} paper U-Net: "
                         f"use {' or '.join(map(str, dict.fromkeys(below)))}")
    step = tile_out - tile_out % 2**depth
    if step == 0:
        raise ValueError(f"tile_out {tile_out} is below 2**depth = {2**depth}: use a larger tile")
    margin = (tile_in - tile_out) // 2
    rows, cols = tile_starts(h, tile_out, step), tile_starts(w, tile_out, step)
    padded = mirror_pad(image, margin, rows[-1] + tile_out - h + margin, margin, cols[-1] + tile_out - w + margin)
    out = image.new_empty(b, model.config["out_channels"], rows[-1] + tile_out, cols[-1] + tile_out)
    was_training = model.training
    model.eval()
    try:
        for y in rows:
            for x in cols:
                logits = model(padded[:, :, y : y + tile_in, x : x + tile_in])  # (B, classes, tile_out, tile_out)
                out[:, :, y : y + tile_out, x : x + tile_out] = probabilities(logits)
    finally:
        model.train(was_training)
    return out[:, :, :h, :w]
