"""Batched training augmentations: known matrices with known answers, the three outputs moving
together, padding, seeding, drawn-parameter bounds, refusals, dtypes and layouts."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from unet.transforms.batch import (
    AugmentParams,
    affine_displacement,
    affine_matrix,
    augment_batch,
    draw_affine_params,
    random_affine,
)
from unet.transforms.elastic import elastic_deform, sampling_grid

NO_AFFINE = {"scale": 0.0, "rotate_deg": 0.0, "flip_p": 0.0}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def scene(batch: int = 2, height: int = 32, width: int = 32, seed: int = 0):
    """Random image (three channels), random 0/1 uint8 mask, weight map in [1, 2)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 3, height, width, generator=g)
    mask = (torch.rand(batch, 1, height, width, generator=g) > 0.5).to(torch.uint8)
    weight = 1.0 + torch.rand(batch, 1, height, width, generator=g)
    return image, mask, weight


def square_scene(batch: int = 2, size: int = 48):
    """A bright square: image 1 / mask 1 / weight 10 inside, 0 / 0 / 1 outside, off-centre."""
    mask = torch.zeros(batch, 1, size, size, dtype=torch.uint8)
    mask[:, :, size // 4 : size // 2, size // 3 : 2 * size // 3] = 1
    return mask.float().repeat(1, 3, 1, 1), mask, 1.0 + 9.0 * mask.float()


def thetas(batch: int, height: int, width: int, *, zoom: float = 1.0, angle: float = 0.0, flip: bool = False):
    return affine_matrix(
        torch.full((batch,), zoom, dtype=torch.float64),
        torch.full((batch,), angle, dtype=torch.float64),
        torch.full((batch,), flip),
        height,
        width,
    )


def close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-4) -> None:
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


# ---------------------------------------------------------------- known matrices, known answers


@pytest.mark.parametrize(("height", "width"), [(32, 32), (33, 33), (32, 48)])
def test_identity_affine_is_identity(height: int, width: int) -> None:
    image, mask, weight = scene(height=height, width=width)
    out, out_mask, out_weight = augment_batch(image, mask, weight, affine=thetas(2, height, width))
    assert torch.equal(out_mask, mask)
    close(out, image)
    close(out_weight, weight)


def test_no_augmentation_returns_the_inputs() -> None:
    image, mask, weight = scene()
    outputs = augment_batch(image, mask, weight, **dataclasses.asdict(AugmentParams.none()))
    assert all(o is i for o, i in zip(outputs, (image, mask, weight)))


@pytest.mark.parametrize(("height", "width"), [(32, 32), (33, 33), (32, 48)])
def test_certain_flip_is_torch_flip(height: int, width: int) -> None:
    image, mask, weight = scene(height=height, width=width)
    out, out_mask, out_weight = augment_batch(image, mask, weight, scale=0.0, rotate_deg=0.0, flip_p=1.0)
    assert torch.equal(out_mask, mask.flip(-1))  # align_corners: pixel x lands exactly on W-1-x
    close(out, image.flip(-1))
    close(out_weight, weight.flip(-1))


@pytest.mark.parametrize("size", [32, 33])
@pytest.mark.parametrize(("angle", "k"), [(90.0, 1), (-90.0, -1), (180.0, 2)])
def test_right_angles_are_torch_rot90(size: int, angle: float, k: int) -> None:
    image, mask, weight = scene(height=size, width=size)
    out, out_mask, out_weight = augment_batch(image, mask, weight, affine=thetas(2, size, size, angle=angle))
    assert torch.equal(out_mask, torch.rot90(mask, k, dims=(-2, -1)))
    close(out, torch.rot90(image, k, dims=(-2, -1)))
    close(out_weight, torch.rot90(weight, k, dims=(-2, -1)))


