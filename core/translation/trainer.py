"""The one training loop every translator uses.

A translator supplies a :class:`TrainableModel` (its networks, optimisers and one training
step); this loop owns everything else: seeding, the linear-decay learning-rate schedule,
unpaired batch sampling, checkpoints every N steps and at the end, exact resume after a
kill, the CSV loss log and sample PNGs. With a :class:`~vstk.translation.distributed.DistContext`
of several ranks (torchrun) the same loop trains data-parallel; see
:mod:`vstk.translation.distributed` for what is shared between ranks and why.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from ..protocols import ProgressFn
from . import distributed as D
from .checkpoint import FORMAT, VERSION, load_checkpoint, save_checkpoint
from .data import SliceSet
from .schedule import TrainSchedule

log = logging.getLogger(__name__)

LATEST = "latest.pt"
FINAL = "translator.pt"
LOSS_LOG = "losses.csv"
#: Steps whose losses stay on the device before one copy writes them to losses.csv.
LOSS_FLUSH_EVERY = 25


class TrainableModel(Protocol):
    """What a translator's model gives the training loop."""

    def networks(self) -> dict[str, nn.Module]:
        """Every network whose weights are checkpointed, by a stable name."""

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Every optimiser, by a stable name (created in :meth:`setup`)."""

    def setup(self, real_a: Tensor, real_b: Tensor, schedule: TrainSchedule) -> None:
        """Create optimisers (and data-dependent layers) from a first batch; called once."""

    def train_step(self, real_a: Tensor, real_b: Tensor) -> dict[str, Tensor | float]:
        """One optimisation step on unpaired batches ``[B, 1, N, N]``; returns the losses,
        preferably as detached 0-dim tensors: ``.item()`` would make the host wait for the GPU
        every step, while the loop copies the logged losses in blocks."""

    def translate(self, real_a: Tensor) -> Tensor:
        """ceT1 -> hrT2 for a batch, in inference mode."""

    def generator_state(self) -> dict[str, Tensor]:
        """The state dict that translates at inference (saved in the final checkpoint)."""

    def extra_state(self) -> dict[str, Any]:
        """Other state to resume exactly (image pools, ...): tensors and plain data only."""

    def load_extra_state(self, state: dict[str, Any]) -> None: ...


class ModelBase:
    """Defaults for a :class:`TrainableModel`: ``nets`` by name, optimisers made in ``setup``,
    inference with ``nets[generator_key]``, no extra state."""

    generator_key = "G"

    def __init__(self) -> None:
        self.nets: dict[str, nn.Module] = {}
        self._optimizers: dict[str, torch.optim.Optimizer] = {}

    def networks(self) -> dict[str, nn.Module]:
        return self.nets

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self._optimizers

    @torch.no_grad()
    def translate(self, real_a: Tensor) -> Tensor:
        return self.nets[self.generator_key](real_a)

    def generator_state(self) -> dict[str, Tensor]:
        return self.nets[self.generator_key].state_dict()

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA) for reproducible initialisation."""
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def configure_cpu() -> None:
    """Flush denormals: 3-9x faster CPU training for GANs and nnU-Net alike."""
    torch.set_flush_denormal(True)


def _to_tensor(batch: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(batch)).to(device)


