"""vstk-template: the starting point for a new ceT1 -> hrT2 translator plugin.

Copy ``examples/vstk-template``, rename ``vstk_template`` / ``template`` / ``Template*`` to
your method's name (and in ``setup.cfg``), then change what the ``REPLACE`` comments mark:
the settings below and the networks and training step in ``model.py``. Everything else
comes from :class:`vstk.translation.base.SliceTranslator`: axial slicing around the head or
each ear, intensity normalisation, the training loop (seeding, linear-decay schedule, exact
resume, ``losses.csv``, sample PNGs, ``translator.pt``), safe checkpoint loading, and
streamed translation of whole volumes back onto their own grid.

The method here is small but real, so that the copy trains and translates from the first
minute: a ResNet generator G (ceT1 -> hrT2) against a PatchGAN discriminator D (LSGAN),
plus a structure term that keeps the input's edges where they are (L1 between the
image-gradient magnitudes of ceT1 and its translation, blind to the contrast inversions
between the two sequences). It is a template, not a published method.

This module stays light: ``vstk plugins`` imports it to list the plugin, so torch is
imported only in ``model.py``, when a translator is built.
"""

from __future__ import annotations

import dataclasses

import vstk
from vstk.translation.base import CPU_VIEWS, SliceTranslator, TranslatorConfig

__version__ = "0.1.0"

GAN_MODES = ("lsgan", "vanilla", "nonsaturating")


@dataclasses.dataclass(frozen=True)
class TemplateConfig(TranslatorConfig):
    """The template's settings on top of :class:`vstk.translation.base.TranslatorConfig`
    (slices, schedule, network widths, ``seed``, ...).

    REPLACE: your method's own settings. Every field is a ``--set key=value`` on the command
    line and is stored in each checkpoint, so give each a default and check it here.

    Attributes:
        lambda_gan: weight of G's adversarial loss.
        lambda_structure: weight of the structure term (L1 between the gradient magnitudes
            of ceT1 and of its translation, both in [-1, 1] units per pixel); 0 turns it off.
        gan_mode: the adversarial objective of :class:`vstk.translation.GANLoss`.
    """

    lambda_gan: float = 1.0
    lambda_structure: float = 10.0
    gan_mode: str = "lsgan"

    def __post_init__(self) -> None:
        super().__post_init__()  # TranslatorConfig's own checks (size, centre, translate_batch)
        if self.lambda_gan <= 0:
            raise vstk.ConfigError(f"lambda_gan={self.lambda_gan} must be positive (the adversarial loss is what "
                                   f"makes the output look like hrT2)", fix="use lambda_gan=1")
        if self.lambda_structure < 0:
            raise vstk.ConfigError(f"lambda_structure={self.lambda_structure} is negative",
                                   fix="use 0 (off) or a positive weight, e.g. lambda_structure=10")
        if self.gan_mode not in GAN_MODES:
            raise vstk.ConfigError(f"gan_mode={self.gan_mode!r} is not allowed",
                                   fix=f"use one of {', '.join(GAN_MODES)}")


# REPLACE: your method's published settings. Both profiles are required: `paper` for GPUs
# (256 x 256 slices of a 384-pixel crop at 0.41 mm, as the in-tree translators), `cpu` for a
# few minutes on two cores (the in-tree cpu profiles' slices, steps, widths, slice draws and pool
# views, so that `vstk bench` compares methods at the same budget).
PAPER = TemplateConfig(size=256, spacing=(0.41, 0.41), crop=384, epochs=200, decay_epochs=200, ngf=64, n_blocks=9,
                       checkpoint_every=5000, sample_every=5000)
CPU = TemplateConfig(size=96, spacing=(0.55, 0.55), crop=None, centre="ears", steps=660, decay_steps=660, ngf=16,
                     n_blocks=3, ndf=16, checkpoint_every=220, sample_every=440, **CPU_VIEWS)


class TemplateTranslator(SliceTranslator):
    """ceT1 -> hrT2 with the template's GAN; inference uses G.

    SliceTranslator implements every member of :class:`vstk.Translator` on top of the two
    builders below, which are all a plugin has to write.
    """

    name = "template"  # REPLACE: the name users type, `vstk run --translators template`
    config_class = TemplateConfig
    profiles = {"paper": PAPER, "cpu": CPU}

    def build_model(self):
        """The trainable model: networks, optimisers and one training step (``model.py``)."""
        from .model import TemplateModel  # torch is imported here, not when plugins are listed

        return TemplateModel(self.config, self.device)

    def build_generator(self):
        """The inference network that ``translator.pt``'s generator weights load into."""
        from .model import build_generator

        return build_generator(self.config)


@vstk.hookimpl
def vstk_register_translators(registry) -> None:
    """Register the translator (``setup.cfg``'s entry point names this module)."""
    registry.add(TemplateTranslator)
