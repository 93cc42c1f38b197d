"""The process-wide settings nnU-Net reads: environment variables, threads, device, stdout.

nnU-Net is configured through environment variables and talks through ``print``; this module
is the one place that sets the former and turns the latter into log records.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from pathlib import Path
from typing import Iterator

from vstk.errors import ConfigError, VstkError
from vstk.resources import cpu_trains_in_bf16

from .config import NnUNetConfig

log = logging.getLogger(__name__)
_nnunet_log = logging.getLogger("vstk_nnunet.nnunet")


def n_proc_preprocessing(config: NnUNetConfig) -> int:
    """Worker processes for fingerprinting and preprocessing: the setting, or all CPUs."""
    return config.n_proc_preprocessing or max(1, os.cpu_count() or 1)


def nnunet_default_n_proc(config: NnUNetConfig) -> int:
    """``nnUNet_def_n_proc``: nnU-Net caps its prediction threads with it, so it follows the threads."""
    return config.num_threads or max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def nnunet_environment(workdir: str | Path, *, n_proc: int, n_proc_da: int | None) -> Iterator[None]:
    """Point nnU-Net at ``workdir``'s folders while the block runs; restore the variables after.

    nnU-Net 2.8 reads ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` each time
    it uses them and ``nnUNet_n_proc_DA`` each time it builds data loaders or plans, so they
    may differ per job and per stage. ``nnUNet_def_n_proc`` is read once, when
    ``nnunetv2.configuration`` is first imported: this package imports nnunetv2 only inside
    this block, so the first job of a process fixes it. Worker processes started inside the
    block (spawned or forked) inherit every variable.

    Args:
        workdir: the job folder (holds ``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results``).
        n_proc: ``nnUNet_def_n_proc``: nnU-Net's default worker count, and the thread cap of
            its prediction and of resampling predictions back to the input grid.
        n_proc_da: ``nnUNet_n_proc_DA``: data-augmentation workers per GPU; None leaves
            nnU-Net's default.
    """
    workdir = Path(workdir)
    wanted: dict[str, str | None] = {
        "nnUNet_raw": str(workdir / "nnUNet_raw"),
        "nnUNet_preprocessed": str(workdir / "nnUNet_preprocessed"),
        "nnUNet_results": str(workdir / "nnUNet_results"),
        "nnUNet_def_n_proc": str(n_proc),
        "nnUNet_n_proc_DA": None if n_proc_da is None else str(n_proc_da),
    }
    imported = getattr(sys.modules.get("nnunetv2.configuration"), "default_num_processes", n_proc)
    if imported != n_proc:
        log.debug("nnU-Net was imported with nnUNet_def_n_proc=%s; %s reaches new worker processes only",
                  imported, n_proc)
    saved = {key: os.environ.get(key) for key in wanted}
    try:
        _apply(wanted)
        yield
    finally:
        _apply(saved)


def _apply(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def refuse_in_worker_bootstrap() -> None:
    """Raise when called while multiprocessing re-imports the user's script in a worker.

    nnU-Net's worker pools use the "spawn" start method: every worker imports the main script
    again (as ``__mp_main__``). Without an ``if __name__ == "__main__":`` guard that import
    would start the whole job once more inside the worker. ``_inheriting`` is the flag
    multiprocessing itself checks for this (``spawn._check_not_importing_main``).
    """
    import multiprocessing

    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise VstkError("the nnU-Net segmenter was called while a worker process was importing your script",
                        fix='put the code that trains or predicts under `if __name__ == "__main__":`')


def resolve_device(config: NnUNetConfig, *, for_training: bool = True):  # -> torch.device
    """The torch device of ``config.device`` (None: CUDA when available, else CPU).

    For training, ``num_gpus`` is checked against the visible CUDA devices.

    On CPU, denormal floats are flushed to zero: nnU-Net training runs several times faster
    and nnU-Net never sets it itself.
    """
    import torch

    name = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but torch sees no CUDA device", fix="set device=cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device=mps but torch sees no MPS device", fix="set device=cpu")
    if for_training and config.num_gpus > 1 and (name != "cuda" or torch.cuda.device_count() < config.num_gpus):
        raise ConfigError(f"num_gpus={config.num_gpus} but {torch.cuda.device_count()} CUDA device(s) are visible",
                          fix=f"set num_gpus to at most {max(1, torch.cuda.device_count())}")
    if name == "cpu":
        torch.set_flush_denormal(True)
    return torch.device(name)


def trains_in_bf16(config: NnUNetConfig, device) -> bool:
    """Whether training on ``device`` uses bfloat16 autocast (``config.cpu_precision``)."""
    return device.type == "cpu" and cpu_trains_in_bf16(config.cpu_precision)


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Use ``count`` torch intra-op threads while the block runs (None: leave torch's setting)."""
    import torch

    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# nnU-Net modules that start "spawn" pools for work vstk asks of them: the final validation's
# export, scoring, ensembling and postprocessing (each finds ``multiprocessing`` at call time)
_POOL_MODULES = ("nnunetv2.training.nnUNetTrainer.nnUNetTrainer", "nnunetv2.evaluation.evaluate_predictions",
                 "nnunetv2.ensembling.ensemble", "nnunetv2.postprocessing.remove_connected_components")


class _ThreadPoolMultiprocessing:
    """Stands in for the ``multiprocessing`` module inside nnU-Net's modules: every pool they
    ask for is one worker thread of this process (the rest of the module is the real one)."""

    def __init__(self, real) -> None:
        self._real = real

    def get_context(self, method: str | None = None) -> "_ThreadPoolMultiprocessing":
        return self

    def Pool(self, processes: int | None = None, *args, **kwargs):  # noqa: N802 - multiprocessing's name
        from multiprocessing.pool import ThreadPool

        return ThreadPool(1)

    def __getattr__(self, name: str):
        return getattr(self._real, name)


@contextlib.contextmanager
def nnunet_pools_in_process(enabled: bool = True) -> Iterator[None]:
    """While the block runs, nnU-Net's worker pools (final validation, scoring, ensembling,
    postprocessing) are a thread of this process instead of spawned processes.

    A spawned worker first imports torch and nnU-Net (5-10 s on 2 busy cores) and nnU-Net
    starts a pool for every folder it scores: a cross-validated round with a model choice
    starts about twenty. For the few dozen small ear crops of a CPU run, one thread in this
    process is faster; vstk uses it where ``n_proc_preprocessing=1`` asks for in-process work.
    """
    if not enabled:
        yield
        return
    import importlib

    modules = [importlib.import_module(name) for name in _POOL_MODULES]
    saved = [module.multiprocessing for module in modules]
    for module, real in zip(modules, saved):
        module.multiprocessing = _ThreadPoolMultiprocessing(real)
    try:
        yield
    finally:
        for module, real in zip(modules, saved):
            module.multiprocessing = real


class _LogWriter(io.TextIOBase):
    """A text stream that turns each written line into a DEBUG record of ``vstk_nnunet.nnunet``."""

    def __init__(self) -> None:
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            if line.strip():
                _nnunet_log.debug("%s", line.rstrip())
        return len(text)

    def flush(self) -> None:
        if self._pending.strip():
            _nnunet_log.debug("%s", self._pending.rstrip())
        self._pending = ""


@contextlib.contextmanager
def nnunet_prints_to_log() -> Iterator[None]:
    """Route nnU-Net's ``print`` output (stdout) to the ``vstk_nnunet.nnunet`` logger at DEBUG.

    nnU-Net also keeps its own training log in the results folder
    (``training_log_*.txt``), so nothing is lost.
    """
    writer = _LogWriter()
    try:
        with contextlib.redirect_stdout(writer):
            yield
    finally:
        writer.flush()
