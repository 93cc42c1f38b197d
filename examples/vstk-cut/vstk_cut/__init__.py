"""CUT and FastCUT (Park et al., ECCV 2020) as vstk translators: ``cut`` and ``fastcut``.

Contrastive unpaired translation: one generator ceT1 -> hrT2, a PatchGAN discriminator, and
PatchNCE between patches of the source and of its translation. Defaults follow the official
code: anti-aliased ResNet-9 generator (ngf 64) and anti-aliased 3-layer PatchGAN, LSGAN,
xavier init (gain 0.02), no image pool, Adam 2e-4 (0.5, 0.999), NCE on encoder layers
0,4,8,12,16, 256 patches per layer, tau 0.07, a 2-layer MLP head of width 256.

* ``cut``: lambda_NCE 1 with identity NCE on real hrT2 (the two NCE terms averaged),
  200 + 200 epochs.
* ``fastcut``: lambda_NCE 10, no identity NCE, flip-equivariance (the input batch is
  flipped left-right with probability 0.5 and the translation's features are flipped back
  before they meet the source's), 150 + 50 epochs.

Everything but the training step is vstk's: slices, networks, PatchNCE, the training loop,
checkpoints and volume translation. This module stays light (no torch import) so listing
plugins is fast; the training step lives in ``model.py``.
"""

from __future__ import annotations

import dataclasses

import vstk
from vstk.translation.base import CPU_VIEWS, SliceTranslator, TranslatorConfig

__version__ = "0.1.0"


@dataclasses.dataclass(frozen=True)
class CUTConfig(TranslatorConfig):
    """CUT / FastCUT settings on top of :class:`vstk.translation.base.TranslatorConfig`.

    Attributes:
        lambda_gan: weight of the adversarial loss of G.
        lambda_nce: weight of PatchNCE (1 for CUT, 10 for FastCUT); must be positive.
        nce_idt: identity NCE on real hrT2, averaged with the main NCE term (CUT only).
        nce_layers: indices of the generator's ``model`` whose activations PatchNCE compares.
        nce_t: PatchNCE temperature tau.
        num_patches: sampled positions per layer and image.
        netf_nc: width of the MLP projection head.
        flip_equivariance: flip the generator input left-right with probability 0.5 and
            compare the flipped-back translation features with the unflipped source (FastCUT).
        gan_mode: "lsgan" (official default), "vanilla" or "nonsaturating".
        antialias: anti-aliased down/up-sampling in G and D (official default).
    """

    init_type: str = "xavier"
    lambda_gan: float = 1.0
    lambda_nce: float = 1.0
    nce_idt: bool = True
    nce_layers: tuple[int, ...] = (0, 4, 8, 12, 16)
    nce_t: float = 0.07
    num_patches: int = 256
    netf_nc: int = 256
    flip_equivariance: bool = False
    gan_mode: str = "lsgan"
    antialias: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lambda_nce <= 0:
            raise vstk.ConfigError(f"lambda_nce={self.lambda_nce} must be positive (PatchNCE is what CUT is)",
                                   fix="use lambda_nce=1 (CUT) or 10 (FastCUT); for a plain GAN use another translator")
        if not self.nce_layers:
            raise vstk.ConfigError("nce_layers is empty", fix="use nce_layers=0,4,8,12,16 (the official layers)")
        if self.num_patches < 1:
            raise vstk.ConfigError(f"num_patches={self.num_patches} must be at least 1", fix="use num_patches=256")
        if self.nce_t <= 0:
            raise vstk.ConfigError(f"nce_t={self.nce_t} must be positive", fix="use nce_t=0.07")


# Paper profiles: 256 x 256 slices of a 384-pixel crop at 0.41 mm (as the in-tree translators),
# official epochs. FastCUT's differences are the official CUT_mode=FastCUT defaults.
PAPER = CUTConfig(size=256, spacing=(0.41, 0.41), crop=384, epochs=200, decay_epochs=200, ngf=64, n_blocks=9,
                  checkpoint_every=5000, sample_every=5000)
FASTCUT_CHANGES = dict(lambda_nce=10.0, nce_idt=False, flip_equivariance=True)
PAPER_FAST = dataclasses.replace(PAPER, epochs=150, decay_epochs=50, **FASTCUT_CHANGES)
# CPU profiles: the in-tree QS-Attn cpu profile's slices, steps, widths, slice draws and pool views
# (focus near the ears, VS greyed before translation), so runs compare.
CPU = CUTConfig(size=96, spacing=(0.55, 0.55), crop=None, centre="ears", steps=560, decay_steps=560, ngf=16,
                n_blocks=3, ndf=16, nce_layers=(0, 4, 8, 12, 14), num_patches=128, netf_nc=128,
                checkpoint_every=190, sample_every=380, **CPU_VIEWS)
CPU_FAST = dataclasses.replace(CPU, **FASTCUT_CHANGES)


class CUTTranslator(SliceTranslator):
    """ceT1 -> hrT2 with CUT (one generator; inference uses G)."""

    name = "cut"
    config_class = CUTConfig
    profiles = {"paper": PAPER, "cpu": CPU}
    official_antialias = True  # official CUT generators load with `vstk translate apply --official`

    def build_model(self):
        from .model import CUTModel

        return CUTModel(self.config, self.device)

    def build_generator(self):
        from .model import build_generator

        return build_generator(self.config)


class FastCUTTranslator(CUTTranslator):
    """ceT1 -> hrT2 with FastCUT: CUT without identity NCE, lambda_NCE 10, flip-equivariance."""

    name = "fastcut"
    profiles = {"paper": PAPER_FAST, "cpu": CPU_FAST}


@vstk.hookimpl
def vstk_register_translators(registry) -> None:
    registry.add(CUTTranslator)
    registry.add(FastCUTTranslator)
