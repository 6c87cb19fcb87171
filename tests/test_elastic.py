"""Elastic deformation: known fields with known answers, the three outputs moving together, seeding, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from unet.transforms.elastic import (
    coarse_displacement,
    deform_copies,
    dense_displacement,
    elastic_deform,
    random_displacement,
    sampling_grid,
)

SIZE = 48


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a loaded machine each parallel op
    can wait ~10 ms for a descheduled worker: run this module single-threaded, then restore."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def square_scene(batch: int = 2, size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A bright square (image 1, mask 1, weight 10) on a dark field (0, 0, 1), three image channels."""
    mask = torch.zeros(batch, 1, size, size, dtype=torch.uint8)
    mask[:, :, size // 3 : 2 * size // 3, size // 4 : size // 2] = 1
    image = mask.float().repeat(1, 3, 1, 1)
    weight = 1.0 + 9.0 * mask.float()
    return image, mask, weight


def constant_field(batch: int, size: int, dx: float, dy: float) -> torch.Tensor:
    field = torch.zeros(batch, size, size, 2)
    field[..., 0], field[..., 1] = dx, dy
    return field


# ---------------------------------------------------------------- known fields


@pytest.mark.parametrize("image_mode", ["bicubic", "bilinear"])
@pytest.mark.parametrize("padding_mode", ["reflection", "border", "zeros"])
def test_zero_displacement_is_identity(image_mode: str, padding_mode: str) -> None:
    image = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    mask = (torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(2)) > 0.5).to(torch.uint8)
    weight = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(3)) + 1.0
    out, out_mask, out_weight = elastic_deform(
        image, mask, weight, image_mode=image_mode, padding_mode=padding_mode,
        displacement=torch.zeros(2, SIZE, SIZE, 2),
    )
    assert torch.equal(out_mask, mask)
    torch.testing.assert_close(out, image, atol=1e-4, rtol=0)
    torch.testing.assert_close(out_weight, weight, atol=1e-4, rtol=0)


