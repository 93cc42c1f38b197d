"""NICE-GAN (Chen et al., CVPR 2020) as a vstk translator: ``nicegan``, grayscale.

"No independent component for encoding": each domain's discriminator begins with an
encoder, and the generators are decoders that read those codes. ceT1 -> hrT2 at inference
is the ceT1 discriminator's encoder followed by the hrT2 decoder. The encoders are trained
only by the discriminator loss (decoupled training, as the official code: the generator
optimiser holds the decoders alone). Defaults follow the official code: ch 64 (``ngf`` =
``ndf``), 6 AdaILN residual blocks, discriminators of 7 layers with local and global heads
and a class-activation logit, spectral norm, LSGAN on all three outputs, losses adv 1 /
cycle 10 / reconstruction 10, Adam 1e-4 (0.5, 0.999) with weight decay 1e-4, PyTorch's
default initialisation, batch 1, random left-right flips, 300 000 iterations with linear
decay over the second half, and the full (not "light") style MLP.

This module stays light (no torch import) so listing plugins is fast; the networks live in
``networks.py`` and the training step in ``model.py``.
"""

from __future__ import annotations

import dataclasses

import vstk
from vstk.translation.base import CPU_VIEWS, SliceTranslator, TranslatorConfig

__version__ = "0.1.0"


@dataclasses.dataclass(frozen=True)
class NiceGANConfig(TranslatorConfig):
    """NICE-GAN settings on top of :class:`vstk.translation.base.TranslatorConfig`.

    ``ngf`` is the decoders' base width, ``ndf`` the discriminators' (the official ``ch``
    sets both); ``n_blocks`` the AdaILN residual blocks (``n_res``); ``n_layers_d`` the
    discriminator depth (``n_dis``, at least 6; the global head needs slices of at least
    3 * 2**(n_layers_d - 2) pixels). ``norm`` is not used (NICE-GAN has its own ILN/AdaILN).

    Attributes:
        weight_decay: Adam weight decay of every network.
        adv_weight, cycle_weight, recon_weight: loss weights (1, 10, 10).
        light: style MLP on the averaged feature map (NICE-GAN light) instead of the whole map.
        init_type: "pytorch" only: the official code keeps PyTorch's default initialisation.
    """

    lr: float = 1e-4
    weight_decay: float = 1e-4
    adv_weight: float = 1.0
    cycle_weight: float = 10.0
    recon_weight: float = 10.0
    ngf: int = 64
    ndf: int = 64
    n_blocks: int = 6
    n_layers_d: int = 7
    light: bool = False
    init_type: str = "pytorch"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_layers_d < 6:
            raise vstk.ConfigError(f"n_layers_d={self.n_layers_d}: the NICE-GAN discriminator needs at least 6 layers",
                                   fix="use n_layers_d=7 (official) or 6 for small slices")
        smallest = 3 * 2 ** (self.n_layers_d - 2)
        if self.size < smallest:
            raise vstk.ConfigError(f"size={self.size} is too small for a {self.n_layers_d}-layer NICE-GAN "
                                   f"discriminator (its global head needs at least {smallest} pixels)",
                                   fix=f"use size>={smallest} or a smaller n_layers_d")
        if self.init_type != "pytorch":
            raise vstk.ConfigError(f"init_type={self.init_type!r} is not supported by NICE-GAN",
                                   fix="use init_type=pytorch (the official default initialisation)")
        for name in ("adv_weight", "cycle_weight", "recon_weight", "weight_decay"):
            if getattr(self, name) < 0:
                raise vstk.ConfigError(f"{name}={getattr(self, name)} is negative", fix=f"use {name}>=0")


# Paper: 256 x 256 slices of a 384-pixel crop at 0.41 mm (as the in-tree translators), the
# official 300 000 iterations with the rate decaying linearly over the second half.
PAPER = NiceGANConfig(size=256, spacing=(0.41, 0.41), crop=384, steps=150_000, decay_steps=150_000,
                      checkpoint_every=5000, sample_every=5000)
# CPU: the in-tree cpu profiles' slices (96 x 96 at 0.55 mm around each ear); ch 8, 2 residual blocks,
# the light style MLP and 300 + 300 steps: a NICE-GAN step runs ~20 network passes, about
# 0.6 s at this width on one busy core (1.45 s at ch 16 with 4 blocks), so this trains in
# a few minutes on 2 cores; the in-tree cpu profiles' slice draws and pool views (focus near the ears,
# VS greyed before translation).
CPU = NiceGANConfig(size=96, spacing=(0.55, 0.55), crop=None, centre="ears", steps=300, decay_steps=300, ngf=8,
                    ndf=8, n_blocks=2, light=True, checkpoint_every=100, sample_every=200, **CPU_VIEWS)


class NiceGANTranslator(SliceTranslator):
    """ceT1 -> hrT2 with NICE-GAN (inference: ceT1 encoder + hrT2 decoder)."""

    name = "nicegan"
    config_class = NiceGANConfig
    profiles = {"paper": PAPER, "cpu": CPU}

    def build_model(self):
        from .model import NiceGANModel

        return NiceGANModel(self.config, self.device)

    def build_generator(self):
        from .model import build_translator

        return build_translator(self.config)


@vstk.hookimpl
def vstk_register_translators(registry) -> None:
    registry.add(NiceGANTranslator)
