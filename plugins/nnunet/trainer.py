"""vstk's nnU-Net trainer and weights-only checkpoint loading.

Imports torch and nnunetv2 at module level: import this module only inside
:func:`vstk_nnunet.environment.nnunet_environment`.

nnU-Net 2.8 loads checkpoints with ``torch.load(weights_only=False)``, which can run arbitrary
code from a crafted file. Its checkpoints hold tensors, plain containers, numbers, strings,
a ``torch.device`` and numpy float scalars (losses and Dice values in the training log), so
they load with ``weights_only=True`` once numpy's scalar reconstructor and its numeric dtype
classes are allow-listed. Everything here loads that way.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from vstk.errors import CheckpointError
from vstk.labels import COCHLEA as COCHLEA_LABEL
from vstk.labels import VS as VS_LABEL
from vstk.protocols import ProgressFn

log = logging.getLogger(__name__)


def _safe_globals() -> list[Any]:
    """numpy scalar types that nnU-Net's checkpoints contain (numbers only, no objects)."""
    core = getattr(np, "_core", None) or np.core
    allowed: list[Any] = [core.multiarray.scalar, np.dtype]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25
    if dtypes is not None:
        for name in ("Float16DType", "Float32DType", "Float64DType", "Int32DType", "Int64DType", "BoolDType"):
            if hasattr(dtypes, name):
                allowed.append(getattr(dtypes, name))
    return allowed


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load an nnU-Net checkpoint with ``torch.load(weights_only=True)``.

    Raises :class:`CheckpointError` naming the file when it is truncated, corrupt or holds
    anything beyond tensors, containers and numeric scalars.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot load this nnU-Net checkpoint safely ({reason})", path=path,
                              fix="delete it (training restarts from an earlier checkpoint or from scratch)") from None
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise CheckpointError("not an nnU-Net checkpoint (no network_weights)", path=path,
                              fix="point vstk at a checkpoint written by nnU-Net")
    return checkpoint


def unwrap(network: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel and torch.compile wrappers."""
    if isinstance(network, nn.parallel.DistributedDataParallel):
        network = network.module
    return getattr(network, "_orig_mod", network)


def load_network_weights(network: nn.Module, checkpoint: dict[str, Any], source: str | Path) -> None:
    """Copy a checkpoint's network weights into ``network`` (all of them; shapes must match)."""
    target = unwrap(network)
    own = target.state_dict().keys()
    weights = {(k[len("module."):] if k not in own and k.startswith("module.") else k): v
               for k, v in checkpoint["network_weights"].items()}
    try:
        target.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"its weights do not fit this network ({first[1].strip() if len(first) > 1 else exc})",
                              path=source,
                              fix="use the same network settings (configuration, features, patch size) as when it "
                                  "was trained, or warm_start=false") from None


@dataclasses.dataclass(frozen=True)
class TrainerSettings:
    """The loop settings vstk gives nnU-Net's trainer (see :class:`vstk_nnunet.NnUNetConfig`)."""

    num_epochs: int
    iterations_per_epoch: int
    val_iterations_per_epoch: int
    save_every: int
    initial_lr: float
    oversample_foreground: float
    structure_intensity: float = 0.0
    cpu_bf16: bool = False
    structure_intensity_vs_max: float = 0.99
    structure_intensity_cochlea_min: float = 0.01
    structure_intensity_pseudo: float | None = None
    pseudo_cases: tuple[str, ...] = ()  # identifiers of the real target (pseudo- or truth-labelled) cases
    structure_intensity_invert: float = 0.0
    structure_intensity_texture: float = 0.0
    intensity_remap: float = 0.0
    intensity_remap_points: int = 4
    fluid_rim: float = 0.0
    fluid_rim_erase: float = 0.0
    validation_mirroring: bool = True  # test-time mirroring in nnU-Net's final validation

    def remap_case_probability(self) -> dict[str, float]:
        """The intensity remap probability per case where it is not ``intensity_remap``: 0 on
        the pseudo-labelled real target images, which already have the test images' contrast."""
        return self._none_on_real_targets(self.intensity_remap)

    def rim_case_probability(self) -> dict[str, float]:
        """The fluid rim probability per case where it is not ``fluid_rim``: 0 on the real
        target images, whose fluid is real."""
        return self._none_on_real_targets(self.fluid_rim)

    def _none_on_real_targets(self, probability: float) -> dict[str, float]:
        """Probability 0 for every real target case when a views-only augmentation is on."""
        return dict.fromkeys(self.pseudo_cases, 0.0) if probability > 0 else {}

    def case_probability(self) -> dict[str, float]:
        """The structure intensity probability of the cases that do not use ``structure_intensity``."""
        if self.structure_intensity_pseudo is None or self.structure_intensity_pseudo == self.structure_intensity:
            return {}
        return dict.fromkeys(self.pseudo_cases, self.structure_intensity_pseudo)


