"""ResNet generator and PatchGAN discriminator: official checkpoint layout, features, shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vstk.errors import ConfigError
from vstk.translation import (
    BlurDownsample,
    BlurUpsample,
    NLayerDiscriminator,
    ResnetGenerator,
    init_weights,
)

NGF = 8


def official_generator_shapes(
    ngf: int, n_blocks: int, antialias: bool, input_nc: int = 1, output_nc: int = 1
) -> dict[str, tuple[int, ...]]:
    """State-dict keys and shapes of the official ResnetGenerator with instance norm.

    Written from the documented layout (index: module), not from the implementation under test:
    CycleGAN: 0 pad, 1 conv7, 2 norm, 3 relu, [conv s2, norm, relu] x 2, blocks,
    [convT, norm, relu] x 2, pad, conv7, tanh. CUT (antialias): each down step is
    [conv s1, norm, relu, blur-down] and each up step [blur-up, conv s1, norm, relu].
    Instance norm has no parameters; every conv then has a bias. Blur buffers are ``filt``.
    """
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(index: int, c_out: int, c_in: int, k: int, prefix: str = "model") -> None:
        shapes[f"{prefix}.{index}.weight"] = (c_out, c_in, k, k)
        shapes[f"{prefix}.{index}.bias"] = (c_out,)

    conv(1, ngf, input_nc, 7)
    index = 4
    for i in range(2):
        c_in, c_out = ngf * 2**i, ngf * 2 ** (i + 1)
        conv(index, c_out, c_in, 3)
        if antialias:
            shapes[f"model.{index + 3}.filt"] = (c_out, 1, 3, 3)
            index += 4
        else:
            index += 3
    for _ in range(n_blocks):
        conv(1, ngf * 4, ngf * 4, 3, prefix=f"model.{index}.conv_block")
        conv(5, ngf * 4, ngf * 4, 3, prefix=f"model.{index}.conv_block")
        index += 1
    for i in range(2):
        c_in, c_out = ngf * 2 ** (2 - i), ngf * 2 ** (1 - i)
        if antialias:
            shapes[f"model.{index}.filt"] = (c_in, 1, 4, 4)
            conv(index + 1, c_out, c_in, 3)
            index += 4
        else:
            # ConvTranspose2d weights are (in, out, k, k).
            shapes[f"model.{index}.weight"] = (c_in, c_out, 3, 3)
            shapes[f"model.{index}.bias"] = (c_out,)
            index += 3
    conv(index + 1, output_nc, ngf, 7)
    return shapes


def official_discriminator_shapes(
    ndf: int, n_layers: int, antialias: bool, input_nc: int = 1
) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the official NLayerDiscriminator with instance norm.

    [conv4, lrelu, (blur)], [conv4, norm, lrelu, (blur)] x (n_layers - 1), conv4 s1, norm,
    lrelu, conv4 to 1 channel; the blur-downsample (``filt``) only with antialias.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    widths = [ndf * min(2**n, 8) for n in range(n_layers + 1)]
    shapes["model.0.weight"], shapes["model.0.bias"] = (ndf, input_nc, 4, 4), (ndf,)
    index = 2
    if antialias:
        shapes["model.2.filt"] = (ndf, 1, 3, 3)
        index = 3
    for n in range(1, n_layers + 1):
        shapes[f"model.{index}.weight"] = (widths[n], widths[n - 1], 4, 4)
        shapes[f"model.{index}.bias"] = (widths[n],)
        if antialias and n < n_layers:
            shapes[f"model.{index + 3}.filt"] = (widths[n], 1, 3, 3)
            index += 4
        else:
            index += 3
    shapes[f"model.{index}.weight"], shapes[f"model.{index}.bias"] = (1, widths[-1], 4, 4), (1,)
    return shapes


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("n_blocks", [9, 2])
def test_generator_loads_official_state_dict_strictly(antialias: bool, n_blocks: int) -> None:
    shapes = official_generator_shapes(NGF, n_blocks, antialias)
    generator = torch.Generator().manual_seed(0)
    state = {key: 0.1 * torch.randn(shape, generator=generator) for key, shape in shapes.items()}
    net = ResnetGenerator(ngf=NGF, n_blocks=n_blocks, antialias=antialias)
    assert list(net.state_dict()) == list(shapes)
    net.load_state_dict(state, strict=True)
    out = net(torch.rand(2, 1, 64, 64) * 2 - 1)
    assert out.shape == (2, 1, 64, 64)
    assert out.abs().max() <= 1.0


def test_generator_layer_counts_match_official_indices() -> None:
    assert len(ResnetGenerator(ngf=NGF).model) == 28
    assert len(ResnetGenerator(ngf=NGF, antialias=True).model) == 32
    assert isinstance(ResnetGenerator(ngf=NGF).model[27], nn.Tanh)
    assert isinstance(ResnetGenerator(ngf=NGF).model[10].conv_block[1], nn.Conv2d)


def test_instance_norm_has_no_parameters_or_statistics() -> None:
    norm = ResnetGenerator(ngf=NGF).model[2]
    assert isinstance(norm, nn.InstanceNorm2d)
    assert not norm.affine and not norm.track_running_stats


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_convolutions_have_bias_only_with_instance_norm(norm: str) -> None:
    net = ResnetGenerator(ngf=NGF, n_blocks=1, norm=norm)
    assert net.model[1].bias is None
    assert net.model[len(net.model) - 2].bias is not None  # the final 7x7 conv always has one


@pytest.mark.parametrize(
    ("antialias", "sizes"),
    [(True, [70, 64, 32, 16, 16]), (False, [70, 32, 16, 16, 16])],
)
def test_encode_nce_layers_channels_and_sizes(antialias: bool, sizes: list[int]) -> None:
    net = ResnetGenerator(ngf=NGF, n_blocks=9, antialias=antialias)
    feats = net.encode(torch.randn(2, 1, 64, 64), [0, 4, 8, 12, 16])
    assert [f.shape[1] for f in feats] == [1, 2 * NGF, 4 * NGF, 4 * NGF, 4 * NGF]
    assert [f.shape[2] for f in feats] == sizes
    assert [f.shape[3] for f in feats] == sizes
    assert all(f.shape[0] == 2 for f in feats)


def test_layer_zero_is_the_reflection_padded_input() -> None:
    x = torch.randn(1, 1, 16, 16)
    (feat,) = ResnetGenerator(ngf=NGF, n_blocks=1).encode(x, [0])
    torch.testing.assert_close(feat[:, :, 3:-3, 3:-3], x)


@pytest.mark.parametrize("antialias", [False, True])
def test_forward_with_features_matches_forward_and_encode(antialias: bool) -> None:
    torch.manual_seed(0)
    net = ResnetGenerator(ngf=NGF, n_blocks=4, antialias=antialias).eval()
    x = torch.randn(2, 1, 32, 32)
    layers = [0, 4, 8, 12]
    out, feats = net.forward_with_features(x, layers)
    torch.testing.assert_close(out, net(x), rtol=0, atol=0)
    for a, b in zip(feats, net.encode(x, layers), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_encode_returns_features_in_requested_order() -> None:
    net = ResnetGenerator(ngf=NGF, n_blocks=2)
    x = torch.randn(1, 1, 16, 16)
    shallow, deep = net.encode(x, [1, 10])
    deep2, shallow2 = net.encode(x, [10, 1])
    torch.testing.assert_close(shallow, shallow2)
    torch.testing.assert_close(deep, deep2)


def test_feature_before_inplace_relu_is_the_relu_output_as_in_official_code() -> None:
    # CycleGAN layout: index 8 is a norm followed by an in-place ReLU that overwrites it.
    net = ResnetGenerator(ngf=NGF, n_blocks=2)
    (alone,) = net.encode(torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(1)), [8])
    assert alone.min() >= 0
    _, (full,) = net.forward_with_features(torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(1)), [8])
    torch.testing.assert_close(alone, full)


def test_encode_rejects_out_of_range_layer() -> None:
    with pytest.raises(ConfigError, match="28 modules"):
        ResnetGenerator(ngf=NGF).encode(torch.randn(1, 1, 16, 16), [0, 28])


@pytest.mark.parametrize("antialias", [False, True])
def test_discriminator_loads_official_state_dict_strictly(antialias: bool) -> None:
    shapes = official_discriminator_shapes(NGF, 3, antialias)
    state = {key: torch.randn(shape) for key, shape in shapes.items()}
    net = NLayerDiscriminator(ndf=NGF, n_layers=3, antialias=antialias)
    assert list(net.state_dict()) == list(shapes)
    net.load_state_dict(state, strict=True)


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize(("size", "patches"), [(64, 6), (128, 14), (256, 30)])
def test_patchgan_output_grid(antialias: bool, size: int, patches: int) -> None:
    net = NLayerDiscriminator(ndf=4, n_layers=3, antialias=antialias)
    assert net(torch.randn(1, 1, size, size)).shape == (1, 1, patches, patches)


def test_blur_resampling_keeps_a_constant_image_constant() -> None:
    x = torch.full((1, 3, 8, 8), 0.7)
    down = BlurDownsample(3)(x)
    up = BlurUpsample(3)(x)
    assert down.shape == (1, 3, 4, 4) and up.shape == (1, 3, 16, 16)
    torch.testing.assert_close(down, torch.full_like(down, 0.7))
    torch.testing.assert_close(up, torch.full_like(up, 0.7))


def test_blur_filters_are_binomial() -> None:
    down = BlurDownsample(1).filt[0, 0]
    up = BlurUpsample(1).filt[0, 0]
    torch.testing.assert_close(down, torch.tensor([1.0, 2.0, 1.0]).outer(torch.tensor([1.0, 2.0, 1.0])) / 16)
    torch.testing.assert_close(up, torch.tensor([1.0, 3.0, 3.0, 1.0]).outer(torch.tensor([1.0, 3.0, 3.0, 1.0])) / 16)


def test_init_weights_normal_statistics() -> None:
    torch.manual_seed(0)
    conv, bn, linear = nn.Conv2d(64, 64, 3), nn.BatchNorm2d(64), nn.Linear(256, 256)
    init_weights(nn.Sequential(conv, bn, linear, nn.InstanceNorm2d(4)), "normal", gain=0.02)
    assert abs(conv.weight.std().item() - 0.02) < 0.001
    assert abs(linear.weight.std().item() - 0.02) < 0.001
    assert conv.bias is not None and conv.bias.abs().max() == 0 and linear.bias.abs().max() == 0
    assert abs(bn.weight.mean().item() - 1.0) < 0.01 and bn.bias.abs().max() == 0


def test_init_weights_xavier_gain() -> None:
    torch.manual_seed(0)
    linear = init_weights(nn.Linear(400, 400), "xavier", gain=0.02)
    expected_std = 0.02 * (2.0 / 800) ** 0.5
    assert abs(linear.weight.std().item() - expected_std) / expected_std < 0.02


def test_unknown_choices_name_the_value_and_the_options() -> None:
    with pytest.raises(ConfigError, match="'group'.*'instance'"):
        ResnetGenerator(norm="group")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'uniform'"):
        init_weights(nn.Linear(2, 2), "uniform")  # type: ignore[arg-type]
