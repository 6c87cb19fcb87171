"""The U-Nets: shapes by config, refusals, the published net's keys and outputs, overlap-tile inference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from unet.models.blocks import mirror_pad, paper_valid_inputs_near
from unet.models.unet import (
    PaperUNet,
    ReferenceUNet,
    build_model,
    load_reference_weights,
    paper_output_size,
    paper_valid_input_size,
    predict_tiled,
    probabilities,
    reference_state_dict_shapes,
)

# ---- shapes by config --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variant", "config", "input_shape", "output_shape"),
    [
        ("reference", dict(features=4), (2, 3, 64, 64), (2, 1, 64, 64)),
        ("reference", dict(features=4, depth=2, in_channels=1, out_channels=3), (1, 1, 32, 48), (1, 3, 32, 48)),
        ("reference", dict(features=4, depth=1), (1, 3, 34, 36), (1, 1, 34, 36)),
        ("paper", dict(features=4), (1, 3, 188, 188), (1, 2, 4, 4)),
        ("paper", dict(features=4, depth=2), (2, 3, 60, 44), (2, 2, 20, 4)),
        ("paper", dict(features=4, depth=3, in_channels=1, out_channels=1), (1, 1, 92, 108), (1, 1, 4, 20)),
    ],
)
def test_output_shape(variant: str, config: dict, input_shape: tuple, output_shape: tuple) -> None:
    model = build_model(variant, **config).eval()
    assert model(torch.randn(input_shape)).shape == output_shape


@pytest.mark.parametrize(
    ("input_size", "depth", "output_size"),
    [(572, 4, 388), (188, 4, 4), (588, 4, 404), (18, 1, 2), (44, 2, 4), (60, 2, 20), (92, 3, 4)],
)
def test_paper_output_size(input_size: int, depth: int, output_size: int) -> None:
    assert paper_output_size(input_size, depth) == output_size


@pytest.mark.parametrize(
    ("min_output", "depth", "input_size"),
    [(388, 4, 572), (389, 4, 588), (1, 4, 188), (1, 1, 18), (20, 2, 60), (21, 2, 64)],
)
def test_paper_valid_input_size(min_output: int, depth: int, input_size: int) -> None:
    assert paper_valid_input_size(min_output, depth) == input_size


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_size_helpers_agree_with_the_net(depth: int) -> None:
    model = build_model("paper", features=2, depth=depth).eval()
    size = paper_valid_input_size(1, depth)
    for _ in range(2):
        assert model(torch.randn(1, 3, size, size)).shape[-1] == paper_output_size(size, depth)
        size = paper_valid_inputs_near(size + 1, depth)[-1]


# ---- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variant", "config", "match"),
    [
        ("reference", dict(features=0), "features is 0"),
        ("paper", dict(features=-8), "features is -8"),
        ("reference", dict(depth=0), "depth is 0"),
        ("paper", dict(in_channels=0), "in_channels is 0"),
        ("paper", dict(out_channels=0), "out_channels is 0"),
        ("paper", dict(dropout=1.0), "dropout is 1.0"),
        ("unet3d", {}, r"\['paper', 'reference'\]"),
    ],
)
def test_bad_config_raises(variant: str, config: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_model(variant, **config)


@pytest.mark.parametrize(
    ("variant", "config", "input_shape", "match"),
    [
        ("reference", dict(features=2), (1, 3, 60, 64), "height 60 .* 48 or 64"),
        ("reference", dict(features=2, depth=2), (1, 3, 32, 30), "width 30 .* 28 or 32"),
        ("reference", dict(features=2), (1, 3, 8, 16), "height 8 .* 16"),
        ("reference", dict(features=2), (1, 1, 64, 64), r"\(B, 3, H, W\)"),
        ("paper", dict(features=2), (1, 3, 570, 572), "height 570 .* 556 or 572"),
        ("paper", dict(features=2, depth=2), (1, 3, 60, 50), "width 50 .* 48 or 52"),
        ("paper", dict(features=2, depth=2), (1, 3, 40, 44), "height 40 .* 44"),
    ],
)
def test_bad_input_size_names_valid_sizes(variant: str, config: dict, input_shape: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_model(variant, **config)(torch.zeros(input_shape))


# ---- config, init, probabilities -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("variant", "config", "features", "out_channels"),
    [("reference", {}, 32, 1), ("paper", dict(features=4, depth=2, dropout=0.2), 4, 2)],
)
def test_config_rebuilds_the_model(variant: str, config: dict, features: int, out_channels: int) -> None:
    model = build_model(variant, **config)
    assert (model.config["features"], model.config["out_channels"]) == (features, out_channels)
    again = build_model(**model.config)
    assert again.config == model.config
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_paper_defaults_are_64_features_and_2_classes() -> None:
    model = build_model("paper", depth=1)
    assert (model.config["features"], model.config["out_channels"]) == (64, 2)


def test_paper_he_init() -> None:
    model = build_model("paper", features=8, depth=2)
    for layer in model.modules():
        if isinstance(layer, torch.nn.Conv2d) and layer.weight.numel() >= 2000:
            fan_in = layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
            assert layer.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.1)
            assert layer.bias.abs().max().item() == 0.0


def test_predict_proba_is_sigmoid_or_softmax() -> None:
    x = torch.randn(2, 3, 60, 60)
    reference = build_model("reference", features=2, depth=2).eval()
    assert torch.allclose(reference.predict_proba(x), torch.sigmoid(reference(x)))
    paper = build_model("paper", features=2, depth=2).eval()
    assert torch.allclose(paper.predict_proba(x).sum(dim=1), torch.ones(2, 20, 20))


# ---- the published brain-segmentation U-Net ------------------------------------------------------


def test_reference_parameter_count_and_keys_match_the_published_net() -> None:
    model = build_model("reference")
    assert isinstance(model, ReferenceUNet)
    assert sum(p.numel() for p in model.parameters()) == 7_763_041
    published = reference_state_dict_shapes()
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == list(published.items())


def random_published_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in reference_state_dict_shapes().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
        elif key.endswith(("running_var", "norm1.weight", "norm2.weight")):
            state[key] = 0.5 + torch.rand(shape, generator=gen)
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            state[key] = torch.randn(shape, generator=gen) * math.sqrt(2 / fan_in)
        else:
            state[key] = 0.1 * torch.randn(shape, generator=gen)
    return state


def published_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The published UNet.forward, written straight from the state dict with functional calls."""

    def block(x: torch.Tensor, module: str, name: str) -> torch.Tensor:
        for i in (1, 2):
            x = F.conv2d(x, sd[f"{module}.{name}conv{i}.weight"], padding=1)
            norm = f"{module}.{name}norm{i}"
            x = F.batch_norm(x, sd[f"{norm}.running_mean"], sd[f"{norm}.running_var"],
                             sd[f"{norm}.weight"], sd[f"{norm}.bias"], training=False, eps=1e-5)
            x = F.relu(x)
        return x

    enc1 = block(x, "encoder1", "enc1")
    enc2 = block(F.max_pool2d(enc1, 2, 2), "encoder2", "enc2")
    enc3 = block(F.max_pool2d(enc2, 2, 2), "encoder3", "enc3")
    enc4 = block(F.max_pool2d(enc3, 2, 2), "encoder4", "enc4")
    bottleneck = block(F.max_pool2d(enc4, 2, 2), "bottleneck", "bottleneck")
    dec = bottleneck
    for level, skip in ((4, enc4), (3, enc3), (2, enc2), (1, enc1)):
        dec = F.conv_transpose2d(dec, sd[f"upconv{level}.weight"], sd[f"upconv{level}.bias"], stride=2)
        dec = block(torch.cat((dec, skip), dim=1), f"decoder{level}", f"dec{level}")
    return torch.sigmoid(F.conv2d(dec, sd["conv.weight"], sd["conv.bias"]))