def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows after ``step`` (they belong to work lost when the process was killed)."""
    if not path.exists():
        return
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(kept)


def save_samples(path: Path, source: np.ndarray, fake: np.ndarray, target: np.ndarray, step: int) -> Path:
    """A PNG of rows ``ceT1 | translated | a real hrT2`` (slices in [-1, 1])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(source)
    fig, axes = plt.subplots(rows, 3, figsize=(7.5, 2.6 * rows), squeeze=False)
    for r in range(rows):
        for c, (image, title) in enumerate(((source[r], "ceT1 (source)"), (fake[r], "translated"),
                                            (target[r], "real hrT2 (unpaired)"))):
            axes[r, c].imshow(image, cmap="gray", vmin=-1, vmax=1)
            axes[r, c].set_axis_off()
            if r == 0:
                axes[r, c].set_title(title, fontsize=10)
    fig.suptitle(f"step {step}", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def train(model: TrainableModel, source: SliceSet, target: SliceSet, workdir: str | Path,
          schedule: TrainSchedule, *, device: str | torch.device = "cpu", meta: dict[str, Any] | None = None,
          progress: ProgressFn | None = None, stop_after: int | None = None,
          distributed: D.DistContext | None = None) -> Path:
    """Train ``model`` on unpaired slices, resuming from ``workdir/latest.pt`` if present.

    Writes ``latest.pt`` every ``checkpoint_every`` steps, ``losses.csv``, sample PNGs under
    ``samples/``, and at the end ``translator.pt`` (generator weights + ``meta``). Returns
    the path of ``translator.pt``. ``stop_after`` ends early after that many steps in total
    (for tests and benchmarks; no final checkpoint then, returns ``latest.pt``).

    ``distributed`` (default: one process) makes this process one rank of a data-parallel
    job: it trains on its own share of the slices (``batch_size`` per rank and step), joins
    the process group (unless the caller did), and only rank 0 writes files or calls
    ``progress``. The model must already live on this rank's device (:func:`~vstk.translation.
    distributed.rank_device`).
    """
    context = distributed or D.SINGLE
    workdir = Path(workdir)
    if context.is_main:
        workdir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    if device.type == "cpu":
        configure_cpu()
    with D.process_group(context, device):
        return _train(model, source, target, workdir, schedule, device, dict(meta or {}), progress, stop_after,
                      context)


def _rank_rng(seed: int, rank: int) -> np.random.Generator:
    """The slice sampler of ``rank``: rank 0 draws the stream of a single process."""
    return np.random.default_rng(seed if rank == 0 else [seed, rank])


class _LossLog:
    """``losses.csv`` (rank 0) written in blocks: each step's losses stay on the device as one
    small tensor (mean over the ranks under torch.distributed) until :meth:`flush` copies the
    block to the host at once, so the host never waits for the GPU inside the block."""

    def __init__(self, path: Path | None, step: int, device: torch.device, context: D.DistContext) -> None:
        self.device, self.context = device, context
        self.handle = None
        self.header_written = True
        if path is not None:
            _truncate_log(path, step)
            self.header_written = path.exists() and path.stat().st_size > 0
            self.handle = open(path, "a", newline="", buffering=1)  # line-buffered: the log is live
        self.writer = csv.writer(self.handle) if self.handle is not None else None
        self.pending: list[tuple[int, float, Tensor]] = []
        self.names: list[str] = []
        self.last: dict[str, float] = {}

    def add(self, step: int, lr: float, losses: dict[str, Tensor | float]) -> None:
        self.names = list(losses)
        row = torch.stack([value.detach().reshape(()).float().to(self.device) if isinstance(value, Tensor)
                           else torch.tensor(float(value), device=self.device) for value in losses.values()])
        if self.context.active:
            row = D.average_tensor(row, self.context.world_size)
        self.pending.append((step, lr, row))

    def flush(self) -> None:
        if self.writer is None:  # ranks other than 0 log nothing: no host copy
            self.pending.clear()
            return
        if not self.pending:
            return
        values = torch.stack([row for _, _, row in self.pending]).cpu().tolist()
        if not self.header_written:
            self.writer.writerow(["step", "lr", *self.names])
            self.header_written = True
        for (step, lr, _), row in zip(self.pending, values):
            self.writer.writerow([step, f"{lr:.6g}", *(f"{v:.6g}" for v in row)])
        self.handle.flush()
        self.last = dict(zip(self.names, values[-1]))
        self.pending.clear()

    def message(self) -> str:
        return " ".join(f"{k} {v:.3f}" for k, v in list(self.last.items())[:4])

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def _train(model: TrainableModel, source: SliceSet, target: SliceSet, workdir: Path, schedule: TrainSchedule,
           device: torch.device, meta: dict[str, Any], progress: ProgressFn | None, stop_after: int | None,
           context: D.DistContext) -> Path:
    seed_everything(schedule.seed)
    rng = _rank_rng(schedule.seed, context.rank)
    first_a = _to_tensor(source.slices[: schedule.batch_size][:, None], device)
    first_b = _to_tensor(target.slices[: schedule.batch_size][:, None], device)
    model.setup(first_a, first_b, schedule)
    schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, schedule.lr_factor)
                  for name, opt in model.optimizers().items()}
    # Each rank trains on its own share; samples and the first batch use the whole sets.
    share_a = source.shard(context.rank, context.world_size, schedule.seed)
    share_b = target.shard(context.rank, context.world_size, schedule.seed)
    if context.active:
        torch.manual_seed(D.rank_seed(schedule.seed, context.rank))
    step = 0
    latest = workdir / LATEST
    if latest.exists():
        state = load_checkpoint(latest, map_location=device)
        if state.get("format") != FORMAT or state.get("kind") != "training":
            raise CheckpointError("not a vstk training checkpoint", path=latest,
                                  fix="delete the work folder to start over")
        if state.get("translator") != meta.get("translator"):
            raise CheckpointError(f"checkpoint of translator {state.get('translator')!r}, not "
                                  f"{meta.get('translator')!r}", path=latest, fix="use another work folder")
        for name, net in model.networks().items():
            net.load_state_dict(state["networks"][name])
        for name, opt in model.optimizers().items():
            opt.load_state_dict(state["optimizers"][name])
        for name, sched in schedulers.items():
            sched.load_state_dict(state["schedulers"][name])
        step = int(state["step"])
        saved_world = int(state.get("world_size", 1))
        if saved_world == context.world_size:
            own = state if context.rank == 0 else state["rank_states"][context.rank - 1]
            model.load_extra_state(own["extra"])
            rng.bit_generator.state = json.loads(own["numpy_rng"])
            torch.set_rng_state(own["torch_rng"].cpu())
        else:
            # Weights, optimisers and schedule carry over; the per-rank random streams and
            # image pools cannot, so they restart from the seed, rank and step.
            log.warning("%s was trained by %d process(es), resumed by %d: training continues, but not "
                        "bit-identically to an uninterrupted run", latest, saved_world, context.world_size)
            rng = np.random.default_rng([schedule.seed, context.rank, step])
            torch.manual_seed(D.rank_seed(schedule.seed + step, context.rank))
        log.info("resumed %s at step %d of %d", workdir, step, schedule.total_steps)
    averager = None
    sync_buffers: list[Tensor] = []
    if context.active:
        D.check_same_step(step, latest, device)
        D.broadcast_networks(model.networks())
        averager = D.GradientAverager(model.optimizers(), context.world_size)
        sync_buffers = D.norm_buffers(model.networks())
    total = schedule.total_steps
    end = total if stop_after is None else min(total, stop_after)
    loss_log = _LossLog(workdir / LOSS_LOG if context.is_main else None, step, device, context)

    def rank_state() -> dict[str, Any]:
        return {"extra": model.extra_state(), "numpy_rng": json.dumps(rng.bit_generator.state),
                "torch_rng": torch.get_rng_state()}

    def checkpoint() -> None:
        states = D.gather_to_main(rank_state(), context) if context.active else [rank_state()]
        if context.is_main:
            assert states is not None
            save_checkpoint({
                "format": FORMAT, "version": VERSION, "kind": "training",
                "translator": meta.get("translator"), "step": step, "total_steps": total,
                "networks": {n: net.state_dict() for n, net in model.networks().items()},
                "optimizers": {n: opt.state_dict() for n, opt in model.optimizers().items()},
                "schedulers": {n: s.state_dict() for n, s in schedulers.items()},
                **states[0], "world_size": context.world_size, "rank_states": states[1:],
            }, latest)
        if context.active:
            D.barrier()  # no rank goes on (or reads the file) before it is on disk

    started = time.perf_counter()
    # bfloat16 on the CPU's matrix units; weights, optimiser states and checkpoints stay float32
    precision = (torch.autocast("cpu", dtype=torch.bfloat16) if schedule.bf16 and device.type == "cpu"
                 else contextlib.nullcontext())
    try:
        while step < end:
            real_a = _to_tensor(share_a.sample(rng, schedule.batch_size, flip=schedule.flip, crop=schedule.crop), device)
            real_b = _to_tensor(share_b.sample(rng, schedule.batch_size, flip=schedule.flip, crop=schedule.crop), device)
            with precision:
                losses = model.train_step(real_a, real_b)
            for sched in schedulers.values():
                sched.step()
            lr = next(iter(model.optimizers().values())).param_groups[0]["lr"]
            if sync_buffers:
                D.broadcast_tensors(sync_buffers)
            step += 1
            loss_log.add(step, lr, losses)
            if step % LOSS_FLUSH_EVERY == 0 or step % schedule.checkpoint_every == 0 or step == total:
                loss_log.flush()
            if step % schedule.checkpoint_every == 0 or step == total:
                checkpoint()
            if context.is_main and (schedule.sample_every and step % schedule.sample_every == 0 or step == total):
                _write_samples(model, source, target, workdir, step, device)
            if progress is not None and context.is_main:
                progress(step, total, loss_log.message())
    finally:
        loss_log.flush()
        loss_log.close()
        if averager is not None:
            averager.remove()
    seconds = time.perf_counter() - started
    if step < total:
        checkpoint()
        return latest
    meta.update({"steps": total, "train_seconds_last_run": round(seconds, 2)})
    final = workdir / FINAL
    if context.is_main:
        save_checkpoint({"format": FORMAT, "version": VERSION, "kind": "translator",
                         "translator": meta.get("translator"), "meta": json.dumps(meta),
                         "generator": model.generator_state()}, final)
    if context.active:
        D.barrier()
    return final


def _write_samples(model: TrainableModel, source: SliceSet, target: SliceSet, workdir: Path, step: int,
                   device: torch.device) -> None:
    """Fixed, evenly spaced slices so successive PNGs are comparable."""
    pick_a = np.linspace(0, len(source) - 1, 3).astype(int)
    pick_b = np.linspace(0, len(target) - 1, 3).astype(int)
    real_a = source.slices[pick_a]
    with torch.no_grad():
        fake = model.translate(_to_tensor(real_a[:, None], device)).float().cpu().numpy()[:, 0]
    save_samples(workdir / "samples" / f"step_{step:07d}.png", real_a, fake, target.slices[pick_b], step)