def test_rotation_is_rigid_in_pixels_on_a_non_square_image() -> None:
    """33x49: the central 33x33 square turns into itself, so it must equal rot90 of that square."""
    image, mask, _ = scene(height=33, width=49)
    out, out_mask, _ = augment_batch(image, mask, affine=thetas(2, 33, 49, angle=90.0))
    centre = slice(8, 41)
    assert torch.equal(out_mask[..., centre], torch.rot90(mask[..., centre], 1, dims=(-2, -1)))
    close(out[..., centre], torch.rot90(image[..., centre], 1, dims=(-2, -1)))


def test_flip_composes_after_rotation_like_the_reference() -> None:
    """Zoom, rotate, then flip: a flipped +90 degree turn is rot90 followed by torch.flip."""
    image, mask, _ = scene(height=32, width=32)
    out, out_mask, _ = augment_batch(image, mask, affine=thetas(2, 32, 32, angle=90.0, flip=True))
    assert torch.equal(out_mask, torch.rot90(mask, 1, dims=(-2, -1)).flip(-1))
    close(out, torch.rot90(image, 1, dims=(-2, -1)).flip(-1))


def test_zoom_two_magnifies_about_the_centre() -> None:
    """33 px, centre 16: output pixel 2i samples input pixel 8 + i, so every second pixel is a crop."""
    image, mask, _ = scene(height=33, width=33)
    out, out_mask, _ = augment_batch(image, mask, affine=thetas(2, 33, 33, zoom=2.0))
    assert torch.equal(out_mask[..., ::2, ::2], mask[..., 8:25, 8:25])
    close(out[..., ::2, ::2], image[..., 8:25, 8:25])


@pytest.mark.parametrize("autocast", [False, True])
def test_matrices_are_affine_grid_thetas(autocast: bool) -> None:
    theta = random_affine(4, 64, 256, generator=torch.Generator().manual_seed(0))
    expected = F.affine_grid(theta, (4, 1, 64, 256), align_corners=True)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=autocast):
        field = affine_displacement(theta, 64, 256)
    close(sampling_grid(field), expected, atol=1e-5)


def test_elastic_field_is_applied_after_the_affine() -> None:
    """out(p) = flipped(p + d): with d = 3 px along x, column x holds the flipped image's x + 3."""
    image, mask, weight = scene(height=32, width=32)
    shift = torch.zeros(2, 32, 32, 2)
    shift[..., 0] = 3.0
    flipped = thetas(2, 32, 32, flip=True)
    out, out_mask, out_weight = augment_batch(image, mask, weight, affine=flipped, displacement=shift)
    assert torch.equal(out_mask[..., :-3], mask.flip(-1)[..., 3:])
    close(out[..., :-3], image.flip(-1)[..., 3:])
    close(out_weight[..., :-3], weight.flip(-1)[..., 3:])


def test_identity_affine_with_a_field_is_elastic_deform() -> None:
    image, mask, weight = square_scene()
    field = torch.randn(2, 48, 48, 2, generator=torch.Generator().manual_seed(5)) * 2.0
    ours = augment_batch(image, mask, weight, affine=thetas(2, 48, 48), displacement=field)
    theirs = elastic_deform(image, mask, weight - 1.0, image_mode="bilinear", padding_mode="zeros", displacement=field)
    assert torch.equal(ours[1], theirs[1])
    close(ours[0], theirs[0])
    close(ours[2], theirs[2] + 1.0)  # weight padded with its minimum, 1


# ---------------------------------------------------------------- padding and alignment


def test_outside_the_view_is_each_channels_background() -> None:
    """A 45 degree turn pulls the corners from outside: they get each channel's minimum."""
    background = torch.tensor([-0.7, -1.2, -0.3]).view(1, 3, 1, 1)
    image = background.expand(2, 3, 33, 33).clone()
    image[..., 8:25, 8:25] += 2.0
    mask = torch.zeros(2, 1, 33, 33, dtype=torch.uint8)
    mask[..., 8:25, 8:25] = 1
    weight = 2.0 + 3.0 * mask.float()
    out, out_mask, out_weight = augment_batch(image, mask, weight, affine=thetas(2, 33, 33, angle=45.0))
    close(out[..., 0, 0], background.view(1, 3).expand(2, 3))
    close(out_weight[..., 0, 0], torch.full((2, 1), 2.0))
    assert out_mask[..., 0, 0].eq(0).all()


