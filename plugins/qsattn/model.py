"""QS-Attn networks and training step (CUT with query-selected attention).

Unlike the official code, the source features for PatchNCE come from the same forward pass
that translates ``cat(real_A, real_B)`` (the official code encodes real_A and real_B again,
and once more without using the result); instance norm is per image, so the values and
gradients are the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from vstk.translation.losses import GANLoss
from vstk.translation.networks import NLayerDiscriminator, ResnetGenerator, init_weights
from vstk.translation.patchnce import PatchNCELoss, PatchSampleMLP
from vstk.translation.qs_attention import query_selected_attention
from vstk.translation.schedule import TrainSchedule
from vstk.translation.trainer import ModelBase

if TYPE_CHECKING:  # the package imports this module: only the annotations need its config
    from . import QSAttnConfig


def build_generator(config: QSAttnConfig) -> ResnetGenerator:
    return ResnetGenerator(1, 1, config.ngf, config.n_blocks, config.norm, antialias=config.antialias)


class QSAttnModel(ModelBase):
    """G: ceT1 -> hrT2, D judges hrT2, F projects patches for PatchNCE."""

    def __init__(self, config: QSAttnConfig, device: str | torch.device) -> None:
        super().__init__()
        self.config = config
        self.device = torch.device(device)
        generator = init_weights(build_generator(config), config.init_type, config.init_gain)
        discriminator = NLayerDiscriminator(1, config.ndf, config.n_layers_d, config.norm,
                                            antialias=config.antialias)
        discriminator = init_weights(discriminator, config.init_type, config.init_gain)
        sampler = PatchSampleMLP(True, config.netf_nc, config.init_type, config.init_gain)
        self.nets: dict[str, nn.Module] = {"G": generator.to(self.device), "D": discriminator.to(self.device),
                                           "F": sampler.to(self.device)}
        self.gan_loss = GANLoss(config.gan_mode).to(self.device)
        self.nce_loss = PatchNCELoss(config.nce_t)
        self.layers = list(config.nce_layers)
        self.first_qs = len(self.layers) - config.qs_layers

    def setup(self, real_a: Tensor, real_b: Tensor, schedule: TrainSchedule) -> None:
        # F's heads depend on the encoder's channel counts: build them from a first batch.
        with torch.no_grad():
            self.nets["F"].build(self.nets["G"].encode(real_a, self.layers))
        betas = (schedule.beta1, schedule.beta2)
        self._optimizers = {name: torch.optim.Adam(self.nets[name].parameters(), lr=schedule.lr, betas=betas)
                            for name in ("G", "D", "F")}

    def nce(self, source_feats: list[Tensor], fake_feats: list[Tensor]) -> Tensor:
        """PatchNCE between source features (keys) and features of its translation (queries),
        averaged over layers; the deepest ``qs_layers`` use query-selected attention."""
        c, sampler = self.config, self.nets["F"]
        batch = source_feats[0].shape[0]
        total = torch.zeros((), device=source_feats[0].device)
        for i, (feat_k, feat_q) in enumerate(zip(source_feats, fake_feats)):
            if i >= self.first_qs:
                values_k, values_q, _ = query_selected_attention(
                    feat_k, feat_q, c.qs_mode, c.num_patches, detach_attention=c.detach_attention)
                keys, queries = sampler.project(values_k, i), sampler.project(values_q, i)
            else:
                keys, ids = sampler.sample(feat_k, i, c.num_patches)
                queries, _ = sampler.sample(feat_q, i, c.num_patches, ids)
            total = total + self.nce_loss(queries, keys, batch).mean() * c.lambda_nce
        return total / len(source_feats)

    def train_step(self, real_a: Tensor, real_b: Tensor) -> dict[str, float]:
        c, n = self.config, self.nets
        batch = real_a.shape[0]
        real = torch.cat([real_a, real_b]) if c.nce_idt else real_a
        fake, real_feats = n["G"].forward_with_features(real, self.layers)
        fake_b = fake[:batch]

        # Discriminator.
        for p in n["D"].parameters():
            p.requires_grad_(True)
        self._optimizers["D"].zero_grad(set_to_none=True)
        loss_d_fake = self.gan_loss(n["D"](fake_b.detach()), False).mean()
        loss_d_real = self.gan_loss(n["D"](real_b), True).mean()
        loss_d = 0.5 * (loss_d_fake + loss_d_real)
        loss_d.backward()
        self._optimizers["D"].step()

        # Generator and projection head.
        for p in n["D"].parameters():
            p.requires_grad_(False)
        self._optimizers["G"].zero_grad(set_to_none=True)
        self._optimizers["F"].zero_grad(set_to_none=True)
        loss_gan = self.gan_loss(n["D"](fake_b), True).mean() * c.lambda_gan
        fake_feats = n["G"].encode(fake, self.layers)  # queries of fake_B (and idt_B) in one pass
        loss_nce = self.nce([f[:batch] for f in real_feats], [f[:batch] for f in fake_feats])
        if c.nce_idt:
            loss_nce_y = self.nce([f[batch:] for f in real_feats], [f[batch:] for f in fake_feats])
            loss_nce_both = 0.5 * (loss_nce + loss_nce_y)
        else:
            loss_nce_y = torch.zeros(())
            loss_nce_both = loss_nce
        loss_g = loss_gan + loss_nce_both
        loss_g.backward()
        self._optimizers["G"].step()
        self._optimizers["F"].step()
        return {"D_real": loss_d_real.detach(), "D_fake": loss_d_fake.detach(), "G_GAN": loss_gan.detach(),
                "NCE": loss_nce.detach(), "NCE_Y": loss_nce_y.detach()}
