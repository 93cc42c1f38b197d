"""Adversarial loss and the image history pool of CycleGAN / CUT."""

from __future__ import annotations

from typing import Any

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError

GANMode = Literal["lsgan", "vanilla", "nonsaturating"]
_GAN_MODES = ("lsgan", "vanilla", "nonsaturating")


class GANLoss(nn.Module):
    """Adversarial objective on raw discriminator outputs (no sigmoid in the discriminator).

    Modes, for a prediction ``p`` of any shape and a target label ``t`` (1 real, 0 fake):

    * ``lsgan``: mean of ``(p - t)**2`` (MSE against ``t`` broadcast to ``p``); CycleGAN and CUT.
    * ``vanilla``: binary cross-entropy with logits against ``t``.
    * ``nonsaturating``: ``softplus(-p)`` for real, ``softplus(p)`` for fake.

    Every mode returns the mean over all elements, a 0-dim tensor (the official
    ``nonsaturating`` returns per-sample means; their mean is the same number).
    """

    def __init__(self, mode: GANMode = "lsgan", real_label: float = 1.0, fake_label: float = 0.0) -> None:
        super().__init__()
        if mode not in _GAN_MODES:
            raise ConfigError(f"GAN mode {mode!r} is not supported", fix=f"use one of {', '.join(_GAN_MODES)}")
        self.mode = mode
        self.real_label = real_label
        self.fake_label = fake_label

    def forward(self, prediction: Tensor, target_is_real: bool) -> Tensor:
        """Loss of discriminator logits ``prediction`` (B, ...) against the real or fake label; 0-dim."""
        if self.mode == "nonsaturating":
            return F.softplus(-prediction if target_is_real else prediction).mean()
        label = self.real_label if target_is_real else self.fake_label
        target = torch.full_like(prediction, label)
        if self.mode == "lsgan":
            return F.mse_loss(prediction, target)
        return F.binary_cross_entropy_with_logits(prediction, target)


class ImagePool:
    """History of generated images that the discriminator sees (Shrivastava et al.; CycleGAN).

    For each image of a batch, :meth:`query` behaves as the official ``ImagePool``: while the
    pool holds fewer than ``size`` images it stores the new image and returns it; once full,
    with probability 0.5 it returns a random stored image and stores the new one in its place,
    otherwise it returns the new image. ``size`` 0 returns the batch unchanged. Stored and
    returned images are detached from the autograd graph.

    Args:
        size: pool capacity in images (CycleGAN uses 50).
        generator: random source for the coin flips and picks; an int seeds a new CPU
            ``torch.Generator``; None uses torch's global generator.
    """

    def __init__(self, size: int = 50, generator: torch.Generator | int | None = None) -> None:
        if size < 0:
            raise ConfigError(f"image pool size {size} is negative", fix="use 0 (no pool) or a positive size")
        self.size = size
        if isinstance(generator, int):
            seed = generator
            generator = torch.Generator()
            generator.manual_seed(seed)
        self.generator = generator
        self._images: list[Tensor] = []

    def __len__(self) -> int:
        """Number of images stored now."""
        return len(self._images)

    @property
    def images(self) -> tuple[Tensor, ...]:
        """The stored images, each (1, C, H, W), in slot order."""
        return tuple(self._images)

    def query(self, images: Tensor) -> Tensor:
        """Images (B, C, H, W) for the discriminator, each either the new one or a stored one.

        Returns:
            (B, C, H, W), detached.
        """
        if self.size == 0:
            return images
        out: list[Tensor] = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self._images) < self.size:
                self._images.append(image)
                out.append(image)
                continue
            if torch.rand((), generator=self.generator).item() > 0.5:
                index = int(torch.randint(0, self.size, (), generator=self.generator).item())
                out.append(self._images[index].clone())
                self._images[index] = image
            else:
                out.append(image)
        return torch.cat(out, dim=0)

    def state_dict(self) -> dict[str, Any]:
        """Stored images and the generator state: tensors only, safe to checkpoint."""
        state: dict[str, Any] = {"images": [image.detach().cpu() for image in self._images]}
        if self.generator is not None:
            state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (exact resume of the coin flips)."""
        device = self._images[0].device if self._images else None
        self._images = [image.to(device) if device is not None else image for image in state["images"]]
        if self.generator is not None and "generator" in state:
            self.generator.set_state(state["generator"])