def test_sigma_zero_is_identity() -> None:
    image, mask, weight = square_scene()
    out, out_mask, out_weight = elastic_deform(image, mask, weight, sigma=0.0)
    assert torch.equal(out_mask, mask)
    torch.testing.assert_close(out, image, atol=1e-4, rtol=0)
    torch.testing.assert_close(out_weight, weight, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dx, dy", [(3, 0), (0, 5), (-4, 2)])
def test_integer_shift_moves_all_three_by_the_same_pixels(dx: int, dy: int) -> None:
    """out[y, x] = in[y + dy, x + dx] wherever that source pixel is inside the image."""
    image, mask, weight = square_scene()
    field = constant_field(2, SIZE, dx, dy)
    out, out_mask, out_weight = elastic_deform(image, mask, weight, displacement=field)
    rows = slice(max(0, -dy), SIZE - max(0, dy))
    cols = slice(max(0, -dx), SIZE - max(0, dx))
    source = (slice(rows.start + dy, rows.stop + dy), slice(cols.start + dx, cols.stop + dx))
    assert torch.equal(out_mask[..., rows, cols], mask[..., source[0], source[1]])
    torch.testing.assert_close(out[..., rows, cols], image[..., source[0], source[1]], atol=1e-4, rtol=0)
    torch.testing.assert_close(out_weight[..., rows, cols], weight[..., source[0], source[1]], atol=1e-4, rtol=0)


def test_reflection_mirrors_about_the_edge_pixel() -> None:
    """Pulling from 2 px left of column 0 reads column 2 (scipy's mode='mirror')."""
    image = torch.arange(SIZE, dtype=torch.float32).expand(1, 1, SIZE, SIZE).contiguous()
    out, _, _ = elastic_deform(image, displacement=constant_field(1, SIZE, -2, 0), image_mode="bilinear")
    torch.testing.assert_close(out[0, 0, 0, :4], torch.tensor([2.0, 1.0, 0.0, 1.0]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("image_mode", ["bicubic", "bilinear"])
def test_reflection_equals_grid_samples_own(image_mode: str) -> None:
    """Mirroring the points (ours) = mirroring every tap (grid_sample), even for fields past the far edge."""
    image, mask, weight = square_scene()
    image = image + torch.rand(image.shape, generator=torch.Generator().manual_seed(8))
    field = random_displacement(2, SIZE, SIZE, sigma=40.0, generator=torch.Generator().manual_seed(9))
    out, out_mask, out_weight = elastic_deform(image, mask, weight, image_mode=image_mode, displacement=field)
    coords = sampling_grid(field)
    def own(t: torch.Tensor, mode: str) -> torch.Tensor:
        return F.grid_sample(t, coords, mode=mode, padding_mode="reflection", align_corners=True)
    torch.testing.assert_close(out, own(image, image_mode), atol=1e-4, rtol=0)
    torch.testing.assert_close(out_weight, own(weight, "bilinear"), atol=1e-4, rtol=0)
    assert (out_mask != own(mask.float(), "nearest").to(torch.uint8)).float().mean() < 1e-3


def test_weight_matches_scipy_map_coordinates() -> None:
    """Same field through scipy (order 1, mirror): pins the (x, y) order and the backward mapping."""
    weight = torch.rand(1, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    field = random_displacement(1, SIZE, SIZE, sigma=4.0, generator=torch.Generator().manual_seed(5))
    _, _, out = elastic_deform(weight.repeat(1, 3, 1, 1), None, weight, displacement=field)
    ys, xs = np.mgrid[:SIZE, :SIZE].astype(np.float64)
    d = field[0].double().numpy()
    expected = ndimage.map_coordinates(weight[0, 0].double().numpy(), [ys + d[..., 1], xs + d[..., 0]], order=1,
                                       mode="mirror")
    np.testing.assert_allclose(out[0, 0].numpy(), expected, atol=1e-4)


# ---------------------------------------------------------------- random fields


@pytest.mark.parametrize("mask_dtype", [torch.uint8, torch.bool, torch.int64, torch.float32])
def test_mask_stays_binary_in_its_dtype(mask_dtype: torch.dtype) -> None:
    image, mask, weight = square_scene(batch=4)
    generator = torch.Generator().manual_seed(0)
    _, out_mask, _ = elastic_deform(image, mask.to(mask_dtype), weight, sigma=10.0, generator=generator)
    assert out_mask.dtype == mask_dtype
    assert set(torch.unique(out_mask.to(torch.float32)).tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("image_mode", ["bicubic", "bilinear"])
def test_image_mask_and_weight_stay_aligned(image_mode: str) -> None:
    image, mask, weight = square_scene(batch=4)
    out, out_mask, out_weight = elastic_deform(
        image, mask, weight, sigma=6.0, image_mode=image_mode, generator=torch.Generator().manual_seed(7)
    )
    assert not torch.equal(out_mask, mask), "the field should have moved the square"
    inside = out_mask.bool().expand_as(out)
    bright = out > 0.5
    # nearest and bicubic/bilinear may disagree only on the square's one-pixel rim
    assert (bright != inside).float().mean() < 0.02
    assert ((out_weight > 5.5) != out_mask.bool()).float().mean() < 0.02


def test_dense_field_equals_coarse_values_at_the_nodes() -> None:
    for grid, height, width in [(3, 33, 33), (5, 33, 65), (2, 10, 7), (3, 65, 17)]:
        coarse = coarse_displacement(3, grid=grid, generator=torch.Generator().manual_seed(grid))
        dense = dense_displacement(coarse, height, width)  # (B, H, W, 2)
        nodes = dense[:, :: (height - 1) // (grid - 1), :: (width - 1) // (grid - 1)]  # (B, g, g, 2)
        torch.testing.assert_close(nodes.permute(0, 3, 1, 2), coarse, atol=1e-6, rtol=0)
        reference = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)
        torch.testing.assert_close(dense.permute(0, 3, 1, 2), reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("sigma", [1.0, 10.0, 25.0])
def test_coarse_displacements_have_the_requested_spread(sigma: float) -> None:
    coarse = coarse_displacement(2000, grid=3, sigma=sigma, generator=torch.Generator().manual_seed(0))
    assert abs(coarse.mean().item()) < 0.05 * sigma
    assert abs(coarse.std().item() - sigma) < 0.03 * sigma


def test_same_generator_seed_same_output() -> None:
    image, mask, weight = square_scene()
    first = elastic_deform(image, mask, weight, generator=torch.Generator().manual_seed(11))
    again = elastic_deform(image, mask, weight, generator=torch.Generator().manual_seed(11))
    other = elastic_deform(image, mask, weight, generator=torch.Generator().manual_seed(12))
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], other[0])


def test_sampling_grid_spans_minus_one_to_one() -> None:
    grid = sampling_grid(torch.zeros(1, 5, 9, 2))
    torch.testing.assert_close(grid[0, 0, :, 0], torch.linspace(-1, 1, 9))
    torch.testing.assert_close(grid[0, :, 0, 1], torch.linspace(-1, 1, 5))


# ---------------------------------------------------------------- numpy helper for the augment stage


def arrays(n: int = 5, size: int = 32, channels: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.normal(size=(n, size, size, channels)).astype(np.float16)
    masks = (rng.random((n, size, size)) > 0.7).astype(np.uint8)
    weights = rng.uniform(1, 10, size=(n, size, size)).astype(np.float32)
    return images, masks, weights


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("copies", [0, 1, 3])
def test_deform_copies_shapes_and_dtypes(dtype: str, copies: int) -> None:
    images, masks, weights = arrays()
    out_images, out_masks, out_weights = deform_copies(images, masks, weights, copies=copies, dtype=dtype)
    assert out_images.shape == (copies, 5, 32, 32, 3) and out_images.dtype == np.dtype(dtype)
    assert out_masks.shape == (copies, 5, 32, 32) and out_masks.dtype == np.uint8
    assert out_weights.shape == (copies, 5, 32, 32) and out_weights.dtype == np.dtype(dtype)
    assert set(np.unique(out_masks).tolist()) <= {0, 1}


def test_deform_copies_does_not_depend_on_batching_or_counts() -> None:
    images, masks, weights = arrays()
    reference = deform_copies(images, masks, weights, copies=3, seed=4, batch_size=64)
    for batch_size in (1, 2, 5):
        for a, b in zip(reference, deform_copies(images, masks, weights, copies=3, seed=4, batch_size=batch_size)):
            np.testing.assert_array_equal(a, b)
    fewer = deform_copies(images[:3], masks[:3], weights[:3], copies=2, seed=4)
    for a, b in zip(reference, fewer):
        np.testing.assert_array_equal(a[:2, :3], b)
    other = deform_copies(images, masks, weights, copies=3, seed=5)
    assert not np.array_equal(reference[0], other[0])
    assert not np.array_equal(reference[0][0], reference[0][1]), "copies must differ from each other"


def test_deform_copies_sigma_zero_returns_the_input() -> None:
    images, masks, weights = arrays(n=2)
    out_images, out_masks, out_weights = deform_copies(images, masks, weights, copies=2, sigma=0.0, dtype="float32")
    np.testing.assert_array_equal(out_masks, np.broadcast_to(masks, out_masks.shape))
    np.testing.assert_allclose(out_images, np.broadcast_to(images, out_images.shape).astype(np.float32), atol=1e-3)
    np.testing.assert_allclose(out_weights, np.broadcast_to(weights, out_weights.shape), atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    images, masks, weights = arrays()
    cpu = deform_copies(images, masks, weights, copies=2, dtype="float32")
    gpu = deform_copies(images, masks, weights, copies=2, dtype="float32", device="cuda")
    np.testing.assert_allclose(cpu[0], gpu[0], atol=1e-3)
    assert (cpu[1] != gpu[1]).mean() < 1e-3  # nearest may round a tie the other way
    np.testing.assert_allclose(cpu[2], gpu[2], atol=1e-3)


# ---------------------------------------------------------------- refusals

IMAGE, MASK, WEIGHT = square_scene()

BAD_DEFORM = [
    ({"sigma": -1.0}, "sigma must be a finite number >= 0"),
    ({"sigma": float("nan")}, "sigma must be a finite number >= 0"),
    ({"grid": 1}, "grid must be an integer >= 2"),
    ({"image_mode": "nearest"}, "image_mode 'nearest'"),
    ({"padding_mode": "wrap"}, "padding_mode 'wrap'"),
    ({"image": IMAGE[0]}, r"float \(B, C, H, W\)"),
    ({"image": IMAGE.to(torch.uint8)}, "convert with .float()"),
    ({"mask": MASK[:1]}, r"mask shape \(1, 1, 48, 48\) does not match"),
    ({"weight": WEIGHT[:, :, :40]}, r"weight shape .* must be \(2, 1, 48, 48\)"),
    ({"weight": WEIGHT.to(torch.int64)}, "weight must be a float tensor"),
    ({"mask": MASK * 255}, "found value 255"),
    ({"displacement": torch.zeros(2, SIZE, SIZE)}, r"displacement shape .* \(2, 48, 48, 2\)"),
    ({"image": torch.zeros(2, 3, 1, 8), "mask": None, "weight": None}, "at least 2x2"),
]


@pytest.mark.parametrize("change, message", BAD_DEFORM)
def test_elastic_deform_refuses(change: dict, message: str) -> None:
    kwargs = {"image": IMAGE, "mask": MASK, "weight": WEIGHT, **change}
    with pytest.raises(ValueError, match=message):
        elastic_deform(**kwargs)


IMAGES, MASKS, WEIGHTS = arrays()

BAD_COPIES = [
    ({"copies": -1}, "copies must be an integer >= 0"),
    ({"sigma": -0.5}, "sigma must be"),
    ({"grid": 0}, "grid must be"),
    ({"seed": -3}, "seed must be an integer >= 0"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"dtype": "float64"}, "dtype 'float64'"),
    ({"padding_mode": "mirror"}, "padding_mode 'mirror' is not one of"),
    ({"images": IMAGES[..., 0]}, r"float \(N, H, W, C\)"),
    ({"images": IMAGES.astype(np.uint8)}, r"float \(N, H, W, C\)"),
    ({"masks": MASKS[:4]}, r"masks shape \(4, 32, 32\) does not match"),
    ({"weights": WEIGHTS[:, :31]}, r"weights shape \(5, 31, 32\)"),
    ({"weights": WEIGHTS.astype(np.int32)}, "weights must be a float array"),
    ({"masks": MASKS * 255}, "found value 255"),
]


@pytest.mark.parametrize("change, message", BAD_COPIES)
def test_deform_copies_refuses(change: dict, message: str) -> None:
    kwargs = {"images": IMAGES, "masks": MASKS, "weights": WEIGHTS, "copies": 1, **change}
    with pytest.raises(ValueError, match=message):
        deform_copies(**kwargs)
