"""The training schedule of a translator (steps, optimiser settings, bookkeeping)."""

from __future__ import annotations

import dataclasses

from ..errors import ConfigError


@dataclasses.dataclass(frozen=True)
class TrainSchedule:
    """Steps, optimiser and bookkeeping of translator training.

    Attributes:
        steps: steps at the initial learning rate (CycleGAN's n_epochs, in steps).
        decay_steps: further steps with the rate decaying linearly to 0 (n_epochs_decay).
        batch_size: slices per step and domain.
        lr: Adam learning rate; beta1, beta2: Adam betas.
        checkpoint_every: steps between resumable checkpoints (and one at the end).
        sample_every: steps between sample PNGs (0: only at the end).
        seed: seeds torch and the slice sampler.
        flip: random left-right flips of training slices.
        crop: train on random ``crop`` x ``crop`` windows of the slices (None: whole slices),
            as the official CycleGAN trains on 256-pixel crops of 286-pixel images; the
            networks are fully convolutional and translate whole slices. Checked where it is
            set, :class:`vstk.translation.base.TranslatorConfig` (which knows the slice size).
        bf16: run each training step (forward and backward) under CPU bfloat16 autocast,
            as on a CPU with AMX; the weights and the optimiser stay float32.
    """

    steps: int = 1000
    decay_steps: int = 1000
    batch_size: int = 1
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    checkpoint_every: int = 250
    sample_every: int = 500
    seed: int = 0
    flip: bool = True
    crop: int | None = None
    bf16: bool = False

    def __post_init__(self) -> None:
        if self.steps < 0 or self.decay_steps < 0 or self.steps + self.decay_steps < 1:
            raise ConfigError(f"steps={self.steps}, decay_steps={self.decay_steps}: need at least one step")
        if self.batch_size < 1 or self.checkpoint_every < 1:
            raise ConfigError("batch_size and checkpoint_every must be at least 1")

    @property
    def total_steps(self) -> int:
        return self.steps + self.decay_steps

    def lr_factor(self, step: int) -> float:
        """Multiplier of ``lr`` after ``step`` completed steps: 1, then linearly to 0."""
        if step < self.steps or self.decay_steps == 0:
            return 1.0
        return max(0.0, 1.0 - (step - self.steps) / float(self.decay_steps + 1))
