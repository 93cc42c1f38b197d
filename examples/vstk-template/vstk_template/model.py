"""The template's networks and training step: the part a new method replaces.

vstk's training loop (:func:`vstk.translation.trainer.train`) drives a *trainable model*:
it calls ``setup(real_a, real_b, schedule)`` once with a first batch, then
``train_step(real_a, real_b)`` every step on unpaired batches ``[B, 1, N, N]`` in [-1, 1]
(``real_a`` ceT1 slices, ``real_b`` hrT2 slices of other cases). It checkpoints
``networks()``, ``optimizers()`` and ``extra_state()`` for exact resume, and writes
``generator_state()`` to the final ``translator.pt``. :class:`~vstk.translation.trainer.ModelBase`
provides all of those from ``self.nets`` and ``self._optimizers``; ``nets["G"]`` is the
network saved for inference.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from vstk.translation import GANLoss, NLayerDiscriminator, ResnetGenerator, init_weights
from vstk.translation.schedule import TrainSchedule
from vstk.translation.trainer import ModelBase

if TYPE_CHECKING:  # the package imports this module: only the annotations need its config
    from . import TemplateConfig


def build_generator(config: TemplateConfig) -> ResnetGenerator:
    """The ceT1 -> hrT2 network used at inference: ``[B, 1, N, N]`` in [-1, 1] to the same.

    REPLACE with your generator. Build it from the config alone: ``load()`` rebuilds it from
    the settings stored in the checkpoint, then loads the weights.
    """
    return ResnetGenerator(1, 1, config.ngf, config.n_blocks, config.norm)


def gradient_magnitude(images: Tensor) -> Tensor:
    """Per-pixel ``|grad|`` of ``[B, C, H, W]`` images by forward differences (units per pixel;
    the last row and column take a zero difference along their own axis)."""
    dy = F.pad(images[..., 1:, :] - images[..., :-1, :], (0, 0, 0, 1))
    dx = F.pad(images[..., :, 1:] - images[..., :, :-1], (0, 1, 0, 0))
    return torch.sqrt(dx * dx + dy * dy + 1e-8)  # the epsilon keeps sqrt differentiable at 0


class TemplateModel(ModelBase):
    """G translates ceT1 to hrT2 (saved for inference); D, a PatchGAN, judges hrT2 slices."""

    def __init__(self, config: TemplateConfig, device: str | torch.device) -> None:
        super().__init__()
        self.config = config
        self.device = torch.device(device)
        # REPLACE: your networks, under stable names (checkpoints store them by name; "G" is
        # the one saved for inference). init_weights draws from torch's global generator,
        # which the training loop seeds with config.seed before building the model.
        generator = init_weights(build_generator(config), config.init_type, config.init_gain)
        discriminator = init_weights(NLayerDiscriminator(1, config.ndf, config.n_layers_d, config.norm),
                                     config.init_type, config.init_gain)
        self.nets = {"G": generator.to(self.device), "D": discriminator.to(self.device)}
        self.gan_loss = GANLoss(config.gan_mode).to(self.device)

    def setup(self, real_a: Tensor, real_b: Tensor, schedule: TrainSchedule) -> None:
        """One Adam optimiser per network at the schedule's rate (the loop decays it linearly).

        REPLACE if your method needs layers sized from data (build them here, from the first
        batch, before the optimisers) or other optimisers.
        """
        betas = (schedule.beta1, schedule.beta2)
        self._optimizers = {name: torch.optim.Adam(net.parameters(), lr=schedule.lr, betas=betas)
                            for name, net in self.nets.items()}

    def train_step(self, real_a: Tensor, real_b: Tensor) -> dict[str, Tensor]:
        """One optimisation step on unpaired ``[B, 1, N, N]`` batches; returns the losses.

        REPLACE with your method's objective. Random numbers drawn here (patch positions,
        coin tosses) must come from torch's global generator, which the loop checkpoints, or
        from generators whose state ``extra_state()`` returns, so that a resumed run continues
        exactly and two runs with one seed agree.
        """
        c, generator, discriminator = self.config, self.nets["G"], self.nets["D"]
        fake_b = generator(real_a)

        # G: look like hrT2 to D, and keep the ceT1 edges where they are. D is frozen
        # meanwhile so that G's loss leaves no gradients in it.
        discriminator.requires_grad_(False)
        self._optimizers["G"].zero_grad(set_to_none=True)
        loss_gan = c.lambda_gan * self.gan_loss(discriminator(fake_b), True)
        loss_structure = c.lambda_structure * F.l1_loss(gradient_magnitude(fake_b), gradient_magnitude(real_a))
        (loss_gan + loss_structure).backward()
        self._optimizers["G"].step()

        # D: real hrT2 against the detached translation, halved as in CycleGAN, which slows
        # D down relative to G.
        discriminator.requires_grad_(True)
        self._optimizers["D"].zero_grad(set_to_none=True)
        loss_real = self.gan_loss(discriminator(real_b), True)
        loss_fake = self.gan_loss(discriminator(fake_b.detach()), False)
        loss_d = 0.5 * (loss_real + loss_fake)
        loss_d.backward()
        self._optimizers["D"].step()

        # Detached 0-dim tensors: the loop copies them to losses.csv in blocks, so the host
        # does not wait for the GPU every step. The keys become the columns of losses.csv.
        return {"G_GAN": loss_gan.detach(), "structure": loss_structure.detach(), "D": loss_d.detach()}