@pytest.mark.parametrize("seed", range(4))
def test_image_mask_and_weight_stay_aligned(seed: int) -> None:
    """Bilinear of a 0/1 step at q vs nearest at q: the nearest corner weighs >= 1/4, so a mask 1
    has image >= 1/4 and a mask 0 has image <= 3/4, wherever the transform moved the square."""
    image, mask, weight = square_scene()
    params = AugmentParams(scale=0.05, rotate_deg=15.0, flip_p=0.5, elastic_sigma=3.0)
    out, out_mask, out_weight = augment_batch(
        image, mask, weight, **dataclasses.asdict(params), generator=torch.Generator().manual_seed(seed)
    )
    inside = out_mask.bool().expand_as(out)
    assert not torch.equal(out_mask, mask)
    assert out[inside].min() >= 0.25 - 1e-5 and out[~inside].max() <= 0.75 + 1e-5
    inside = out_mask.bool()  # weight 1 + 9 x image: the same bounds
    assert out_weight[inside].min() >= 3.25 - 1e-4 and out_weight[~inside].max() <= 7.75 + 1e-4


@pytest.mark.parametrize("dtype", [torch.uint8, torch.bool, torch.float32, torch.int64])
def test_mask_stays_binary_in_its_dtype(dtype: torch.dtype) -> None:
    image, mask, weight = scene()
    _, out_mask, _ = augment_batch(
        image, mask.to(dtype), weight, elastic_sigma=4.0, generator=torch.Generator().manual_seed(3)
    )
    assert out_mask.dtype == dtype
    assert set(out_mask.float().unique().tolist()) <= {0.0, 1.0}


# ---------------------------------------------------------------- randomness


def test_same_seed_same_batch_other_seed_other_batch() -> None:
    image, mask, weight = scene()

    def run(seed: int):
        return augment_batch(image, mask, weight, elastic_sigma=2.0, generator=torch.Generator().manual_seed(seed))

    first, again, other = run(7), run(7), run(8)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])


def test_drawn_parameters_stay_within_the_bounds() -> None:
    zoom, angle, flip = draw_affine_params(4000, generator=torch.Generator().manual_seed(0))
    assert 0.95 <= zoom.min() < 0.952 and 1.048 < zoom.max() <= 1.05
    assert -15.0 <= angle.min() < -14.9 and 14.9 < angle.max() <= 15.0
    assert 0.45 < flip.double().mean() < 0.55
    assert abs(zoom.mean() - 1.0) < 0.003 and abs(angle.mean()) < 0.5


@pytest.mark.parametrize(("flip_p", "expected"), [(0.0, 0.0), (1.0, 1.0)])
def test_flip_probability_edges(flip_p: float, expected: float) -> None:
    _, _, flip = draw_affine_params(500, flip_p=flip_p, generator=torch.Generator().manual_seed(0))
    assert flip.double().mean() == expected


