"""NICE-GAN training step on vstk's training loop.

Domain A is ceT1, B is hrT2. ``dis_A`` / ``dis_B`` judge A / B and encode A / B;
``dec_B`` decodes A's code into B (the ceT1 -> hrT2 generator), ``dec_A`` the reverse.
Each step updates the discriminators (encoders included) on real images and on
translations, then the decoders on adversarial, cycle and reconstruction losses, with
the discriminators frozen: their gradients from the generator loss are discarded by the
official code too (its generator optimiser holds the decoders alone, and the
discriminator's gradients are zeroed before its next update). The translations for the
discriminator update are made without gradients (the official code detaches them), and
the discriminator heads do not run on real images in the generator update (their output
is unused there).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vstk.translation.schedule import TrainSchedule
from vstk.translation.trainer import ModelBase

from .networks import NiceDecoder, NiceDiscriminator, NiceEncoder, NiceTranslator

if TYPE_CHECKING:  # the package imports this module: only the annotations need its config
    from . import NiceGANConfig


def build_translator(config: NiceGANConfig) -> NiceTranslator:
    """The inference network (encoder + hrT2 decoder), for loading a final checkpoint."""
    return NiceTranslator(NiceEncoder(1, config.ndf), _decoder(config))


def _decoder(config: NiceGANConfig) -> NiceDecoder:
    return NiceDecoder(2 * config.ndf, config.ngf, config.n_blocks, config.size, config.light)


def _lsgan(prediction: Tensor, real: bool) -> Tensor:
    """Mean squared distance of logits to 1 (real) or 0 (fake)."""
    return F.mse_loss(prediction, torch.full_like(prediction, 1.0 if real else 0.0))


def _set_requires_grad(nets: list[nn.Module], flag: bool) -> None:
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(flag)


class NiceGANModel(ModelBase):
    """Two discriminators with built-in encoders and two decoders; translate with dis_A's encoder + dec_B."""

    def __init__(self, config: NiceGANConfig, device: str | torch.device) -> None:
        super().__init__()
        self.config = config
        self.device = torch.device(device)
        nets = {"dis_A": NiceDiscriminator(1, config.ndf, config.n_layers_d),
                "dis_B": NiceDiscriminator(1, config.ndf, config.n_layers_d),
                "dec_A": _decoder(config), "dec_B": _decoder(config)}
        self.nets = {name: net.to(self.device) for name, net in nets.items()}
        # Shares its modules with dis_A and dec_B: the final checkpoint is its state dict.
        self.translator = NiceTranslator(self.nets["dis_A"].encoder, self.nets["dec_B"])

    def setup(self, real_a: Tensor, real_b: Tensor, schedule: TrainSchedule) -> None:
        c, n = self.config, self.nets
        options = dict(lr=schedule.lr, betas=(schedule.beta1, schedule.beta2), weight_decay=c.weight_decay)
        self._optimizers = {
            "G": torch.optim.Adam(itertools.chain(n["dec_A"].parameters(), n["dec_B"].parameters()), **options),
            "D": torch.optim.Adam(itertools.chain(n["dis_A"].parameters(), n["dis_B"].parameters()), **options),
        }

    def generator_state(self) -> dict[str, Tensor]:
        return self.translator.state_dict()

    @torch.no_grad()
    def translate(self, real_a: Tensor) -> Tensor:
        # Eval mode: no spectral-norm power iteration, so samples do not change the training state.
        self.translator.eval()
        try:
            return self.translator(real_a)
        finally:
            self.translator.train()

    def train_step(self, real_a: Tensor, real_b: Tensor) -> dict[str, float]:
        c, n = self.config, self.nets

        # Discriminators (and their encoders).
        _set_requires_grad([n["dis_A"], n["dis_B"]], True)
        self._optimizers["D"].zero_grad(set_to_none=True)
        real_local_a, real_global_a, real_cam_a, z_a = n["dis_A"](real_a)
        real_local_b, real_global_b, real_cam_b, z_b = n["dis_B"](real_b)
        with torch.no_grad():
            fake_ab = n["dec_B"](z_a)
            fake_ba = n["dec_A"](z_b)
        fake_local_a, fake_global_a, fake_cam_a, _ = n["dis_A"](fake_ba)
        fake_local_b, fake_global_b, fake_cam_b, _ = n["dis_B"](fake_ab)
        loss_d_a = c.adv_weight * sum(_lsgan(r, True) + _lsgan(f, False) for r, f in (
            (real_global_a, fake_global_a), (real_cam_a, fake_cam_a), (real_local_a, fake_local_a)))
        loss_d_b = c.adv_weight * sum(_lsgan(r, True) + _lsgan(f, False) for r, f in (
            (real_global_b, fake_global_b), (real_cam_b, fake_cam_b), (real_local_b, fake_local_b)))
        (loss_d_a + loss_d_b).backward()
        self._optimizers["D"].step()

        # Decoders, with the discriminators (encoders included) frozen.
        _set_requires_grad([n["dis_A"], n["dis_B"]], False)
        self._optimizers["G"].zero_grad(set_to_none=True)
        z_a, _ = n["dis_A"].encoder(real_a)
        z_b, _ = n["dis_B"].encoder(real_b)
        fake_ab = n["dec_B"](z_a)
        fake_ba = n["dec_A"](z_b)
        fake_local_a, fake_global_a, fake_cam_a, fake_z_a = n["dis_A"](fake_ba)
        fake_local_b, fake_global_b, fake_cam_b, fake_z_b = n["dis_B"](fake_ab)
        cycle_a = n["dec_A"](fake_z_b)  # A -> B -> A
        cycle_b = n["dec_B"](fake_z_a)  # B -> A -> B
        recon_a = n["dec_A"](z_a)  # A -> code -> A
        recon_b = n["dec_B"](z_b)
        adv_a = _lsgan(fake_global_a, True) + _lsgan(fake_cam_a, True) + _lsgan(fake_local_a, True)
        adv_b = _lsgan(fake_global_b, True) + _lsgan(fake_cam_b, True) + _lsgan(fake_local_b, True)
        cyc_a, cyc_b = F.l1_loss(cycle_a, real_a), F.l1_loss(cycle_b, real_b)
        rec_a, rec_b = F.l1_loss(recon_a, real_a), F.l1_loss(recon_b, real_b)
        loss_g_a = c.adv_weight * adv_a + c.cycle_weight * cyc_a + c.recon_weight * rec_a
        loss_g_b = c.adv_weight * adv_b + c.cycle_weight * cyc_b + c.recon_weight * rec_b
        (loss_g_a + loss_g_b).backward()
        self._optimizers["G"].step()
        _set_requires_grad([n["dis_A"], n["dis_B"]], True)
        return {"D_A": loss_d_a.detach(), "D_B": loss_d_b.detach(), "G_adv_A": adv_a.detach(), "G_adv_B": adv_b.detach(),
                "cycle_A": cyc_a.detach(), "cycle_B": cyc_b.detach(), "recon_A": rec_a.detach(), "recon_B": rec_b.detach()}
