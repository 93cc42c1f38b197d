"""Data-parallel translator training over several processes (``torchrun``), and its launcher.

Every rank runs the same training loop (:func:`vstk.translation.trainer.train`) on its own
share of the slices; the networks stay identical on every rank because every rank starts from
rank 0's weights and every optimiser step uses gradients averaged over all ranks. One process
per GPU with NCCL, or per CPU share with gloo. The process group is set up from torchrun's
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``),
checked once at the command line into a :class:`DistContext` and passed down.

What is shared across ranks and what is not, and why:

* Gradients: averaged by an explicit all-reduce, one flat buffer per optimiser, just before
  the optimiser steps (an optimiser step pre-hook), instead of wrapping the networks in
  ``DistributedDataParallel``. DDP only sees ``module.forward``, while the translators call
  ``encode`` / ``forward_with_features``, run a generator several times per step, freeze the
  discriminators (``requires_grad=False``) during the generator's backward and use several
  optimisers with one backward each. DDP's reducer expects every parameter that requires a
  gradient to receive one in each backward after each forward, which the frozen-discriminator
  pattern breaks (or costs ``find_unused_parameters`` graph walks). The mean of the per-rank
  gradients is the gradient of the loss averaged over the global batch (every loss here is a
  mean over samples, and instance norm is per sample), which is what DDP computes too; no
  plugin's training step changes.
* Batch-norm statistics (``norm=batch`` only): rank 0's buffers are broadcast after every step,
  as DDP's ``broadcast_buffers`` does; instance norm (the default) has none.
* Image pools (CycleGAN) are per rank: each discriminator update sees the history of its own
  rank's fakes, as in the official code per process; with N ranks N x 50 fakes are kept in all.
  Exchanging them would cost an all-gather of images per step for no documented gain.
* The QS-Attn module is per rank: it has no parameters (attention and entropy are computed
  from each sample's own features), so there is nothing to synchronise; the patch MLP ``F`` is
  a network like the others and is synchronised through its gradients.
* Random streams: slice sampling uses ``numpy.random.default_rng(seed)`` on rank 0 (the same
  stream as a single process) and ``default_rng([seed, rank])`` elsewhere; torch's generator
  (random patch ids, dropout) is reseeded per rank the same way. Each rank's streams and image
  pools are gathered into the checkpoint, so a resumed run continues them exactly.
* Files: rank 0 alone writes checkpoints, ``losses.csv`` (losses averaged over the ranks) and
  sample PNGs; the other ranks wait at a barrier until a checkpoint is on disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from ..errors import ConfigError
from ..resources import usable_cores

if TYPE_CHECKING:  # torch is imported by the functions that need it
    import torch
    from torch import nn

log = logging.getLogger(__name__)

#: torchrun's environment variables that make a process one rank of a job.
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclasses.dataclass(frozen=True)
class DistContext:
    """Where this process stands in a data-parallel job (a single process by default).

    Attributes:
        rank: this process's index, 0 .. world_size - 1; rank 0 writes every file.
        world_size: number of processes training together.
        local_rank: index on this machine (the GPU it uses).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise ConfigError(f"rank {self.rank} / world size {self.world_size} / local rank {self.local_rank} "
                              "do not fit together", fix="launch with `vstk translate train --nproc N` or torchrun")

    @property
    def active(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the one that writes files and shows progress)."""
        return self.rank == 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> "DistContext":
        """The context torchrun describes in ``environ`` (a single process when it does not)."""
        if "WORLD_SIZE" not in environ:
            return cls()
        values: dict[str, Any] = {}
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            text = environ.get(key, "0")
            try:
                values[key.lower()] = int(text)
            except ValueError:
                raise ConfigError(f"environment variable {key}={text!r} is not an integer",
                                  fix="launch with torchrun, which sets it") from None
        if values["world_size"] > 1:
            missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not environ.get(k)]
            if missing:
                raise ConfigError(f"WORLD_SIZE={values['world_size']} but {', '.join(missing)} not set",
                                  fix="launch with torchrun (or `vstk translate train --nproc N`), which sets them")
        return cls(**values)


SINGLE = DistContext()


def rank_device(device: str | torch.device, context: DistContext) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` for a CUDA job of several processes."""
    import torch

    device = torch.device(device)
    if device.type != "cuda" or not context.active:
        return device
    count = torch.cuda.device_count()
    if context.local_rank >= count:
        raise ConfigError(f"local rank {context.local_rank} needs GPU {context.local_rank}, but {count} CUDA "
                          "device(s) are visible", fix=f"start at most {count} processes per node (--nproc {count})")
    return torch.device("cuda", context.local_rank)


@contextlib.contextmanager
def process_group(context: DistContext, device: torch.device) -> Iterator[None]:
    """Join the job's process group (NCCL on CUDA, gloo on CPU) for the duration of the block.

    The group is found through torchrun's environment (``init_method="env://"``, which also
    reuses torchrun's own rendezvous store). A group that already exists (set up by the
    caller, e.g. to train several translators in one job) is used as it is and left open.
    """
    if not context.active:
        yield
        return
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed", fix="install a torch with distributed support")
    backend = "nccl" if device.type == "cuda" else "gloo"
    created = False
    if dist.is_initialized():
        if dist.get_world_size() != context.world_size or dist.get_rank() != context.rank:
            raise ConfigError(f"the open process group is rank {dist.get_rank()} of {dist.get_world_size()}, "
                              f"not {context.rank} of {context.world_size}", fix="launch with torchrun only once")
    else:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, init_method="env://", rank=context.rank, world_size=context.world_size)
        created = True
        log.info("rank %d of %d joined the %s process group", context.rank, context.world_size, backend)
    try:
        yield
    finally:
        if created:
            dist.destroy_process_group()