def test_random_affine_is_its_drawn_parameters() -> None:
    """Square image: det = +-1 / zoom^2 (minus where flipped), and the matrix is built from the draw."""
    zoom, angle, flip = draw_affine_params(64, generator=torch.Generator().manual_seed(1))
    theta = random_affine(64, 32, 32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(theta, affine_matrix(zoom, angle, flip, 32, 32))
    det = torch.linalg.det(theta[:, :, :2].double())
    close(det, torch.where(flip, -1.0, 1.0).double() / zoom**2, atol=1e-6)
    assert theta[:, :, 2].eq(0).all()  # about the centre: no translation


# ---------------------------------------------------------------- batching, dtypes, layouts, devices


def test_batch_equals_a_loop_over_samples() -> None:
    image, mask, weight = scene(batch=4, height=32, width=40)
    theta = random_affine(4, 32, 40, generator=torch.Generator().manual_seed(2))
    field = torch.randn(4, 32, 40, 2, generator=torch.Generator().manual_seed(3))
    batched = augment_batch(image, mask, weight, affine=theta, displacement=field)
    for i in range(4):
        one = augment_batch(
            image[i : i + 1], mask[i : i + 1], weight[i : i + 1], affine=theta[i : i + 1], displacement=field[i : i + 1]
        )
        assert torch.equal(batched[1][i : i + 1], one[1])
        close(batched[0][i : i + 1], one[0], atol=1e-5)
        close(batched[2][i : i + 1], one[2], atol=1e-5)


def test_none_stays_none() -> None:
    image, _, _ = scene()
    out, out_mask, out_weight = augment_batch(image, generator=torch.Generator().manual_seed(0))
    assert out.shape == image.shape and out_mask is None and out_weight is None


def test_channels_last_in_channels_last_out() -> None:
    image, mask, weight = scene()
    kwargs = {"elastic_sigma": 2.0}
    plain = augment_batch(image, mask, weight, **kwargs, generator=torch.Generator().manual_seed(4))
    cl = augment_batch(
        image.contiguous(memory_format=torch.channels_last), mask, weight, **kwargs,
        generator=torch.Generator().manual_seed(4),
    )
    assert cl[0].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(cl[1], plain[1])
    close(cl[0], plain[0], atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_inputs_sample_in_float32_and_keep_the_mask_exact(device: str) -> None:
    image, mask, weight = (t.to(device) for t in scene(height=64, width=64))
    image16, weight16 = image.bfloat16(), weight.bfloat16()
    reference = augment_batch(image16.float(), mask, weight16.float(), generator=torch.Generator().manual_seed(6))
    out, out_mask, out_weight = augment_batch(image16, mask, weight16, generator=torch.Generator().manual_seed(6))
    assert out.dtype == out_weight.dtype == torch.bfloat16 and out_mask.dtype == torch.uint8
    assert torch.equal(out_mask, reference[1])
    close(out.float(), reference[0], atol=0.02)  # the float32 result rounded to bf16 once


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_does_not_coarsen_the_grid(device: str) -> None:
    """Under autocast the coordinate matmuls would run in bf16 (~1 px at 256 px) unless switched off."""
    image, mask, weight = (t.to(device) for t in scene(height=64, width=256))
    plain = augment_batch(image, mask, weight, elastic_sigma=5.0, generator=torch.Generator().manual_seed(9))
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        auto = augment_batch(image, mask, weight, elastic_sigma=5.0, generator=torch.Generator().manual_seed(9))
    assert auto[0].dtype == torch.float32
    assert torch.equal(auto[1], plain[1])
    close(auto[0], plain[0], atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_one_seed_one_transform_on_cpu_and_cuda() -> None:
    image, mask, weight = scene()
    cpu = augment_batch(image, mask, weight, elastic_sigma=3.0, generator=torch.Generator().manual_seed(1))
    gpu = augment_batch(
        image.cuda(), mask.cuda(), weight.cuda(), elastic_sigma=3.0, generator=torch.Generator().manual_seed(1)
    )
    close(gpu[0].cpu(), cpu[0], atol=1e-4)
    assert (gpu[1].cpu() != cpu[1]).float().mean() < 0.01  # nearest may round a rare tie differently


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scale": -0.1}, "scale .* got -0.1"),
        ({"scale": 1.0}, r"scale .*\[0, 1\).* got 1.0"),
        ({"scale": float("nan")}, "scale .* got nan"),
        ({"rotate_deg": -5.0}, "rotate_deg .* got -5.0"),
        ({"rotate_deg": 200.0}, "rotate_deg .* got 200.0"),
        ({"flip_p": -0.1}, "flip_p .* got -0.1"),
        ({"flip_p": 1.5}, "flip_p .* got 1.5"),
        ({"elastic_sigma": -1.0}, "elastic_sigma .* got -1.0"),
        ({"elastic_grid": 1}, "elastic_grid .* got 1"),
        ({"elastic_grid": 2.5}, "elastic_grid .* got 2.5"),
        ({"elastic_grid": True}, "elastic_grid .* got True"),
    ],
)
def test_bad_parameters_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AugmentParams(**kwargs)
    image, mask, weight = scene()
    with pytest.raises(ValueError, match=match):
        augment_batch(image, mask, weight, **kwargs)


def test_defaults_are_the_reference() -> None:
    assert dataclasses.astuple(AugmentParams()) == (0.05, 15.0, 0.5, 0.0, 3)
    assert AugmentParams.none().is_identity and not AugmentParams().is_identity


@pytest.mark.parametrize(
    ("image", "affine", "match"),
    [
        (torch.zeros(3, 32, 32), None, r"image must be a float \(B, C, H, W\)"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), None, "convert with .float()"),
        (torch.zeros(2, 3, 32, 32), torch.zeros(2, 3, 3), r"affine must be \(B, 2, 3\)"),
        (torch.zeros(2, 3, 32, 32), torch.zeros(3, 2, 3), r"affine of shape \(3, 2, 3\) for a batch of 2"),
        (torch.zeros(2, 3, 32, 32), torch.zeros(2, 6), r"affine must be \(B, 2, 3\)"),
        (torch.zeros(2, 3, 32, 32), torch.tensor(1.0), r"affine of shape \(\) for a batch of 2"),
    ],
)
def test_bad_inputs_are_refused(image: torch.Tensor, affine: torch.Tensor | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        augment_batch(image, affine=affine)


def test_a_mask_that_is_not_binary_is_refused() -> None:
    image, mask, weight = scene()
    with pytest.raises(ValueError, match="mask must be binary"):
        augment_batch(image, mask * 255, weight)


def test_a_missing_sequence_is_filled_with_flair_as_the_set_does():
    from unet.transforms.batch import fill_missing_sequences

    image = torch.arange(3.0).view(1, 3, 1, 1).expand(200, 3, 4, 4).clone()
    out = fill_missing_sequences(image, 0.5, generator=torch.Generator().manual_seed(0))
    changed = [(k, c) for k in range(200) for c in (0, 2) if out[k, c, 0, 0] == 1.0]
    assert torch.equal(out[:, 1], image[:, 1])  # FLAIR itself never changes
    assert 70 <= len(changed) <= 130  # about half the samples, one channel each
    assert all(out[k, 2 - c, 0, 0] == 2 - c for k, c in changed)  # the other channel kept
    assert fill_missing_sequences(image, 0.0) is image
    with pytest.raises(ValueError, match="missing_sequence_p"):
        fill_missing_sequences(image, 1.5)


def test_intensity_jitter_changes_each_channel_of_each_sample_within_its_bounds():
    from unet.transforms.batch import jitter_intensity

    image = torch.randn(4, 3, 8, 8)
    assert jitter_intensity(image, 0.0) is image
    out = jitter_intensity(image, 0.3, generator=torch.Generator().manual_seed(0))
    assert out.shape == image.shape
    mean = image.mean(dim=(2, 3), keepdim=True)
    contrast = (out - out.mean(dim=(2, 3), keepdim=True)).std(dim=(2, 3)) / (image - mean).std(dim=(2, 3))
    shift = (out.mean(dim=(2, 3)) - mean[..., 0, 0])
    assert ((contrast >= 0.7 - 1e-5) & (contrast <= 1.3 + 1e-5)).all() and contrast.unique().numel() == 12
    assert (shift.abs() <= 0.3 + 1e-5).all()
    again = jitter_intensity(image, 0.3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, again)  # seeded: the same draw
    with pytest.raises(ValueError, match="intensity"):
        jitter_intensity(image, 1.5)
