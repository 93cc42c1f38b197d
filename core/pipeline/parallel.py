"""Training several translators at once on a CPU: one process per translator.

Small GAN networks do not scale across cores inside one process (a 128 px CycleGAN step
is about as fast with one thread as with two, and two OpenMP threads fighting other
work run many times slower), so ``vstk run`` trains the translators of a multi-view
pool side by side, one single-threaded process each, instead of one after the other.
On a GPU they train in turn, in this process.

Each worker is a fresh ``spawn`` process that imports torch itself, reads its volumes,
and trains into its own work folder; a killed run leaves each folder with its last
checkpoint and the rerun resumes from there (the training loop's own resume). Workers
watch their parent: when it dies (SIGKILL included) they stop at once, so a rerun never
races a leftover worker for the same folder.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import VstkError
from ..protocols import ProgressFn
from ..resources import usable_cores
from ..translation.base import TranslatorConfig, pick_device

log = logging.getLogger(__name__)


class TranslatorTrainingError(VstkError):
    """A translator failed in its worker process (the worker's one-line message)."""


@dataclasses.dataclass(frozen=True)
class TranslatorJob:
    """Everything a worker needs: picklable, no arrays (the worker reads its own volumes)."""

    name: str
    translator_class: type
    config: Any
    device: str | None
    sources: tuple[Path, ...]
    targets: tuple[Path, ...]
    workdir: Path

    def total_steps(self) -> int:
        config = self.config
        steps, decay_steps = getattr(config, "steps", None), getattr(config, "decay_steps", None)
        counted_in_steps = getattr(config, "epochs", None) is None and getattr(config, "decay_epochs", None) is None
        if counted_in_steps and isinstance(config, TranslatorConfig):  # bfloat16 may scale the steps
            return config.schedule(bf16=config.trains_in_bf16(pick_device(self.device))).total_steps
        if counted_in_steps and steps is not None and decay_steps is not None:
            return int(steps) + int(decay_steps)
        # counted in epochs over the slice set (unknown until the slices are cut), or a plugin's
        # config that schedules its training otherwise: the progress bar shows no total
        return 0


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(70)
        time.sleep(0.5)


def watch_parent(parent: int) -> None:
    """In a worker process: exit at once when the process ``parent`` is gone (SIGKILL
    included), so that no worker outlives the run that started it."""
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _worker(job: TranslatorJob, threads: int, parent: int, connection) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    watch_parent(parent)
    try:
        import torch

        torch.set_num_threads(threads)
        from ..crossmoda import read_image

        started = time.perf_counter()
        sources = [read_image(p) for p in job.sources]
        targets = [read_image(p) for p in job.targets]
        translator = job.translator_class(job.config, device=job.device)
        path = translator.train(sources, targets, job.workdir)
        connection.send(("ok", str(path), time.perf_counter() - started))
    except VstkError as error:
        connection.send(("error", error.one_line(), 0.0))
    except BaseException as error:  # a bug: keep the type so the message is useful
        connection.send(("error", f"{type(error).__name__}: {error}", 0.0))
    finally:
        connection.close()


def _steps_done(workdir: Path) -> int:
    log_file = workdir / "losses.csv"
    try:
        with open(log_file, "rb") as handle:
            return max(0, sum(1 for _ in handle) - 1)
    except OSError:
        return 0


def train_in_parallel(jobs: Sequence[TranslatorJob], *, workers: int | None = None,
                      progress: ProgressFn | None = None) -> dict[str, tuple[Path, float]]:
    """Train ``jobs`` in up to ``workers`` processes, splitting the cores evenly between them;
    returns ``{name: (checkpoint, seconds)}``.

    By default every job starts at once (at most two per core): three single-threaded
    translators on two cores finish together in about 1.5 translator-times, where two
    workers taking turns would need two (the third would run alone on one core).

    Raises :class:`TranslatorTrainingError` naming the translator when a worker fails; the
    other workers are stopped (their checkpoints stay, so a rerun resumes them).
    """
    cores = usable_cores()
    workers = max(1, min(workers or 2 * cores, len(jobs)))
    threads = max(1, cores // workers)
    context = multiprocessing.get_context("spawn")
    pending = list(jobs)
    running: dict[str, tuple[Any, Any, TranslatorJob]] = {}
    results: dict[str, tuple[Path, float]] = {}
    total = sum(job.total_steps() for job in jobs)
    log.info("training %s in %d processes with %d thread(s) each", ", ".join(j.name for j in jobs), workers,
             threads)
    try:
        while pending or running:
            while pending and len(running) < workers:
                job = pending.pop(0)
                receive, send = context.Pipe(duplex=False)
                process = context.Process(target=_worker, args=(job, threads, os.getpid(), send),
                                          name=f"vstk-train-{job.name}", daemon=False)
                process.start()
                send.close()
                running[job.name] = (process, receive, job)
            for name, (process, receive, job) in list(running.items()):
                if receive.poll():
                    try:
                        status, value, seconds = receive.recv()
                    except EOFError:
                        status, value, seconds = "error", "the worker exited without a result", 0.0
                elif not process.is_alive():
                    status, value, seconds = ("error", f"the worker died (exit code {process.exitcode}; out of "
                                                       "memory or killed?)", 0.0)
                else:
                    continue
                process.join()
                receive.close()
                del running[name]
                if status != "ok":
                    raise TranslatorTrainingError(f"training translator {name!r} failed: {value}",
                                                  fix=f"see {job.workdir}; rerun the same command to resume")
                results[name] = (Path(value), seconds)
            if progress is not None:
                done = sum(_steps_done(job.workdir) for job in jobs)
                progress(min(done, total) if total else done, total, ", ".join(sorted(running)))
            time.sleep(1.0)
    finally:
        for process, receive, _ in running.values():
            process.terminate()
        for process, receive, _ in running.values():
            process.join(10)
            receive.close()
    return results
