"""ResNet generator, PatchGAN discriminator and weight initialisation shared by translators.

The module layouts reproduce the official pytorch-CycleGAN-and-pix2pix and CUT networks index
for index, so their checkpoints load with ``load_state_dict(strict=True)``:

* ``antialias=False`` is the CycleGAN layout (strided convs down, transposed convs up).
* ``antialias=True`` is CUT's default (``no_antialias=False, no_antialias_up=False``): stride-1
  convs followed by a fixed [1, 2, 1] blur-and-subsample (:class:`BlurDownsample`, buffer
  ``filt`` of shape (C, 1, 3, 3)), and a fixed [1, 3, 3, 1] blur upsample (:class:`BlurUpsample`,
  buffer ``filt`` of shape (C, 1, 4, 4)) before a stride-1 conv.

Images are (B, C, H, W) tensors with intensities in [-1, 1]; H and W must be multiples of 4
for the generator to return the input size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError

NormName = Literal["instance", "batch", "none"]
PaddingName = Literal["reflect", "replicate", "zero"]
InitName = Literal["normal", "xavier", "kaiming", "orthogonal"]

_NORMS = ("instance", "batch", "none")
_PADDINGS = ("reflect", "replicate", "zero")
_INITS = ("normal", "xavier", "kaiming", "orthogonal")


def _norm_layer(norm: str, channels: int) -> nn.Module:
    """One normalisation layer as the official ``get_norm_layer`` builds it."""
    if norm == "instance":
        # Official: no affine parameters and no running statistics (nothing in the state dict).
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if norm == "batch":
        return nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    return nn.Identity()


def _check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(
            f"{name}={value!r} is not supported",
            fix=f"use one of {', '.join(repr(a) for a in allowed)}",
        )


def _is_inplace_activation(module: nn.Module) -> bool:
    return isinstance(module, (nn.ReLU, nn.LeakyReLU)) and module.inplace


def _binomial_filter(size: int) -> Tensor:
    """Normalised 2D binomial blur kernel, (size, size), summing to 1."""
    row = torch.tensor([math.comb(size - 1, k) for k in range(size)], dtype=torch.float32)
    kernel = row[:, None] * row[None, :]
    return kernel / kernel.sum()


class BlurDownsample(nn.Module):
    """Anti-aliased 2x downsampling: reflect pad, fixed binomial blur, stride 2 (CUT ``Downsample``).

    Input (B, C, H, W) -> output (B, C, ceil(H / 2), ceil(W / 2)) for the default 3-tap filter.
    The blur kernel is the persistent buffer ``filt`` of shape (C, 1, filt_size, filt_size).
    """

    filt: Tensor

    def __init__(self, channels: int, filt_size: int = 3) -> None:
        super().__init__()
        self.channels = channels
        self.filt_size = filt_size
        before, after = (filt_size - 1) // 2, math.ceil((filt_size - 1) / 2)
        self.pad = nn.ReflectionPad2d((before, after, before, after))
        kernel = _binomial_filter(filt_size)
        self.register_buffer("filt", kernel[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Blur and subsample every channel separately; (B, C, H, W) -> (B, C, H', W')."""
        return F.conv2d(self.pad(x), self.filt.to(x.dtype), stride=2, groups=x.shape[1])


