"""The reference's training augmentations as batched torch transforms, for the training loop.

mateuszbuda/brain-segmentation-pytorch augments every training slice with a random zoom in
[0.95, 1.05], a rotation in [-15, 15] degrees and a horizontal flip with probability 0.5, one
slice at a time in its DataLoader workers. Here a whole batch is warped at once, on the device it
already sits on: one affine per sample, optionally composed with the U-Net paper's elastic field,
becomes ONE dense displacement per sample, and `unet.transforms.elastic.elastic_deform` resamples the image
(bilinear), the mask (nearest: exactly 0/1, in its dtype) and the weight map (bilinear) through it
together, one grid_sample call per tensor. There is one warping path in the package, not two.

Conventions:

- An affine is a (B, 2, 3) ``theta`` for ``F.affine_grid(theta, size, align_corners=True)``:
  it maps output coordinates to source coordinates, normalised to [-1, 1] at the corner pixel
  centres (elastic's convention too). `affine_matrix` builds it from per-sample parameters so that
  it is a true rotation in pixels also for non-square images.
- Output pixel p (x right, y down, about the image centre c) samples the input at
  ``c + R(angle) @ F @ (p - c) / zoom``, F = diag(-1, 1) when flipped: the reference's order, zoom
  then rotate then flip. zoom > 1 magnifies; a positive angle turns the picture counter-clockwise
  as displayed, like ``torch.rot90(k=1, dims=(-2, -1))`` and ``skimage.transform.rotate``.
- With an elastic field d (pixels, elastic's backward map) the output is the affine result warped
  by d: ``out(p) = in(T(p + d(p)))``, T the affine above.
- Randomness is drawn on the CPU from `generator` (else torch's global generator) in a fixed order,
  zoom, angle, flip, then the elastic field, and moved to the image's device: one seed gives one
  batch of transforms on the CPU and on the GPU.
- Everything runs in float32 with autocast switched off, whatever the caller's context: a bf16
  grid would hold pixel coordinates to about 1 px at 256 px. bf16/fp16 images and weights are
  sampled in float32 and cast back; masks never leave their exact 0/1 values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from unet.io.kaggle import FLAIR
from unet.transforms.elastic import elastic_deform, random_displacement

__all__ = [
    "AugmentParams",
    "draw_affine_params",
    "affine_matrix",
    "random_affine",
    "affine_displacement",
    "augment_batch",
]


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class AugmentParams:
    """Training augmentation: zoom in [1 - scale, 1 + scale], rotation in [-rotate_deg, rotate_deg]
    degrees, horizontal flip with probability flip_p, elastic field of elastic_sigma pixels on an
    elastic_grid x elastic_grid lattice (0 = none). The defaults are the reference's."""

    scale: float = 0.05
    rotate_deg: float = 15.0
    flip_p: float = 0.5
    elastic_sigma: float = 0.0
    elastic_grid: int = 3

    def __post_init__(self) -> None:
        if not _is_number(self.scale) or not 0.0 <= self.scale < 1.0:
            raise ValueError(
                f"augment: scale must be a number in [0, 1) (zoom range 1 +- scale), got {self.scale!r}; "
                "the reference uses 0.05, 0 turns zooming off."
            )
        if not _is_number(self.rotate_deg) or not 0.0 <= self.rotate_deg <= 180.0:
            raise ValueError(
                f"augment: rotate_deg must be a number in [0, 180] (the angle range is +- rotate_deg), "
                f"got {self.rotate_deg!r}; the reference uses 15, 0 turns rotation off."
            )
        if not _is_number(self.flip_p) or not 0.0 <= self.flip_p <= 1.0:
            raise ValueError(
                f"augment: flip_p must be a probability in [0, 1], got {self.flip_p!r}; "
                "the reference uses 0.5, 0 turns flipping off."
            )
        if not _is_number(self.elastic_sigma) or self.elastic_sigma < 0.0:
            raise ValueError(
                f"augment: elastic_sigma must be a number >= 0 (pixels), got {self.elastic_sigma!r}; "
                "0 turns the elastic field off, the U-Net paper uses 10 at 256 px."
            )
        if isinstance(self.elastic_grid, bool) or not isinstance(self.elastic_grid, int) or self.elastic_grid < 2:
            raise ValueError(
                f"augment: elastic_grid must be an integer >= 2 (nodes per side), got {self.elastic_grid!r}; "
                "the U-Net paper uses 3."
            )

    @classmethod
    def none(cls) -> AugmentParams:
        """No augmentation, for validation and test batches: `augment_batch` returns its inputs."""
        return cls(scale=0.0, rotate_deg=0.0, flip_p=0.0, elastic_sigma=0.0)

    @property
    def is_identity(self) -> bool:
        return self.scale == 0.0 and self.rotate_deg == 0.0 and self.flip_p == 0.0 and self.elastic_sigma == 0.0


