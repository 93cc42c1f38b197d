"""NICE-GAN networks: a discriminator whose first layers are the encoder, and an AdaILN decoder.

Layouts follow the official NICE-GAN (Chen et al., CVPR 2020) for grayscale images
(B, 1, H, W) in [-1, 1]; names and module structure are this package's own.

* :class:`NiceEncoder` (the discriminator's early layers): two reflect-padded, spectrally
  normalised 4x4 stride-2 convs (1 -> ndf -> 2 ndf, LeakyReLU 0.2), then the class-activation
  block: global average and max pooling feed a spectrally normalised linear classifier
  (4 ndf -> 1, the CAM logit); the feature map, duplicated and weighted by that classifier's
  raw weights, goes through a 1x1 conv (4 ndf -> 2 ndf) scaled by a learned ``lamda``
  (initially 0) and is added to the feature map, then LeakyReLU 0.2. Output ``z``:
  (B, 2 ndf, H/4, W/4), the code both the discriminator heads and a decoder read.
* :class:`NiceDiscriminator`: the encoder plus two heads at two scales. The local head
  adds ``n_layers - 6`` stride-2 convs, a stride-1 conv and a 1-channel conv; the global
  head branches after the local head's stride-2 convs and adds two more stride-2 convs, a
  stride-1 conv and a 1-channel conv. Channels double at every conv; every conv is 4x4,
  reflect-padded by 1 and spectrally normalised. With ``n_layers`` 7 the receptive fields are
  70 (local) and 286 (global) pixels.
* :class:`NiceDecoder` (the "generator"): a 3x3 conv from the code to 4 ngf with ILN; a
  style MLP (the whole flattened map, or its average with ``light``) giving per-image
  ``gamma`` and ``beta``; ``n_blocks`` residual blocks with adaptive ILN (AdaILN); two
  sub-pixel 2x upsamplings (3x3 conv, ILN, ReLU, 1x1 conv to 4x channels, PixelShuffle,
  ILN, ReLU); a 7x7 conv to one channel and tanh.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

_EPS = 1e-5


def _mixed_norm(x: Tensor, rho_logits: Tensor) -> Tensor:
    """Instance- and layer-normalised ``x`` blended per channel by ``softmax(rho_logits)``.

    ``rho_logits`` is (C, 2): column 0 weighs instance norm (per image and channel over H, W),
    column 1 layer norm (per image over C, H, W). Variances are unbiased, as in the official code.
    """
    inst = (x - x.mean(dim=(2, 3), keepdim=True)) / torch.sqrt(x.var(dim=(2, 3), keepdim=True) + _EPS)
    layer = (x - x.mean(dim=(1, 2, 3), keepdim=True)) / torch.sqrt(x.var(dim=(1, 2, 3), keepdim=True) + _EPS)
    weights = torch.softmax(rho_logits, dim=1)
    return weights[:, 0].view(1, -1, 1, 1) * inst + weights[:, 1].view(1, -1, 1, 1) * layer


class ILN(nn.Module):
    """Layer-instance normalisation with a learned per-channel scale and shift.

    Starts close to layer norm (mixing logits 1 : 3.2, as the official initialisation).
    Shape-preserving on (B, C, H, W).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.rho = nn.Parameter(torch.tensor([1.0, 3.2]).repeat(channels, 1))
        self.scale = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return _mixed_norm(x, self.rho) * self.scale.view(1, -1, 1, 1) + self.shift.view(1, -1, 1, 1)


