"""Train one configuration and fold of a round: resume from a checkpoint, warm start from the
previous round, or start fresh; with a numbered fold, end with nnU-Net's final validation.

Imports torch and nnunetv2: call only inside :func:`vstk_nnunet.environment.nnunet_environment`.
One GPU (or the CPU) trains in this process; ``num_gpus > 1`` starts one process per GPU with
torch's "spawn" and NCCL, as nnU-Net's own ``nnUNetv2_train -num_gpus`` does.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import socket
from pathlib import Path

import numpy as np

from vstk.errors import CheckpointError
from vstk.protocols import ProgressFn

from .layout import FOLD, RESUME_CHECKPOINTS, VALIDATION_SUMMARY, read_json
from .trainer import TrainerSettings, load_checkpoint_file

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainJob:
    """Everything a (possibly spawned) training process needs, as plain picklable values.

    Attributes:
        preprocessed: the round's ``nnUNet_preprocessed/Dataset...`` folder.
        configuration: the plans configuration to train.
        settings: loop lengths for the trainer.
        seed: base seed; the start epoch is added so a resumed run draws new batches.
        resume_from: checkpoint to continue from, or None.
        warm_start_from: final checkpoint of the previous round to initialise from, or None.
        fold: nnU-Net fold, ``"all"`` or 0-4 (its split from ``splits_final.json``).
        validate: after training, run nnU-Net's final validation of the fold's held-out cases
            and save their softmax (``validation/*.npz``), as ``nnUNetv2_train --npz`` does.
        validate_from: a final checkpoint whose training is done but whose validation is not:
            load it and only validate.
    """

    preprocessed: str
    configuration: str
    settings: TrainerSettings
    seed: int
    resume_from: str | None = None
    warm_start_from: str | None = None
    fold: int | str = FOLD
    validate: bool = False
    validate_from: str | None = None


def choose_resume_checkpoint(fold_dir: Path) -> Path | None:
    """The checkpoint a killed run continues from: the most advanced of latest and best.

    nnU-Net writes ``checkpoint_latest.pth`` every ``save_every`` epochs and
    ``checkpoint_best.pth`` whenever its moving-average pseudo Dice improves; both hold the
    full training state. Unreadable ones are skipped with a warning; if checkpoints exist but
    none loads, :class:`CheckpointError` says which folder to delete.
    """
    found = [fold_dir / name for name in RESUME_CHECKPOINTS if (fold_dir / name).is_file()]
    best: tuple[int, Path] | None = None
    for path in found:
        try:
            epoch = int(load_checkpoint_file(path)["current_epoch"])
        except CheckpointError as exc:
            log.warning("ignoring %s", exc.one_line())
            continue
        if best is None or epoch > best[0]:
            best = (epoch, path)
    if found and best is None:
        raise CheckpointError("no checkpoint of this interrupted training can be loaded", path=fold_dir,
                              fix=f"delete {fold_dir} to restart this round from scratch")
    return None if best is None else best[1]


def seed_everything(seed: int) -> None:
    """Seed python, numpy (nnU-Net's augmentation and sampling) and torch."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train_in_process(job: TrainJob, device, progress: ProgressFn | None = None) -> None:
    """Build the trainer, restore or warm-start it, run nnU-Net's training loop and, for a
    numbered fold, nnU-Net's final validation with saved probabilities."""
    from .trainer import load_network_weights, nnUNetTrainerVstk

    preprocessed = Path(job.preprocessed)
    plans = read_json(preprocessed / "nnUNetPlans.json")
    # nnU-Net 2.8's trainer pops this key
    plans["continue_training"] = job.resume_from is not None or job.validate_from is not None
    dataset_json = read_json(preprocessed / "dataset.json")
    trainer = nnUNetTrainerVstk(plans, job.configuration, job.fold, dataset_json, device)
    trainer.apply_settings(job.settings)
    trainer.progress = progress
    if job.validate_from is not None:
        trainer.load_checkpoint(job.validate_from)
        log.info("fold %s of %s finished training; running its final validation", job.fold, job.configuration)
        _validate(trainer, job)
        if progress is not None:
            progress(trainer.current_epoch, trainer.num_epochs, "validated")
        return
    if job.resume_from is not None:
        trainer.load_checkpoint(job.resume_from)
        log.info("resuming %s from epoch %d (%s)", preprocessed.name, trainer.current_epoch,
                 Path(job.resume_from).name)
    elif job.warm_start_from is not None:
        trainer.initialize()
        load_network_weights(trainer.network, load_checkpoint_file(job.warm_start_from, device),
                             job.warm_start_from)
        log.info("warm start of %s from %s", preprocessed.name, job.warm_start_from)
    seed_everything(job.seed + trainer.current_epoch)
    if progress is not None:
        progress(trainer.current_epoch, trainer.num_epochs, "resumed" if job.resume_from else "started")
    trainer.run_training()
    if job.validate:
        _validate(trainer, job)


def _validate(trainer, job: TrainJob) -> None:
    """nnU-Net's final validation of the fold, softmax saved next to each label."""
    trainer.perform_actual_validation(save_probabilities=True)
    if trainer.local_rank == 0:
        summary = read_json(Path(trainer.output_folder) / VALIDATION_SUMMARY)
        log.info("fold %s of %s: validation Dice %.4f (%s)", job.fold, job.configuration,
                 summary["foreground_mean"]["Dice"],
                 ", ".join(f"label {k} {v['Dice']:.4f}" for k, v in summary["mean"].items()))


def train_round(job: TrainJob, device, num_gpus: int, progress: ProgressFn | None = None) -> None:
    """Train in this process, or with DistributedDataParallel over ``num_gpus`` GPUs."""
    if num_gpus <= 1:
        train_in_process(job, device, progress)
        return
    import torch.multiprocessing

    os.environ.setdefault("MASTER_ADDR", "localhost")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    log.info("training on %d GPUs (one process each, NCCL); progress goes to nnU-Net's training log", num_gpus)
    torch.multiprocessing.spawn(_ddp_worker, args=(job, num_gpus), nprocs=num_gpus, join=True)


def _ddp_worker(rank: int, job: TrainJob, world_size: int) -> None:
    """One DDP process: join the NCCL group, train on GPU ``rank``, leave the group."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("nccl", rank=rank, world_size=world_size)
    try:
        torch.cuda.set_device(rank)
        train_in_process(job, torch.device("cuda", rank))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])
