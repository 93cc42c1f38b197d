"""Data-parallel translator training on CPU: step time of 1 process vs N gloo processes.

    python benchmarks/ddp_speed.py [--translators cyclegan,qsattn] [--profile cpu] [--nproc 2]
                                   [--steps 8] [--rounds 2] [--set key=value ...] [--json out.json]

For each translator (the profile's slice size and networks, batch 1 per process) the shared
training loop (``vstk.translation.trainer.train``) runs in fresh processes: once as one
process with all ``--nproc`` cores as torch threads, once as ``--nproc`` ranks under
torchrun (gloo, one thread each), alternating ``--rounds`` times so drift of a shared
machine hits both alike. Rank 0 times ``--steps`` steps after 2 warm-up steps (each from the
end of one step to the end of the next: sampling, forward/backward, gradient all-reduce,
loss averaging). Reports seconds per step, slices per second (both domains, all ranks) and
the ratios N-process / 1-process. Run it on a quiet machine: the ratios are what it is for.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(args: argparse.Namespace) -> None:
    """One process (or one rank): train ``--steps`` + 2 steps and write rank 0's step times."""
    import numpy as np
    import torch

    from vstk.config import parse_overrides
    from vstk.plugins import load_plugins
    from vstk.translation.data import SliceSet
    from vstk.translation.distributed import DistContext
    from vstk.translation.trainer import seed_everything, train

    context = DistContext.from_env(os.environ)
    cls = load_plugins().get("translator", args.translators)
    config = cls.profile(args.profile, **{**parse_overrides(tuple(args.set)), "checkpoint_every": 10**6,
                                          "sample_every": 0})
    translator = cls(config, device="cpu")
    rng = np.random.default_rng(0)
    size = config.size
    # Smooth random slices in [-1, 1]: content does not change the cost of a step.
    coarse = rng.uniform(-1, 1, (64, size // 8, size // 8)).astype(np.float32)
    slices = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)
    source = SliceSet(slices, np.zeros(len(slices), np.int32), ["a"])
    target = SliceSet(slices[::-1].copy(), np.zeros(len(slices), np.int32), ["b"])
    schedule = config.schedule(len(slices))
    seed_everything(schedule.seed)
    model = translator.build_model()
    ends: list[float] = []
    step = model.train_step

    def timed(real_a, real_b):
        losses = step(real_a, real_b)
        ends.append(time.perf_counter())
        return losses

    model.train_step = timed
    with tempfile.TemporaryDirectory() as tmp:
        train(model, source, target, tmp, schedule, device="cpu", meta=translator.metadata(),
              stop_after=args.steps + 3, distributed=context)
    if context.is_main:
        per_step = [b - a for a, b in zip(ends[2:], ends[3:])]  # after 2 warm-up steps
        Path(args.result).write_text(json.dumps({"seconds": per_step, "world_size": context.world_size,
                                                 "batch_size": config.batch_size, "size": size,
                                                 "threads": torch.get_num_threads()}))


def run_once(args: argparse.Namespace, translator: str, nproc: int) -> dict:
    cores = args.nproc
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        flags = ["--worker", "--translators", translator, "--profile", args.profile, "--steps", str(args.steps),
                 "--result", str(result), *[item for s in args.set for item in ("--set", s)]]
        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, cores // nproc)))
        if nproc == 1:
            command = [sys.executable, __file__, *flags]
        else:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                       __file__, *flags]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
        return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--translators", default="cyclegan,qsattn")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--nproc", type=int, default=2, help="Processes of the parallel run (= cores used).")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    rows, report = [], {}
    for translator in args.translators.split(","):
        times: dict[int, list[float]] = {1: [], args.nproc: []}
        info = {}
        for _ in range(args.rounds):
            for nproc in (1, args.nproc):
                info[nproc] = run_once(args, translator, nproc)
                times[nproc] += info[nproc]["seconds"]
        one, many = statistics.median(times[1]), statistics.median(times[args.nproc])
        batch = info[1]["batch_size"]
        thr_one, thr_many = 2 * batch / one, 2 * batch * args.nproc / many
        report[translator] = {"seconds_per_step": {1: one, args.nproc: many},
                              "slices_per_second": {1: thr_one, args.nproc: thr_many},
                              "step_time_ratio": many / one, "throughput_ratio": thr_many / thr_one,
                              "size": info[1]["size"]}
        rows.append(f"| {translator} | {info[1]['size']} | {one:.3f} ({info[1]['threads']} threads) | "
                    f"{many:.3f} ({args.nproc} x {info[args.nproc]['threads']} thread) | {many / one:.2f} | "
                    f"{thr_one:.2f} | {thr_many:.2f} | {thr_many / thr_one:.2f} |")
    print(f"profile {args.profile}, batch {batch} per process, median of {args.rounds} x {args.steps} steps\n")
    print(f"| translator | size | s/step 1 proc | s/step {args.nproc} proc | step ratio | slices/s 1 | "
          f"slices/s {args.nproc} | throughput ratio |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
