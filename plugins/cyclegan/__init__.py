"""CycleGAN translator plugin (Zhu et al. 2017): pixel-level cycle consistency.

Defaults follow the official pytorch-CycleGAN-and-pix2pix code: ResNet-9 generators with
ngf 64 and instance norm, 70 x 70 PatchGAN discriminators (3 layers), LSGAN loss,
lambda 10 for each cycle, identity loss 0.5 x lambda, image pools of 50, discriminator loss
halved, Adam 2e-4 (0.5, 0.999), weights from N(0, 0.02), linear decay. This module stays
light (no torch import) so listing plugins is fast; the networks live in ``model.py``.
"""

from __future__ import annotations

import dataclasses

import vstk
from vstk.translation.base import SliceTranslator, TranslatorConfig


@dataclasses.dataclass(frozen=True)
class CycleGANConfig(TranslatorConfig):
    """CycleGAN settings on top of :class:`TranslatorConfig`.

    Attributes:
        lambda_a: weight of the cycle loss A -> B -> A (ceT1).
        lambda_b: weight of the cycle loss B -> A -> B (hrT2).
        lambda_identity: identity loss weight as a fraction of lambda (0.5 in the paper).
        pool_size: image pool of generated images for the discriminators (0 = none).
        gan_mode: "lsgan" (official default), "vanilla" or "nonsaturating".
    """

    lambda_a: float = 10.0
    lambda_b: float = 10.0
    lambda_identity: float = 0.5
    pool_size: int = 50
    gan_mode: str = "lsgan"


PAPER = CycleGANConfig(size=256, spacing=(0.41, 0.41), crop=384, epochs=200, decay_epochs=200,
                       ngf=64, n_blocks=9, checkpoint_every=5000, sample_every=5000)
#: 96 x 96 slices at 0.55 mm around each ear, narrow networks, 400 + 400 steps: about 0.4 s a
#: step on one core, 5-6 minutes with both translators side by side on 2 cores (450 + 450
#: until the segmenter's structure intensity augmentation and a slower day left `vstk run`
#: at 16 minutes; the measurements below are of 900 steps). Measured on
#: the phantom (benchmarks/translation_quality.py, CycleGAN, equal time): 96 px x 900 steps
#: 11.3 dB PSNR / SSIM 0.29, 128 px at 0.41 mm x 600 steps 8.2 dB / 0.19 (histogram
#: matching 8.2 dB / 0.08); 128 px x 1200 steps (twice the time) 13.0 dB / 0.32.
#: Identity loss as in the paper (0.5). Without it (lambda_identity 0) translation fidelity
#: rises but the segmentation that matters falls; measured on the phantom (translation
#: quality on the paired cases; Dice of `vstk run` with the cpu nnU-Net on the test hrT2):
#: identity 0.5: 11.26 dB / SSIM 0.287, VS intensity +0.28 (ceT1's bright tumour kept),
#:   two views (+ QS-Attn) round 0 VS Dice 0.371;
#: identity 0: 12.85 dB / 0.315, VS -0.55 (a crude inversion: tumour dark, bone bright),
#:   two views round 0 VS Dice 0.000;
#: identity 0, 1800 steps: 17.90 dB / 0.407, VS -0.46, alone VS Dice 0.000 (the segmenter
#:   learnt its views, pseudo Dice 0.87, and found nothing on real hrT2).
#: identity 0.5, 1800 steps (twice the time): 13.98 dB / 0.344, VS -0.08, two views round 0
#:   VS Dice 0.087: after translation, Dice is not predicted by fidelity on this phantom.
#: Again with today's segmenter (structure intensity augmentation, bfloat16, 1000 + 400
#:   iterations), `vstk run --translators cyclegan,qsattn --set cyclegan.lambda_identity=0`
#:   (the same QS-Attn): round 1 VS 0.578 / cochlea 0.062 (round 0: 0.403 / 0.000) against
#:   0.508 / 0.822 with identity 0.5: the VS gains, the cochlea is lost. Identity stays 0.5.
#: Longer translation with today's segmenter: `--set steps=1200 --set decay_steps=1200` (both
#:   translators, 2400 steps; 977 s side by side against about 300 s), round 1 VS Dice 0.717 /
#:   0.700 / 0.687 for nnU-Net seeds 0 / 1 / 2 against 0.468 / 0.471 / 0.537 with 800 steps
#:   (README, "The main job"; one translator training shared by the three seeds). 600 + 600
#:   steps (one run, seed 0): VS 0.407, below 800 steps, and 15:30 wall. Neither fits
#:   `vstk run`'s 15-minute budget on 2 cores, so the profile keeps 400 + 400 steps.
CPU = CycleGANConfig(size=96, spacing=(0.55, 0.55), crop=None, centre="ears", steps=400, decay_steps=400, ngf=16,
                     n_blocks=6, ndf=32, checkpoint_every=150, sample_every=300, batch_size=1)


class CycleGANTranslator(SliceTranslator):
    """ceT1 -> hrT2 with CycleGAN; inference uses G_A."""

    name = "cyclegan"
    config_class = CycleGANConfig
    profiles = {"paper": PAPER, "cpu": CPU}

    def build_model(self):
        from .model import CycleGANModel

        return CycleGANModel(self.config, self.device)

    def build_generator(self):
        from .model import build_generator

        return build_generator(self.config)


@vstk.hookimpl
def vstk_register_translators(registry) -> None:
    registry.add(CycleGANTranslator)