def test_loaded_reference_weights_give_the_published_outputs() -> None:
    state = random_published_state_dict()
    model = load_reference_weights(state)
    assert not model.training
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, expected = model(x), published_forward(state, x)
    assert got.shape == (1, 1, 64, 64)
    assert (got - expected).abs().max().item() < 1e-5
    assert 0.01 < expected.std().item()  # the comparison is not between two constant maps


def _drop(state: dict, key: str) -> dict:
    return {k: v for k, v in state.items() if k != key}


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda s: _drop(s, "conv.bias"), r"1 missing, e\.g\. \['conv\.bias'\]"),
        (lambda s: {**s, "conv.extra": torch.zeros(1)}, r"1 unexpected, e\.g\. \['conv\.extra'\]"),
        (lambda s: {**s, "conv.weight": torch.zeros(2, 32, 1, 1)},
         r"conv\.weight is \[2, 32, 1, 1\], expected \[1, 32, 1, 1\]"),
        (lambda s: {f"module.{k}": v for k, v in s.items()}, "strip the 'module.' prefix"),
    ],
)
def test_bad_reference_state_dict_names_the_offenders(edit, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_reference_weights(edit(random_published_state_dict()))


# ---- overlap-tile inference ------------------------------------------------------------------------


def test_mirror_pad_reflects_beyond_the_image() -> None:
    row = torch.tensor([[0.0, 1.0, 2.0]])
    assert mirror_pad(row, 0, 0, 4, 5).tolist() == [[0, 1, 2, 1, 0, 1, 2, 1, 0, 1, 2, 1]]
    x = torch.randn(1, 2, 5, 6)
    assert torch.equal(mirror_pad(x, 1, 2, 3, 4), F.pad(x, (3, 4, 1, 2), mode="reflect"))


@pytest.mark.parametrize(
    ("depth", "image_hw", "tile_out"),
    [(2, (64, 64), 20), (3, (50, 70), 20)],  # depth 3: tiles 16 px apart overlap by 4
)
def test_tiled_prediction_matches_one_big_tile(depth: int, image_hw: tuple, tile_out: int) -> None:
    torch.manual_seed(0)
    model = build_model("paper", features=4, depth=depth)
    assert isinstance(model, PaperUNet) and model.training
    image = torch.randn(2, 3, *image_hw)
    tiled = predict_tiled(model, image, tile_out=tile_out)
    assert model.training  # mode given back
    h, w = image_hw
    big_out = paper_output_size(paper_valid_input_size(max(h, w), depth), depth)
    margin = (paper_valid_input_size(big_out, depth) - big_out) // 2
    mirrored = mirror_pad(image, margin, margin + big_out - h, margin, margin + big_out - w)
    with torch.no_grad():
        big = probabilities(model.eval()(mirrored))[:, :, :h, :w]
    assert tiled.shape == (2, 2, h, w)
    assert (tiled - big).abs().max().item() < 1e-5
    assert torch.allclose(predict_tiled(model, image), big, atol=1e-6)


@pytest.mark.parametrize(
    ("variant", "tile_out", "match"),
    [("paper", 21, "tile_out 21 .* 20 or 28"), ("paper", 4, "below 2\\*\\*depth"), ("reference", 20, "predict_proba")],
)
def test_tiled_prediction_refusals(variant: str, tile_out: int, match: str) -> None:
    model = build_model(variant, features=2, depth=3)
    with pytest.raises(ValueError, match=match):
        predict_tiled(model, torch.zeros(1, 3, 40, 40), tile_out=tile_out)