def rank_seed(seed: int, rank: int) -> int:
    """torch seed of ``rank``: ``seed`` itself on rank 0, a distinct 63-bit value elsewhere."""
    if rank == 0:
        return seed
    import numpy as np

    return int(np.random.SeedSequence([seed, rank]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def broadcast_networks(networks: Mapping[str, nn.Module]) -> None:
    """Copy rank 0's parameters and buffers into every rank (in place)."""
    import torch.distributed as dist

    for name in sorted(networks):
        for tensor in networks[name].state_dict().values():
            dist.broadcast(tensor, src=0)


def norm_buffers(networks: Mapping[str, nn.Module]) -> list[torch.Tensor]:
    """Running statistics of batch-norm layers (they change in training and must agree)."""
    from torch import nn

    out = []
    for name in sorted(networks):
        for module in networks[name].modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)):
                out.extend(module.buffers())
    return out


def broadcast_tensors(tensors: Sequence[torch.Tensor]) -> None:
    import torch.distributed as dist

    for tensor in tensors:
        dist.broadcast(tensor, src=0)


class GradientAverager:
    """Averages gradients over the ranks just before each optimiser steps.

    Registers a step pre-hook on every optimiser: the gradients of its parameters are packed
    into one flat buffer per dtype and device, all-reduced (sum) and divided by the world
    size. Parameters without a gradient are left alone (the same ones on every rank, since all
    ranks run the same step). :meth:`remove` takes the hooks off again.
    """

    def __init__(self, optimizers: Mapping[str, torch.optim.Optimizer], world_size: int) -> None:
        self.world_size = world_size
        self._handles = [optimizers[name].register_step_pre_hook(self._hook) for name in sorted(optimizers)]

    def _hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        import torch
        import torch.distributed as dist

        groups: dict[tuple[Any, Any], list[torch.Tensor]] = {}
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    groups.setdefault((param.grad.device, param.grad.dtype), []).append(param.grad)
        for grads in groups.values():
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat.div_(self.world_size)
            offset = 0
            for grad in grads:
                grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
                offset += grad.numel()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def average_tensor(values: torch.Tensor, world_size: int) -> torch.Tensor:
    """The mean of ``values`` over the ranks (the logged losses of one step, on this rank's
    device: NCCL reduces CUDA tensors only); asynchronous on CUDA, the host does not wait."""
    import torch.distributed as dist

    values = values.clone()
    dist.all_reduce(values)
    return values / world_size


def check_same_step(step: int, path: Any, device: torch.device) -> None:
    """Raise :class:`ConfigError` on every rank unless every rank resumes at the same ``step``
    (a work folder that is not shared by all nodes)."""
    import torch
    import torch.distributed as dist

    bounds = torch.tensor([step, -step], dtype=torch.int64, device=device)
    dist.all_reduce(bounds, op=dist.ReduceOp.MAX)
    if int(bounds[0]) != -int(bounds[1]):
        raise ConfigError(f"ranks resume at different steps ({-int(bounds[1])} to {int(bounds[0])}) from {path}",
                          fix="put the work folder on a file system that every node sees")


def to_cpu(value: Any) -> Any:
    """``value`` with every tensor inside (dicts, lists, tuples) moved to the CPU."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return value


def gather_to_main(value: Any, context: DistContext) -> list[Any] | None:
    """Every rank's ``value`` (tensors moved to the CPU), as a list on rank 0; None elsewhere.

    The values travel between the job's own processes only (torch's object collectives);
    they are written to disk as tensors and plain data, never as pickles.
    """
    import torch.distributed as dist

    out: list[Any] | None = [None] * context.world_size if context.is_main else None
    dist.gather_object(to_cpu(value), out, dst=0)
    return out


def barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


def torchrun_command(nproc: int, module_args: Sequence[str], *, python: str | None = None) -> list[str]:
    """The command line that runs ``python -m vstk MODULE_ARGS`` as ``nproc`` ranks on this machine.

    Uses ``python -m torch.distributed.run --standalone`` (torchrun), which picks a free
    rendezvous port and sets every rank's environment.
    """
    if nproc < 1:
        raise ConfigError(f"--nproc {nproc} must be at least 1", fix="e.g. --nproc 2 (one process per GPU)")
    return [python or sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "vstk", *module_args]


def launch(nproc: int, module_args: Sequence[str]) -> int:
    """Run ``vstk MODULE_ARGS`` under torchrun with ``nproc`` processes; return its exit status."""
    command = torchrun_command(nproc, module_args)
    log.info("launching %d processes: %s", nproc, " ".join(command))
    # Each rank gets its share of the CPU threads unless the user chose a number.
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, usable_cores() // nproc)))
    return subprocess.run(command, env=env, check=False).returncode
