"""CycleGAN networks and training step."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from vstk.translation.losses import GANLoss, ImagePool
from vstk.translation.networks import NLayerDiscriminator, ResnetGenerator, init_weights
from vstk.translation.schedule import TrainSchedule
from vstk.translation.trainer import ModelBase

if TYPE_CHECKING:  # the package imports this module: only the annotations need its config
    from . import CycleGANConfig


def build_generator(config: CycleGANConfig) -> ResnetGenerator:
    return ResnetGenerator(1, 1, config.ngf, config.n_blocks, config.norm, antialias=False)


class CycleGANModel(ModelBase):
    """G_A: ceT1 -> hrT2, G_B: hrT2 -> ceT1, D_A judges hrT2, D_B judges ceT1 (official naming)."""

    generator_key = "G_A"

    def __init__(self, config: CycleGANConfig, device: str | torch.device) -> None:
        super().__init__()
        self.config = config
        self.device = torch.device(device)
        nets = {
            "G_A": build_generator(config),
            "G_B": build_generator(config),
            "D_A": NLayerDiscriminator(1, config.ndf, config.n_layers_d, config.norm),
            "D_B": NLayerDiscriminator(1, config.ndf, config.n_layers_d, config.norm),
        }
        self.nets = {name: init_weights(net, config.init_type, config.init_gain).to(self.device)
                     for name, net in nets.items()}
        self.gan_loss = GANLoss(config.gan_mode).to(self.device)
        self.l1 = nn.L1Loss()
        self.pool_fake_b = ImagePool(config.pool_size, generator=config.seed + 1)
        self.pool_fake_a = ImagePool(config.pool_size, generator=config.seed + 2)

    def setup(self, real_a: Tensor, real_b: Tensor, schedule: TrainSchedule) -> None:
        betas = (schedule.beta1, schedule.beta2)
        g = itertools.chain(self.nets["G_A"].parameters(), self.nets["G_B"].parameters())
        d = itertools.chain(self.nets["D_A"].parameters(), self.nets["D_B"].parameters())
        self._optimizers = {"G": torch.optim.Adam(g, lr=schedule.lr, betas=betas),
                            "D": torch.optim.Adam(d, lr=schedule.lr, betas=betas)}

    @staticmethod
    def _requires_grad(nets: list[nn.Module], flag: bool) -> None:
        for net in nets:
            for p in net.parameters():
                p.requires_grad_(flag)

    def train_step(self, real_a: Tensor, real_b: Tensor) -> dict[str, float]:
        c, n = self.config, self.nets
        fake_b = n["G_A"](real_a)
        rec_a = n["G_B"](fake_b)
        fake_a = n["G_B"](real_b)
        rec_b = n["G_A"](fake_a)

        # Generators, with the discriminators frozen.
        self._requires_grad([n["D_A"], n["D_B"]], False)
        self._optimizers["G"].zero_grad(set_to_none=True)
        if c.lambda_identity > 0:
            loss_idt_a = self.l1(n["G_A"](real_b), real_b) * c.lambda_b * c.lambda_identity
            loss_idt_b = self.l1(n["G_B"](real_a), real_a) * c.lambda_a * c.lambda_identity
        else:
            loss_idt_a = loss_idt_b = torch.zeros((), device=real_a.device)
        loss_g_a = self.gan_loss(n["D_A"](fake_b), True)
        loss_g_b = self.gan_loss(n["D_B"](fake_a), True)
        loss_cycle_a = self.l1(rec_a, real_a) * c.lambda_a
        loss_cycle_b = self.l1(rec_b, real_b) * c.lambda_b
        loss_g = loss_g_a + loss_g_b + loss_cycle_a + loss_cycle_b + loss_idt_a + loss_idt_b
        loss_g.backward()
        self._optimizers["G"].step()

        # Discriminators, on pooled fakes; each loss halved.
        self._requires_grad([n["D_A"], n["D_B"]], True)
        self._optimizers["D"].zero_grad(set_to_none=True)
        pooled_b = self.pool_fake_b.query(fake_b.detach())
        loss_d_a = 0.5 * (self.gan_loss(n["D_A"](real_b), True) + self.gan_loss(n["D_A"](pooled_b), False))
        loss_d_a.backward()
        pooled_a = self.pool_fake_a.query(fake_a.detach())
        loss_d_b = 0.5 * (self.gan_loss(n["D_B"](real_a), True) + self.gan_loss(n["D_B"](pooled_a), False))
        loss_d_b.backward()
        self._optimizers["D"].step()
        return {"D_A": loss_d_a.detach(), "G_A": loss_g_a.detach(), "cycle_A": loss_cycle_a.detach(),
                "idt_A": loss_idt_a.detach(), "D_B": loss_d_b.detach(), "G_B": loss_g_b.detach(),
                "cycle_B": loss_cycle_b.detach(), "idt_B": loss_idt_b.detach()}

    def extra_state(self) -> dict[str, Any]:
        return {"pool_fake_b": self.pool_fake_b.state_dict(), "pool_fake_a": self.pool_fake_a.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.pool_fake_b.load_state_dict(state["pool_fake_b"])
        self.pool_fake_a.load_state_dict(state["pool_fake_a"])