class AdaILN(nn.Module):
    """Adaptive layer-instance normalisation: the scale and shift come per image from the style MLP.

    Starts close to instance norm (mixing logits 3.2 : 1).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.rho = nn.Parameter(torch.tensor([3.2, 1.0]).repeat(channels, 1))

    def forward(self, x: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
        """``x`` (B, C, H, W); ``gamma``, ``beta`` (B, C)."""
        return _mixed_norm(x, self.rho) * gamma[:, :, None, None] + beta[:, :, None, None]


class AdaILNBlock(nn.Module):
    """Residual block ``x + norm(conv(relu(norm(conv(x)))))`` with AdaILN, 3x3 convs without bias."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, bias=False)
        self.norm1 = AdaILN(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, bias=False)
        self.norm2 = AdaILN(channels)

    def forward(self, x: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
        h = F.relu(self.norm1(self.conv1(F.pad(x, (1, 1, 1, 1), mode="reflect")), gamma, beta))
        h = self.norm2(self.conv2(F.pad(h, (1, 1, 1, 1), mode="reflect")), gamma, beta)
        return x + h


def _sn_conv(c_in: int, c_out: int, stride: int, bias: bool = True) -> list[nn.Module]:
    """Reflect pad 1 + spectrally normalised 4x4 conv."""
    return [nn.ReflectionPad2d(1), spectral_norm(nn.Conv2d(c_in, c_out, 4, stride=stride, bias=bias))]


class NiceEncoder(nn.Module):
    """The discriminator's early layers, shared with the decoder of the other domain.

    Input (B, input_nc, H, W); :meth:`forward` returns ``(z, cam_logit)``: the code
    (B, 2 ndf, H/4, W/4) and the class-activation logit (B, 1).
    """

    def __init__(self, input_nc: int = 1, ndf: int = 64) -> None:
        super().__init__()
        self.ndf = ndf
        self.down = nn.Sequential(*_sn_conv(input_nc, ndf, 2), nn.LeakyReLU(0.2),
                                  *_sn_conv(ndf, 2 * ndf, 2), nn.LeakyReLU(0.2))
        self.cam_fc = spectral_norm(nn.Linear(4 * ndf, 1, bias=False))
        self.cam_mix = nn.Conv2d(4 * ndf, 2 * ndf, 1)
        self.lamda = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.down(x)
        pooled = torch.cat([F.adaptive_avg_pool2d(h, 1), F.adaptive_max_pool2d(h, 1)], dim=1).flatten(1)
        cam_logit = self.cam_fc(pooled)
        # The official block weights the maps with the classifier's raw (not normalised) weights.
        raw = self.cam_fc.parametrizations.weight.original  # (1, 4 ndf)
        weighted = torch.cat([h, h], dim=1) * raw[0][None, :, None, None]
        z = F.leaky_relu(self.lamda * self.cam_mix(weighted) + h, 0.2)
        return z, cam_logit


class NiceDiscriminator(nn.Module):
    """Encoder + local and global PatchGAN heads (see the module docstring for the layout).

    :meth:`forward` returns ``(local_logits, global_logits, cam_logit, z)``; :meth:`heads`
    judges a code ``z`` already computed by :attr:`encoder`.
    """

    def __init__(self, input_nc: int = 1, ndf: int = 64, n_layers: int = 7) -> None:
        super().__init__()
        if n_layers < 6:
            raise ValueError(f"n_layers={n_layers}: the NICE-GAN discriminator needs at least 6")
        self.encoder = NiceEncoder(input_nc, ndf)
        local_down: list[nn.Module] = []
        channels = 2 * ndf
        for _ in range(n_layers - 6):
            local_down += [*_sn_conv(channels, 2 * channels, 2), nn.LeakyReLU(0.2)]
            channels *= 2
        self.local_down = nn.Sequential(*local_down)
        self.local_out = nn.Sequential(*_sn_conv(channels, 2 * channels, 1), nn.LeakyReLU(0.2),
                                       *_sn_conv(2 * channels, 1, 1, bias=False))
        global_layers: list[nn.Module] = []
        for _ in range(2):
            global_layers += [*_sn_conv(channels, 2 * channels, 2), nn.LeakyReLU(0.2)]
            channels *= 2
        self.global_out = nn.Sequential(*global_layers, *_sn_conv(channels, 2 * channels, 1), nn.LeakyReLU(0.2),
                                        *_sn_conv(2 * channels, 1, 1, bias=False))

    def heads(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Local and global patch logits of a code ``z`` (B, 2 ndf, H/4, W/4)."""
        shared = self.local_down(z)
        return self.local_out(shared), self.global_out(shared)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        z, cam_logit = self.encoder(x)
        local_logits, global_logits = self.heads(z)
        return local_logits, global_logits, cam_logit, z


class NiceDecoder(nn.Module):
    """Decoder-only generator: code (B, code_nc, S/4, S/4) -> image (B, output_nc, S, S) in [-1, 1].

    Args:
        code_nc: channels of the encoder's code (2 ndf).
        ngf: base width; the residual blocks run at 4 ngf.
        n_blocks: AdaILN residual blocks.
        size: image size S (the full style MLP reads the whole (S/4)^2 map).
        light: style MLP on the spatially averaged map (NICE-GAN light) instead of the whole map.
        output_nc: output channels.
    """

    def __init__(self, code_nc: int, ngf: int = 64, n_blocks: int = 6, size: int = 256, light: bool = False,
                 output_nc: int = 1) -> None:
        super().__init__()
        width = 4 * ngf
        self.light = light
        self.entry = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(code_nc, width, 3), ILN(width), nn.ReLU())
        style_in = width if light else (size // 4) ** 2 * width
        self.style = nn.Sequential(nn.Linear(style_in, width, bias=False), nn.ReLU(),
                                   nn.Linear(width, width, bias=False), nn.ReLU())
        self.gamma = nn.Linear(width, width, bias=False)
        self.beta = nn.Linear(width, width, bias=False)
        self.blocks = nn.ModuleList(AdaILNBlock(width) for _ in range(n_blocks))
        up: list[nn.Module] = []
        for channels in (width, width // 2):
            half = channels // 2
            up += [nn.ReflectionPad2d(1), nn.Conv2d(channels, half, 3, bias=False), ILN(half), nn.ReLU(),
                   nn.Conv2d(half, 4 * half, 1), nn.PixelShuffle(2), ILN(half), nn.ReLU()]
        up += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7, bias=False), nn.Tanh()]
        self.up = nn.Sequential(*up)

    def forward(self, z: Tensor) -> Tensor:
        x = self.entry(z)
        style_in = F.adaptive_avg_pool2d(x, 1).flatten(1) if self.light else x.flatten(1)
        style = self.style(style_in)
        gamma, beta = self.gamma(style), self.beta(style)
        for block in self.blocks:
            x = block(x, gamma, beta)
        return self.up(x)


class NiceTranslator(nn.Module):
    """Inference network ceT1 -> hrT2: the ceT1 discriminator's encoder, then the hrT2 decoder."""

    def __init__(self, encoder: NiceEncoder, decoder: NiceDecoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x: Tensor) -> Tensor:
        """(B, 1, S, S) in [-1, 1] -> (B, 1, S, S) in [-1, 1]."""
        return self.decoder(self.encoder(x)[0])