class _Float32Outputs(nn.Module):
    """Runs a loss on float32 copies of the network's outputs (one tensor or a list)."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, output, target):
        if isinstance(output, (list, tuple)):
            output = [o.float() for o in output]
        else:
            output = output.float()
        return self.loss(output, target)


class nnUNetTrainerVstk(nnUNetTrainer):
    """nnU-Net's trainer with vstk's loop lengths, safe and atomic checkpoints, and progress.

    Differences from ``nnUNetTrainer``: epochs, iterations, learning rate, foreground
    oversampling, the checkpoint interval, the optional structure intensity augmentation and
    bfloat16 training on a CPU come from :meth:`apply_settings`; checkpoints are written to a
    temporary file and renamed (a kill never leaves a truncated one) and loaded with
    ``weights_only=True``; ``progress.png`` is drawn only when a checkpoint is written; each
    finished epoch is logged and reported to ``self.progress``.
    """

    def __init__(self, plans: dict, configuration: str, fold: int | str, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
        # same parameters as nnUNetTrainer: it records them by name for its checkpoints
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.progress: ProgressFn | None = None
        self.structure_intensity = 0.0
        self.structure_intensity_vs_max = 0.99
        self.structure_intensity_cochlea_min = 0.01
        self.structure_intensity_by_case: dict[str, float] = {}
        self.structure_intensity_options: dict[str, float] = {}
        self.intensity_remap = 0.0
        self.intensity_remap_points = 4
        self.intensity_remap_by_case: dict[str, float] = {}
        self.fluid_rim = 0.0
        self.fluid_rim_by_case: dict[str, float] = {}
        self.fluid_rim_options: dict[str, float] = {}
        # vstk_nnunet.augmentation.LoadedCase, shared by the training dataset and the transform,
        # while the probability differs per case (set by apply_settings)
        self._loaded_case = None
        self.cpu_bf16 = False
        self.validation_mirroring = True
        draw = self.logger.plot_progress_png

        def draw_at_checkpoints(output_folder: str) -> None:  # plotting costs ~1 s per epoch on a CPU
            finished = self.current_epoch + 1
            if finished % self.save_every == 0 or finished >= self.num_epochs:
                draw(output_folder)

        self.logger.plot_progress_png = draw_at_checkpoints

    def apply_settings(self, settings: TrainerSettings) -> None:
        """Set the loop lengths (before :meth:`initialize`, which builds the LR schedule)."""
        if self.was_initialized:
            raise RuntimeError("apply_settings must be called before the trainer is initialised")
        self.num_epochs = settings.num_epochs
        self.num_iterations_per_epoch = settings.iterations_per_epoch
        self.num_val_iterations_per_epoch = settings.val_iterations_per_epoch
        self.save_every = settings.save_every
        self.initial_lr = settings.initial_lr
        self.oversample_foreground_percent = settings.oversample_foreground
        self.structure_intensity = settings.structure_intensity
        self.structure_intensity_vs_max = settings.structure_intensity_vs_max
        self.structure_intensity_cochlea_min = settings.structure_intensity_cochlea_min
        self.structure_intensity_by_case = settings.case_probability()
        self.intensity_remap, self.intensity_remap_points = settings.intensity_remap, settings.intensity_remap_points
        self.intensity_remap_by_case = settings.remap_case_probability()
        self.fluid_rim, self.fluid_rim_by_case = settings.fluid_rim, settings.rim_case_probability()
        self.fluid_rim_options = {"erase": settings.fluid_rim_erase}
        if self.structure_intensity_by_case or self.intensity_remap_by_case or self.fluid_rim_by_case:
            from .augmentation import LoadedCase

            self._loaded_case = LoadedCase()
        self.structure_intensity_options = {"invert": settings.structure_intensity_invert,
                                            "texture": settings.structure_intensity_texture}
        self.cpu_bf16 = settings.cpu_bf16 and self.device.type == "cpu"
        self.validation_mirroring = settings.validation_mirroring

    def initialize(self) -> None:
        """nnU-Net's initialisation; with ``cpu_bf16`` the network moves to channels-last
        layout (oneDNN's fast path for bfloat16 convolutions) and the loss to float32 inputs."""
        super().initialize()  # raises when called twice
        if not self.cpu_bf16:
            return
        self.network.to(memory_format=self._memory_format())
        self.loss = _Float32Outputs(self.loss)
        log.info("training in bfloat16 on the CPU (autocast, channels-last; weights and losses float32)")

    def _memory_format(self) -> torch.memory_format:
        return torch.channels_last_3d if len(self.configuration_manager.patch_size) == 3 else torch.channels_last

    def _in_precision(self, step, batch: dict) -> dict:
        """Run nnU-Net's ``step`` on ``batch``; with ``cpu_bf16`` under bfloat16 autocast on a
        channels-last copy of the batch."""
        if not self.cpu_bf16:
            return step(batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return step(dict(batch, data=batch["data"].contiguous(memory_format=self._memory_format())))

    def train_step(self, batch: dict) -> dict:
        return self._in_precision(super().train_step, batch)

    def validation_step(self, batch: dict) -> dict:
        return self._in_precision(super().validation_step, batch)

    def get_training_transforms(self, patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes,
                                do_dummy_2d_data_aug, **kwargs):
        """nnU-Net's training transforms, plus the label-guided structure intensity
        augmentation when ``structure_intensity`` > 0, the fluid rim around the VS when
        ``fluid_rim`` > 0 and the intensity remap when ``intensity_remap`` > 0 (see
        :mod:`vstk_nnunet.augmentation`)."""
        from .augmentation import with_fluid_rim, with_intensity_remap, with_structure_intensity

        transforms = super().get_training_transforms(patch_size, rotation_for_DA, deep_supervision_scales,
                                                     mirror_axes, do_dummy_2d_data_aug, **kwargs)
        vs_max, cochlea_min = self.structure_intensity_vs_max, self.structure_intensity_cochlea_min
        upper = {VS_LABEL: vs_max} if vs_max < 0.99 else None
        lower = {COCHLEA_LABEL: cochlea_min} if cochlea_min > 0.01 else None
        by_case = self.structure_intensity_by_case
        if self.structure_intensity > 0 or by_case:
            log.info("structure intensity augmentation on: labels %s, probability %g%s%s%s%s",
                     [int(v) for v in self.label_manager.foreground_labels], self.structure_intensity,
                     "" if upper is None else f", VS mean below the patch's {vs_max:g} quantile",
                     "" if lower is None else f", cochlea mean above the patch's {cochlea_min:g} quantile",
                     "".join(f", {k} {v:g}" for k, v in self.structure_intensity_options.items() if v),
                     "" if not by_case else f"; probability {next(iter(by_case.values())):g} on "
                                            f"{len(by_case)} real hrT2 case(s) (pseudo- or truth-labelled)")
        transforms = with_structure_intensity(transforms, self.label_manager.foreground_labels,
                                              self.structure_intensity, upper_quantiles=upper,
                                              lower_quantiles=lower, case_probability=by_case,
                                              loaded=self._loaded_case, **self.structure_intensity_options)
        if self.fluid_rim > 0:
            log.info("fluid rim augmentation on: probability %g per VS patch of the translated views%s%s",
                     self.fluid_rim, "".join(f", {k} {v:g}" for k, v in self.fluid_rim_options.items() if v),
                     "" if not self.fluid_rim_by_case else
                     f"; none on {len(self.fluid_rim_by_case)} real hrT2 case(s) (pseudo- or truth-labelled)")
        transforms = with_fluid_rim(transforms, VS_LABEL, self.fluid_rim, self.fluid_rim_by_case, self._loaded_case,
                                    **self.fluid_rim_options)
        if self.intensity_remap > 0:
            log.info("intensity remap augmentation on: probability %g, %d control points%s", self.intensity_remap,
                     self.intensity_remap_points, "" if not self.intensity_remap_by_case else
                     f"; none on {len(self.intensity_remap_by_case)} real hrT2 case(s) (pseudo- or truth-labelled)")
        return with_intensity_remap(transforms, self.intensity_remap, self.intensity_remap_points,
                                    self.intensity_remap_by_case, self._loaded_case)

    def get_tr_and_val_datasets(self):
        """nnU-Net's datasets; the training one notes each case it loads when an augmentation's
        probability differs per case (the transforms read the note)."""
        from .augmentation import NotingDataset

        train, validation = super().get_tr_and_val_datasets()
        if self._loaded_case is not None:
            train = NotingDataset(train, self._loaded_case)
        return train, validation

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        """nnU-Net's final validation; without ``validation_mirroring`` its predictor runs
        without test-time mirroring, as vstk's prediction does with ``mirroring=False``, so the
        cross-validation scores the model that will be used."""
        axes = self.inference_allowed_mirroring_axes
        if not self.validation_mirroring:
            self.inference_allowed_mirroring_axes = None  # the predictor mirrors along these axes
        try:
            super().perform_actual_validation(save_probabilities)
        finally:
            self.inference_allowed_mirroring_axes = axes

    def save_checkpoint(self, filename: str) -> None:
        partial = f"{filename}.partial"
        super().save_checkpoint(partial)
        if os.path.isfile(partial):  # only rank 0 writes, and not with checkpointing disabled
            os.replace(partial, filename)

    def load_checkpoint(self, filename_or_checkpoint: dict | str) -> None:
        """Restore weights, optimiser, epoch and training log (``weights_only=True`` loading)."""
        if not self.was_initialized:
            self.initialize()
        if isinstance(filename_or_checkpoint, dict):
            checkpoint, source = filename_or_checkpoint, "<checkpoint>"
        else:
            checkpoint, source = load_checkpoint_file(filename_or_checkpoint, self.device), filename_or_checkpoint
        load_network_weights(self.network, checkpoint, source)
        self.current_epoch = checkpoint["current_epoch"]
        self.logger.load_checkpoint(checkpoint["logging"])
        self._best_ema = checkpoint["_best_ema"]
        self.inference_allowed_mirroring_axes = checkpoint.get("inference_allowed_mirroring_axes",
                                                               self.inference_allowed_mirroring_axes)
        self.optimizer.load_state_dict(checkpoint["optimizer_state"])
        if self.grad_scaler is not None and checkpoint.get("grad_scaler_state") is not None:
            self.grad_scaler.load_state_dict(checkpoint["grad_scaler_state"])

    def on_epoch_end(self) -> None:
        super().on_epoch_end()  # increments current_epoch
        if self.local_rank != 0:
            return
        loss = float(self.logger.get_value("train_losses", step=-1))
        dice = [float(d) for d in self.logger.get_value("dice_per_class_or_region", step=-1)]
        message = f"loss {loss:.3f}, pseudo Dice " + " / ".join(f"{d:.2f}" for d in dice)
        log.info("epoch %d/%d: %s", self.current_epoch, self.num_epochs, message)
        if self.progress is not None:
            self.progress(self.current_epoch, self.num_epochs, message)
