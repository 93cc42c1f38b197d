"""CUT / FastCUT networks and training step, on vstk's shared building blocks.

One pass of G over ``cat(real_A, real_B)`` (``real_A`` alone without identity NCE) gives the
translations and, when the batch was not flipped, the source features PatchNCE uses as keys;
the official code encodes the sources a second time for that, with the same result (keys
are detached and instance norm is per image). A flipped batch (FastCUT) needs the keys of
the unflipped sources, so those are encoded separately, without gradients.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from vstk.translation.losses import GANLoss
from vstk.translation.networks import NLayerDiscriminator, ResnetGenerator, init_weights
from vstk.translation.patchnce import PatchNCELoss, PatchSampleMLP
from vstk.translation.schedule import TrainSchedule
from vstk.translation.trainer import ModelBase

if TYPE_CHECKING:  # the package imports this module: only the annotations need its config
    from . import CUTConfig


def build_generator(config: CUTConfig) -> ResnetGenerator:
    """The ceT1 -> hrT2 ResNet generator (grayscale in and out)."""
    return ResnetGenerator(1, 1, config.ngf, config.n_blocks, config.norm, antialias=config.antialias)


def _flip(tensors: list[Tensor]) -> list[Tensor]:
    """Left-right flip of (B, C, H, W) tensors (the width axis)."""
    return [t.flip(3) for t in tensors]


class CUTModel(ModelBase):
    """G: ceT1 -> hrT2, D judges hrT2, F projects sampled patches for PatchNCE."""

    def __init__(self, config: CUTConfig, device: str | torch.device) -> None:
        super().__init__()
        self.config = config
        self.device = torch.device(device)
        generator = init_weights(build_generator(config), config.init_type, config.init_gain)
        discriminator = init_weights(
            NLayerDiscriminator(1, config.ndf, config.n_layers_d, config.norm, antialias=config.antialias),
            config.init_type, config.init_gain)
        sampler = PatchSampleMLP(True, config.netf_nc, config.init_type, config.init_gain)
        self.nets = {"G": generator.to(self.device), "D": discriminator.to(self.device), "F": sampler.to(self.device)}
        self.gan_loss = GANLoss(config.gan_mode).to(self.device)
        self.nce_loss = PatchNCELoss(config.nce_t)
        self.layers = list(config.nce_layers)

    def setup(self, real_a: Tensor, real_b: Tensor, schedule: TrainSchedule) -> None:
        # F's heads take the encoder's channel counts: build them before the optimiser exists.
        with torch.no_grad():
            self.nets["F"].build(self.nets["G"].encode(real_a, self.layers))
        betas = (schedule.beta1, schedule.beta2)
        self._optimizers = {name: torch.optim.Adam(self.nets[name].parameters(), lr=schedule.lr, betas=betas)
                            for name in ("G", "D", "F")}

    def patch_nce(self, source_feats: list[Tensor], fake_feats: list[Tensor]) -> Tensor:
        """lambda_NCE-weighted PatchNCE, mean over layers: the translation's patches (queries)
        must pick the source patch at the same position among the source's other patches."""
        c, sampler = self.config, self.nets["F"]
        batch = source_feats[0].shape[0]
        total = torch.zeros((), device=source_feats[0].device)
        for layer, (feat_k, feat_q) in enumerate(zip(source_feats, fake_feats)):
            keys, ids = sampler.sample(feat_k, layer, c.num_patches)
            queries, _ = sampler.sample(feat_q, layer, c.num_patches, ids)
            total = total + self.nce_loss(queries, keys, batch).mean() * c.lambda_nce
        return total / len(source_feats)

    def train_step(self, real_a: Tensor, real_b: Tensor) -> dict[str, float]:
        c, n = self.config, self.nets
        batch = real_a.shape[0]
        real = torch.cat([real_a, real_b]) if c.nce_idt else real_a
        # FastCUT's coin comes from torch's global generator, which the training loop checkpoints.
        flipped = c.flip_equivariance and bool(torch.rand(()) < 0.5)
        fake, feats = n["G"].forward_with_features(real.flip(3) if flipped else real, self.layers)
        fake_b = fake[:batch]
        if flipped:
            with torch.no_grad():
                feats = n["G"].encode(real, self.layers)

        # Discriminator: real hrT2 against the detached translation, halved.
        for p in n["D"].parameters():
            p.requires_grad_(True)
        self._optimizers["D"].zero_grad(set_to_none=True)
        loss_d_fake = self.gan_loss(n["D"](fake_b.detach()), False)
        loss_d_real = self.gan_loss(n["D"](real_b), True)
        loss_d = 0.5 * (loss_d_fake + loss_d_real)
        loss_d.backward()
        self._optimizers["D"].step()

        # Generator and projection head, with D frozen.
        for p in n["D"].parameters():
            p.requires_grad_(False)
        self._optimizers["G"].zero_grad(set_to_none=True)
        self._optimizers["F"].zero_grad(set_to_none=True)
        loss_gan = self.gan_loss(n["D"](fake_b), True) * c.lambda_gan
        fake_feats = n["G"].encode(fake, self.layers)  # queries of fake_B (and idt_B) in one pass
        if flipped:
            fake_feats = _flip(fake_feats)
        loss_nce = self.patch_nce([f[:batch] for f in feats], [f[:batch] for f in fake_feats])
        if c.nce_idt:
            loss_nce_y = self.patch_nce([f[batch:] for f in feats], [f[batch:] for f in fake_feats])
            loss_nce_total = 0.5 * (loss_nce + loss_nce_y)
        else:
            loss_nce_y = torch.zeros((), device=real_a.device)
            loss_nce_total = loss_nce
        (loss_gan + loss_nce_total).backward()
        self._optimizers["G"].step()
        self._optimizers["F"].step()
        return {"D_real": loss_d_real.detach(), "D_fake": loss_d_fake.detach(), "G_GAN": loss_gan.detach(),
                "NCE": loss_nce.detach(), "NCE_Y": loss_nce_y.detach(), "flipped": float(flipped)}