def draw_affine_params(
    batch: int,
    *,
    scale: float = 0.05,
    rotate_deg: float = 15.0,
    flip_p: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(zoom, angle_deg, flip): three (B,) CPU tensors, float64, float64, bool, uniformly drawn."""
    AugmentParams(scale=scale, rotate_deg=rotate_deg, flip_p=flip_p)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 0:
        raise ValueError(f"augment: batch must be an integer >= 0, got {batch!r}.")
    uniform = torch.rand(3, batch, generator=generator, dtype=torch.float64)  # [0, 1)
    zoom = 1.0 + scale * (2.0 * uniform[0] - 1.0)
    angle = rotate_deg * (2.0 * uniform[1] - 1.0)
    flip = uniform[2] < flip_p  # flip_p = 1 flips all: uniform < 1 always
    return zoom, angle, flip


def affine_matrix(
    zoom: torch.Tensor,
    angle_deg: torch.Tensor,
    flip: torch.Tensor,
    height: int,
    width: int,
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(B, 2, 3) float32 theta for F.affine_grid(align_corners=True) from (B,) zoom, angle, flip."""
    if not zoom.shape == angle_deg.shape == flip.shape or zoom.ndim != 1:
        raise ValueError(
            f"augment: zoom, angle_deg and flip must be (B,) tensors of one length, got shapes "
            f"{tuple(zoom.shape)}, {tuple(angle_deg.shape)}, {tuple(flip.shape)}."
        )
    if bool((zoom <= 0).any()):
        raise ValueError(f"augment: zoom must be > 0, got {zoom[zoom <= 0][0].item()!r}; 1 keeps the size.")
    if height < 2 or width < 2:
        raise ValueError(f"augment: images must be at least 2x2 pixels, got {height}x{width}.")
    zoom, rad = zoom.double().cpu(), torch.deg2rad(angle_deg.double().cpu())
    mirror = 1.0 - 2.0 * flip.cpu().double()  # -1 where flipped: x -> -x before the rotation
    cos, sin = torch.cos(rad) / zoom, torch.sin(rad) / zoom
    linear = torch.stack([torch.stack([cos * mirror, -sin], -1), torch.stack([sin * mirror, cos], -1)], -2)  # pixels
    # Normalised coordinates are pixels / half-size per axis, so theta = S^-1 @ linear @ S, S = diag(hx, hy).
    half = torch.tensor([(width - 1) / 2.0, (height - 1) / 2.0], dtype=torch.float64)
    theta = torch.zeros(zoom.shape[0], 2, 3, dtype=torch.float64)
    theta[:, :, :2] = linear * half[None, :] / half[:, None]
    return theta.to(device=device, dtype=torch.float32)


def random_affine(
    batch: int,
    height: int,
    width: int,
    *,
    scale: float = 0.05,
    rotate_deg: float = 15.0,
    flip_p: float = 0.5,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(B, 2, 3) random thetas on `device`: `draw_affine_params` then `affine_matrix`."""
    zoom, angle, flip = draw_affine_params(
        batch, scale=scale, rotate_deg=rotate_deg, flip_p=flip_p, generator=generator
    )
    return affine_matrix(zoom, angle, flip, height, width, device=device)


def affine_displacement(
    affine: torch.Tensor, height: int, width: int, displacement: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, H, W, 2) pixel displacement (elastic's backward map) of theta, after the field if given.

    ``sampling_grid`` of the result equals ``F.affine_grid(affine, (B, C, H, W), align_corners=True)``
    without a field; with one, the source of pixel p is T(p + displacement(p)).
    """
    if affine.ndim != 3 or tuple(affine.shape[1:]) != (2, 3):
        raise ValueError(
            f"augment: affine must be (B, 2, 3) thetas for F.affine_grid, got shape {tuple(affine.shape)}; "
            "build them with affine_matrix() or random_affine()."
        )
    if displacement is not None and tuple(displacement.shape) != (affine.shape[0], height, width, 2):
        raise ValueError(
            f"augment: displacement shape {tuple(displacement.shape)} must be {(affine.shape[0], height, width, 2)} "
            "(pixels, x then y), one field per affine."
        )
    theta = affine.float()
    with torch.autocast(device_type=theta.device.type, enabled=False):  # a bf16 matmul: ~1 px at 256 px
        return _affine_displacement(theta, height, width, displacement)


def _affine_displacement(
    theta: torch.Tensor, height: int, width: int, displacement: torch.Tensor | None
) -> torch.Tensor:
    batch, kw = theta.shape[0], {"device": theta.device, "dtype": theta.dtype}
    half = torch.tensor([(width - 1) / 2.0, (height - 1) / 2.0], **kw)
    linear = theta[:, :, :2] * half[None, :, None] / half[None, None, :]  # (B, 2, 2), in pixels
    # source = half * (theta @ (p / half - 1) + 1): the constant part collects into `shift`.
    shift = half * (1.0 + theta[:, :, 2] - theta[:, :, :2].sum(-1))  # (B, 2)
    # displacement = source - p = (linear - I) p + shift + linear d: computed elementwise (a K=2
    # matmul is 5x slower on a CPU), the p terms broadcast from (B, 1, W) and (B, H, 1).
    coef = (linear - torch.eye(2, **kw))[:, :, :, None, None]  # (B, 2, 2, 1, 1)
    xs, ys = torch.arange(width, **kw).view(1, 1, width), torch.arange(height, **kw).view(1, height, 1)
    field = torch.empty(batch, height, width, 2, **kw)
    d = None if displacement is None else displacement.to(**kw)
    for axis in (0, 1):
        out = field[..., axis]  # (B, H, W), strided
        torch.add(coef[:, axis, 0] * xs + shift[:, axis, None, None], coef[:, axis, 1] * ys, out=out)
        if d is not None:
            out.addcmul_(d[..., 0], linear[:, axis, 0, None, None]).addcmul_(d[..., 1], linear[:, axis, 1, None, None])
    return field


def _check_image(image: torch.Tensor) -> None:
    if image.ndim != 4 or not image.is_floating_point():
        raise ValueError(
            f"augment: image must be a float (B, C, H, W) tensor, got {image.dtype} of shape {tuple(image.shape)}; "
            "add a batch axis with image[None] and convert with .float()."
        )


def _sampling_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)  # bf16/fp16 -> float32, float64 stays


def _restore(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Back to the input's dtype and, for a channels_last input, its memory layout."""
    out = out.to(like.dtype)
    if like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def _warp(
    image: torch.Tensor, mask: torch.Tensor | None, weight: torch.Tensor | None, field: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    # Padding: what comes in from beyond the field of view (the corners of a rotation, the frame of
    # a zoom-out) is the image's own background. Prepared slices are z-scored per volume after the
    # background was clipped to the 10th percentile, so the background is each channel's constant
    # minimum, not 0: zero padding would paint a frame at the volume mean, "border" smears edge rows
    # into streaks where the brain touches the crop box, and "reflection" mirrors brain (and tumour,
    # in the mask) into the corners. So each (sample, channel) is padded with its own minimum:
    # bilinear sampling is linear, so warping (x - min) with zero padding and adding min back is
    # exact constant padding. The weight map gets the same rule: its minimum is the background
    # class weight (w_c of the more frequent class; the border term only adds). The mask pads with 0.
    image_low = image.amin(dim=(-2, -1), keepdim=True).to(_sampling_dtype(image))  # (B, C, 1, 1)
    shifted_weight, weight_low = None, None
    if weight is not None:
        weight_low = weight.amin(dim=(-2, -1), keepdim=True).to(_sampling_dtype(weight))  # (B, 1, 1, 1)
        shifted_weight = weight - weight_low
    out, out_mask, out_weight = elastic_deform(
        image - image_low, mask, shifted_weight, image_mode="bilinear", padding_mode="zeros", displacement=field
    )
    out_image = _restore(out.add_(image_low), image)  # out and out_weight are fresh: add in place
    if out_weight is not None:
        out_weight = _restore(out_weight.add_(weight_low), weight)
    if out_mask is not None:
        out_mask = _restore(out_mask, mask)
    return out_image, out_mask, out_weight


def augment_batch(
    image: torch.Tensor,
    mask: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    *,
    scale: float = 0.05,
    rotate_deg: float = 15.0,
    flip_p: float = 0.5,
    elastic_sigma: float = 0.0,
    elastic_grid: int = 3,
    generator: torch.Generator | None = None,
    affine: torch.Tensor | None = None,
    displacement: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Warp image (B, C, H, W), mask and weight (B, 1, H, W) through one random transform a sample.

    `affine` (B, 2, 3) replaces the random zoom/rotation/flip, `displacement` (B, H, W, 2, pixels)
    the random elastic field; either makes that part deterministic. With no augmentation at all
    (``AugmentParams.none()``) the inputs come back as they are. Outputs keep the input dtypes
    (and a channels_last image stays channels_last); None stays None.
    Pass a typed config as ``augment_batch(image, mask, weight, **dataclasses.asdict(params))``.
    """
    params = AugmentParams(scale, rotate_deg, flip_p, elastic_sigma, elastic_grid)
    _check_image(image)
    if affine is None and displacement is None and params.is_identity:
        return image, mask, weight
    batch, _, height, width = image.shape
    with torch.autocast(device_type=image.device.type, enabled=False):
        if affine is None:
            affine = random_affine(
                batch, height, width, scale=scale, rotate_deg=rotate_deg, flip_p=flip_p,
                generator=generator, device=image.device,
            )
        if displacement is None and elastic_sigma > 0:
            displacement = random_displacement(
                batch, height, width, grid=elastic_grid, sigma=elastic_sigma, generator=generator, device=image.device
            )
        if affine.shape[:1] != (batch,):
            raise ValueError(
                f"augment: affine of shape {tuple(affine.shape)} for a batch of {batch}; "
                "pass one (2, 3) theta a sample."
            )
        field = affine_displacement(
            affine.to(image.device), height, width, None if displacement is None else displacement.to(image.device)
        )
        return _warp(image, mask, weight, field)


def fill_missing_sequences(image: torch.Tensor, p: float, *, flair: int = FLAIR,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """With probability ``p`` a sample, its pre- or post-contrast channel (one at random) becomes its
    FLAIR channel: what the Kaggle set does where a sequence was not acquired. The prepared images
    are z-scored a channel over the volume, so a copied FLAIR channel is exactly what such a patient's
    preprocessing gives. (B, 3, H, W) in and out; ``p`` 0 returns ``image`` itself."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"missing_sequence_p must be a probability in [0, 1], got {p!r}")
    if p == 0.0:
        return image
    batch = image.shape[0]
    hit = (torch.rand(batch, generator=generator) < p).nonzero().flatten()
    channel = torch.where(torch.rand(batch, generator=generator) < 0.5, 0, 2)[hit]
    out = image.clone()
    rows, channel = hit.to(image.device), channel.to(image.device)
    out[rows, channel] = image[rows, flair]
    return out



def jitter_intensity(image: torch.Tensor, strength: float, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each sample's channels get their own contrast and brightness: ``(x - mean) * c + mean + b`` with
    ``c`` in [1 - strength, 1 + strength] and ``b`` in [-strength, strength] (z-score units), so the
    network sees lesions fainter and brighter than the few training patients show (nnU-Net's
    brightness and contrast augmentations do the same). (B, C, H, W) in and out; 0 returns ``image``."""
    if not 0.0 <= strength < 1.0:
        raise ValueError(f"intensity must be in [0, 1), got {strength!r}")
    if strength == 0.0:
        return image
    shape = (image.shape[0], image.shape[1], 1, 1)
    contrast = 1.0 + strength * (2.0 * torch.rand(shape, generator=generator) - 1.0)
    shift = strength * (2.0 * torch.rand(shape, generator=generator) - 1.0)
    contrast, shift = contrast.to(image.device, image.dtype), shift.to(image.device, image.dtype)
    mean = image.mean(dim=(2, 3), keepdim=True)
    return (image - mean) * contrast + mean + shift