class BlurUpsample(nn.Module):
    """Anti-aliased 2x upsampling with a fixed binomial kernel (CUT ``Upsample``).

    Input (B, C, H, W) -> output (B, C, 2H, 2W). Replicate-pads one pixel, applies a grouped
    transposed convolution with the blur kernel scaled by 4 (so a constant image stays
    constant), then crops the border the padding produced. Buffer ``filt``:
    (C, 1, filt_size, filt_size).
    """

    filt: Tensor

    def __init__(self, channels: int, filt_size: int = 4) -> None:
        super().__init__()
        self.channels = channels
        self.filt_size = filt_size
        self.pad = nn.ReplicationPad2d(1)
        kernel = _binomial_filter(filt_size) * 4.0
        self.register_buffer("filt", kernel[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Upsample every channel separately; (B, C, H, W) -> (B, C, 2H, 2W)."""
        pad_size = (self.filt_size - 1) // 2
        out = F.conv_transpose2d(self.pad(x), self.filt.to(x.dtype), stride=2, padding=1 + pad_size, groups=x.shape[1])
        out = out[:, :, 1:, 1:]
        if self.filt_size % 2 == 0:
            out = out[:, :, :-1, :-1]
        return out


class ResnetBlock(nn.Module):
    """Residual block ``x + conv_block(x)``: pad, 3x3 conv, norm, ReLU, [dropout], pad, 3x3 conv, norm.

    The child ``conv_block`` is an ``nn.Sequential`` with the official indices
    (``conv_block.1`` and ``conv_block.5`` are the convolutions with reflect padding and no dropout).
    Shape-preserving: (B, dim, H, W) -> (B, dim, H, W).
    """

    def __init__(
        self,
        dim: int,
        padding_type: PaddingName = "reflect",
        norm: NormName = "instance",
        use_dropout: bool = False,
        use_bias: bool = True,
    ) -> None:
        super().__init__()
        _check_choice("padding_type", padding_type, _PADDINGS)
        layers: list[nn.Module] = []
        for second in (False, True):
            conv_padding = 0
            if padding_type == "reflect":
                layers.append(nn.ReflectionPad2d(1))
            elif padding_type == "replicate":
                layers.append(nn.ReplicationPad2d(1))
            else:
                conv_padding = 1
            layers += [nn.Conv2d(dim, dim, 3, padding=conv_padding, bias=use_bias), _norm_layer(norm, dim)]
            if not second:
                layers.append(nn.ReLU(True))
                if use_dropout:
                    layers.append(nn.Dropout(0.5))
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """(B, dim, H, W) -> (B, dim, H, W)."""
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """ResNet encoder-decoder generator (Johnson et al.), as in CycleGAN and CUT.

    Layout of ``model`` (an ``nn.Sequential``; indices are what ``encode`` and CUT's
    ``nce_layers`` refer to), with ``n_blocks`` = 9:

    ``antialias=False`` (CycleGAN), 28 modules: 0 reflection pad 3, 1 conv 7x7, 2 norm, 3 ReLU,
    4/7 stride-2 3x3 conv, 5/8 norm, 6/9 ReLU, 10-18 ResnetBlocks, 19/22 transposed conv,
    20/23 norm, 21/24 ReLU, 25 reflection pad 3, 26 conv 7x7, 27 Tanh.

    ``antialias=True`` (CUT / QS-Attn), 32 modules: 0 pad, 1 conv 7x7, 2 norm, 3 ReLU,
    4/8 stride-1 3x3 conv, 5/9 norm, 6/10 ReLU, 7/11 BlurDownsample, 12-20 ResnetBlocks,
    21/25 BlurUpsample, 22/26 conv 3x3, 23/27 norm, 24/28 ReLU, 29 pad, 30 conv 7x7, 31 Tanh.

    Convolutions carry a bias only with instance norm (the official rule; the final 7x7 conv
    always has one). Input (B, input_nc, H, W) in [-1, 1], H and W multiples of 4; output
    (B, output_nc, H, W) in [-1, 1].
    """

    def __init__(
        self,
        input_nc: int = 1,
        output_nc: int = 1,
        ngf: int = 64,
        n_blocks: int = 9,
        norm: NormName = "instance",
        use_dropout: bool = False,
        antialias: bool = False,
        padding_type: PaddingName = "reflect",
    ) -> None:
        super().__init__()
        _check_choice("norm", norm, _NORMS)
        _check_choice("padding_type", padding_type, _PADDINGS)
        if n_blocks < 0:
            raise ConfigError(f"n_blocks={n_blocks} is negative", fix="use 0 or more residual blocks")
        self.input_nc = input_nc
        self.output_nc = output_nc
        self.ngf = ngf
        self.antialias = antialias
        use_bias = norm == "instance"

        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(input_nc, ngf, 7, padding=0, bias=use_bias),
            _norm_layer(norm, ngf),
            nn.ReLU(True),
        ]
        for i in range(2):  # two 2x downsamplings
            c_in, c_out = ngf * 2**i, ngf * 2 ** (i + 1)
            stride = 1 if antialias else 2
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=use_bias),
                _norm_layer(norm, c_out),
                nn.ReLU(True),
            ]
            if antialias:
                layers.append(BlurDownsample(c_out))
        for _ in range(n_blocks):
            layers.append(ResnetBlock(ngf * 4, padding_type, norm, use_dropout, use_bias))
        for i in range(2):  # two 2x upsamplings
            c_in, c_out = ngf * 2 ** (2 - i), ngf * 2 ** (1 - i)
            if antialias:
                layers += [BlurUpsample(c_in), nn.Conv2d(c_in, c_out, 3, stride=1, padding=1, bias=use_bias)]
            else:
                layers.append(nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1, bias=use_bias))
            layers += [_norm_layer(norm, c_out), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Translate (B, input_nc, H, W) in [-1, 1] to (B, output_nc, H, W) in [-1, 1]."""
        return self.model(x)

    def _check_layer_ids(self, layer_ids: Sequence[int]) -> None:
        n = len(self.model)
        bad = [i for i in layer_ids if not 0 <= i < n]
        if bad or not layer_ids:
            raise ConfigError(
                f"layer ids {list(layer_ids)} are not valid for a generator with {n} modules",
                fix=f"give at least one index in 0..{n - 1} (CUT uses 0,4,8,12,16)",
            )

    def _run(self, x: Tensor, layer_ids: Sequence[int], stop_early: bool) -> tuple[Tensor, list[Tensor]]:
        wanted = set(layer_ids)
        # The official in-place ReLU after a recorded layer overwrites the recorded tensor, so
        # CUT's feature there is post-activation; run that activation too when stopping early.
        last = max(wanted)
        if last + 1 < len(self.model) and _is_inplace_activation(self.model[last + 1]):
            last += 1
        found: dict[int, Tensor] = {}
        for index, module in enumerate(self.model):
            x = module(x)
            if index in wanted:
                found[index] = x
            if stop_early and index == last:
                break
        return x, [found[i] for i in layer_ids]

    def encode(self, x: Tensor, layer_ids: Sequence[int]) -> list[Tensor]:
        """Activations after the given indices of ``model``, as CUT's ``encode_only=True``.

        Index ``i`` is the output of ``model[i]``, taken after ``model[i + 1]`` where that is an
        in-place ReLU (which overwrites it in the official code too, e.g. index 8 without
        antialiasing is the ReLU output). Index 0 is the reflection-padded input
        (B, input_nc, H + 6, W + 6). CUT's ``nce_layers`` 0,4,8,12,16 on the antialiased
        generator are: the padded input, the first down conv (2 ngf, H), the second down conv
        (4 ngf, H/2), the outputs of residual blocks 1 and 5 (4 ngf, H/4). The forward pass stops
        after the deepest requested index.

        Args:
            x: images (B, input_nc, H, W) in [-1, 1].
            layer_ids: indices into ``model``; the result follows this order.

        Returns:
            One (B, C_i, H_i, W_i) tensor per entry of ``layer_ids``.
        """
        self._check_layer_ids(layer_ids)
        return self._run(x, layer_ids, stop_early=True)[1]

    def forward_with_features(self, x: Tensor, layer_ids: Sequence[int]) -> tuple[Tensor, list[Tensor]]:
        """Translation and intermediate activations from one pass.

        Args:
            x: images (B, input_nc, H, W) in [-1, 1].
            layer_ids: indices into ``model`` (see :meth:`encode`).

        Returns:
            ``(output, features)``: output (B, output_nc, H, W) in [-1, 1], equal to ``forward(x)``,
            and the activations of :meth:`encode` in ``layer_ids`` order.
        """
        self._check_layer_ids(layer_ids)
        return self._run(x, layer_ids, stop_early=False)


class NLayerDiscriminator(nn.Module):
    """PatchGAN discriminator: one real/fake logit per overlapping patch (70x70 for n_layers 3).

    Layout of ``model`` for ``n_layers`` = 3, 4x4 kernels, padding 1:

    ``antialias=False`` (CycleGAN), 12 modules: 0 conv s2, 1 LeakyReLU(0.2), 2/5 conv s2,
    3/6 norm, 4/7 LeakyReLU, 8 conv s1, 9 norm, 10 LeakyReLU, 11 conv s1 to 1 channel.

    ``antialias=True`` (CUT), 15 modules: each stride-2 conv becomes a stride-1 conv and the
    LeakyReLU after it is followed by a :class:`BlurDownsample` (indices 2, 6, 10).

    The first and last convs always have a bias, the others only with instance norm. Channels
    are ``ndf * min(2**n, 8)``. Input (B, input_nc, H, W); output (B, 1, H', W') logits, e.g.
    256 -> 30 and 64 -> 6 for n_layers 3 in both variants.
    """

    def __init__(
        self,
        input_nc: int = 1,
        ndf: int = 64,
        n_layers: int = 3,
        norm: NormName = "instance",
        antialias: bool = False,
    ) -> None:
        super().__init__()
        _check_choice("norm", norm, _NORMS)
        if n_layers < 1:
            raise ConfigError(f"n_layers={n_layers} is too small", fix="use 1 or more (3 is the 70x70 PatchGAN)")
        use_bias = norm == "instance"
        stride = 1 if antialias else 2
        layers: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, stride=stride, padding=1), nn.LeakyReLU(0.2, True)]
        if antialias:
            layers.append(BlurDownsample(ndf))
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=use_bias),
                _norm_layer(norm, ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
            if antialias:
                layers.append(BlurDownsample(ndf * mult))
        prev, mult = mult, min(2**n_layers, 8)
        layers += [
            nn.Conv2d(ndf * prev, ndf * mult, 4, stride=1, padding=1, bias=use_bias),
            _norm_layer(norm, ndf * mult),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Patch logits (B, 1, H', W') for images (B, input_nc, H, W); no sigmoid applied."""
        return self.model(x)


def init_weights(net: nn.Module, init_type: InitName = "normal", gain: float = 0.02) -> nn.Module:
    """Initialise ``net`` in place as the official ``init_weights`` does.

    Conv (any dimension, transposed too) and Linear weights: ``normal`` N(0, gain),
    ``xavier`` Xavier-normal with ``gain``, ``kaiming`` Kaiming-normal (fan_in, a=0, gain
    ignored), ``orthogonal`` with ``gain``; their biases are set to 0. BatchNorm2d weights are
    drawn from N(1, gain) and biases set to 0. Other modules (instance norm without affine,
    blur buffers) are left alone. Draws from torch's global generator: seed it first.

    Returns:
        ``net``, for chaining.
    """
    _check_choice("init_type", init_type, _INITS)

    def init_module(m: nn.Module) -> None:
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            if init_type == "normal":
                nn.init.normal_(m.weight, 0.0, gain)
            elif init_type == "xavier":
                nn.init.xavier_normal_(m.weight, gain=gain)
            elif init_type == "kaiming":
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            else:
                nn.init.orthogonal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)

    with torch.no_grad():
        net.apply(init_module)
    return net
