"""QS-Attn translator plugin (Hu et al., CVPR 2022): contrastive learning on query-selected patches.

Built on CUT's PatchNCE (Park et al. 2020). Defaults follow the official code: anti-aliased
ResNet-9 generator (ngf 64), anti-aliased 3-layer PatchGAN, LSGAN, lambda_GAN 1,
lambda_NCE 1, identity NCE on real hrT2 (the two NCE terms averaged), NCE layers
0,4,8,12,16 of the encoder, 256 patches, tau 0.07, 2-layer MLP head of width 256 with L2
normalisation, xavier init (gain 0.02), no image pool, Adam 2e-4 (0.5, 0.999). The query
selection (global attention, the paper's choice; or local 7 x 7, or local_global) replaces
random patches on the two deepest NCE layers, and the same attention rows weight the source
and the translated features.
"""

from __future__ import annotations

import dataclasses

import vstk
from vstk.translation.base import CPU_VIEWS, SliceTranslator, TranslatorConfig

QS_MODES = ("global", "local", "local_global")


@dataclasses.dataclass(frozen=True)
class QSAttnConfig(TranslatorConfig):
    """QS-Attn settings on top of :class:`TranslatorConfig`.

    Attributes:
        qs_mode: "global" (default), "local" (7 x 7 window) or "local_global".
        qs_layers: how many of the deepest NCE layers use query selection (2 in QS-Attn).
        lambda_gan, lambda_nce: loss weights.
        nce_idt: identity NCE on real hrT2 (G(hrT2) must keep hrT2's patches).
        nce_layers: encoder layer indices for PatchNCE.
        nce_t: temperature tau.
        num_patches: patches (queries) per layer and image.
        netf_nc: width of the MLP projection head.
        detach_attention: stop gradients through the attention (the official code does not).
        gan_mode: "lsgan" (default), "vanilla" or "nonsaturating".
        antialias: anti-aliased down/up-sampling in G and D (CUT's default).
    """

    init_type: str = "xavier"
    qs_mode: str = "global"
    qs_layers: int = 2
    lambda_gan: float = 1.0
    lambda_nce: float = 1.0
    nce_idt: bool = True
    nce_layers: tuple[int, ...] = (0, 4, 8, 12, 16)
    nce_t: float = 0.07
    num_patches: int = 256
    netf_nc: int = 256
    detach_attention: bool = False
    gan_mode: str = "lsgan"
    antialias: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.qs_mode not in QS_MODES:
            raise vstk.ConfigError(f"unknown QS-Attn mode {self.qs_mode!r}",
                                   fix=f"use one of {', '.join(QS_MODES)}")
        if not 0 <= self.qs_layers <= len(self.nce_layers):
            raise vstk.ConfigError(f"qs_layers={self.qs_layers} must be between 0 and {len(self.nce_layers)}")


PAPER = QSAttnConfig(size=256, spacing=(0.41, 0.41), crop=384, epochs=200, decay_epochs=200, ngf=64,
                     n_blocks=9, checkpoint_every=5000, sample_every=5000)
#: The CycleGAN cpu profile's slices and widths, for the same 15-minute budget: 3 residual blocks and
#: ndf 16 (docs/results.md#lighter-translator-networks), the NCE layers at the input, the two down
#: convolutions and the first and last residual blocks (0, 4, 8, 12, 14: CUT's choice moved to the
#: shorter generator), 560 + 560 steps (the time of 400 + 400 with 6 blocks);
#: 128 patches and a 128-wide head: halved with the networks (not measured); the shared slice draws,
#: pool views and CPU arithmetic of every cpu profile (CPU_VIEWS in vstk.translation.base: twice the
#: steps in bfloat16 where the CPU has AMX).
CPU = QSAttnConfig(size=96, spacing=(0.55, 0.55), crop=None, centre="ears", steps=560, decay_steps=560, ngf=16,
                   n_blocks=3, ndf=16, nce_layers=(0, 4, 8, 12, 14), num_patches=128, netf_nc=128,
                   checkpoint_every=190, sample_every=380, **CPU_VIEWS)


class QSAttnTranslator(SliceTranslator):
    """ceT1 -> hrT2 with QS-Attn (one generator; inference uses G)."""

    name = "qsattn"
    config_class = QSAttnConfig
    profiles = {"paper": PAPER, "cpu": CPU}
    official_antialias = True

    def build_model(self):
        from .model import QSAttnModel

        return QSAttnModel(self.config, self.device)

    def build_generator(self):
        from .model import build_generator

        return build_generator(self.config)


@vstk.hookimpl
def vstk_register_translators(registry) -> None:
    registry.add(QSAttnTranslator)
