"""Training throughput of vstk's translators in samples per second, against the machine's peak.

    python benchmarks/translator_throughput.py [--translators cyclegan,qsattn] [--profile cpu]
        [--batches 1,2,4,8] [--threads 1] [--variants plain,channels_last,bf16] [--seconds 20]
        [--rounds 2] [--set key=value ...] [--json out.json]

A translator learns per image it sees, not per step, so the unit here is a sample (one
ceT1 slice and one hrT2 slice) per second. Every (translator, batch, variant) runs in its own
process with ``--threads`` torch threads, takes 2 warm-up steps and then as many steps as fit
in ``--seconds``; the rounds alternate over all configurations (A B C A B C ...) so drift of a
shared machine hits them alike, and the table shows the median of the rounds. Variant
``channels_last`` stores networks and batches channels-last; ``bf16`` runs each step under
CPU bfloat16 autocast, as ``cpu_precision=bf16`` trains (fast only on a CPU with AMX).

FLOPs of one training step are counted by ``torch.utils.flop_counter.FlopCounterMode`` (the
convolutions and matrix products of forward and backward passes), and the machine's peak is
the float32 rate of a 2048 x 2048 matrix product on the same threads, measured in each
worker process: ``% of peak`` = step FLOPs x steps per second / peak.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time


def _batch(size: int, batch: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 1, size // 8, size // 8, generator=g)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x * 2 - 1).clamp(-1, 1)


def matmul_peak_gflops(seconds: float = 2.0) -> float:
    """float32 GFLOP/s of a 2048 x 2048 matrix product on the current torch threads."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        n += 1
    return 2 * 2048 ** 3 * n / (time.perf_counter() - start) / 1e9


def worker(translator: str, profile: str, batch: int, variant: str, threads: int, seconds: float,
           overrides: list[str]) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from vstk.config import apply_overrides
    from vstk.plugins import load_plugins
    from vstk.translation.trainer import configure_cpu

    torch.set_num_threads(threads)
    configure_cpu()
    cls = load_plugins().get("translator", translator)
    pairs = dict(o.split("=", 1) for o in overrides)
    config = apply_overrides(cls.profile(profile), {**pairs, "batch_size": str(batch)})
    model = cls(config, device="cpu").build_model()
    a, b = _batch(config.size, batch, 0), _batch(config.size, batch, 1)
    if variant == "channels_last":
        for net in model.networks().values():
            net.to(memory_format=torch.channels_last)
        a, b = a.contiguous(memory_format=torch.channels_last), b.contiguous(memory_format=torch.channels_last)
    model.setup(a, b, config.schedule(1))
    # bf16: the whole step (forward and backward) under CPU autocast to bfloat16, as AMX runs it
    precision = (torch.autocast("cpu", dtype=torch.bfloat16) if variant == "bf16" else contextlib.nullcontext())
    with precision:
        model.train_step(a, b)
        with FlopCounterMode(display=False) as counter:
            model.train_step(a, b)
        flops = counter.get_total_flops()
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or steps < 3:
            model.train_step(a, b)
            steps += 1
    s_per_step = (time.perf_counter() - start) / steps
    peak = matmul_peak_gflops()
    return {"s_per_step": s_per_step, "samples_per_s": batch / s_per_step, "step_gflop": flops / 1e9,
            "gflops": flops / s_per_step / 1e9, "peak_gflops": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--translators", default="cyclegan,qsattn")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--variants", default="plain")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--json", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        translator, batch, variant = args.worker.split(":")
        print(json.dumps(worker(translator, args.profile, int(batch), variant, args.threads, args.seconds,
                                args.overrides)))
        return

    configs = [(t, int(b), v) for t in args.translators.split(",") for b in args.batches.split(",")
               for v in args.variants.split(",")]
    results: dict[tuple, list[dict]] = {c: [] for c in configs}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for _ in range(args.rounds):
        for c in configs:
            cmd = [sys.executable, __file__, "--worker", ":".join(map(str, c)), "--profile", args.profile,
                   "--threads", str(args.threads), "--seconds", str(args.seconds)]
            cmd += [x for o in args.overrides for x in ("--set", o)]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
            if out.returncode:
                raise SystemExit(f"{c} failed:\n{out.stderr[-3000:]}")
            results[c].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"profile {args.profile}, {args.threads} thread(s), median of {args.rounds} rounds\n")
    print("| translator | batch | variant | s/step | samples/s | GFLOP/step | GFLOP/s | matmul peak GFLOP/s | % of peak |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for c in configs:
        med = {k: statistics.median(r[k] for r in results[c]) for k in results[c][0]}
        rows.append({"translator": c[0], "batch": c[1], "variant": c[2], **med})
        print(f"| {c[0]} | {c[1]} | {c[2]} | {med['s_per_step']:.3f} | {med['samples_per_s']:.2f} | "
              f"{med['step_gflop']:.2f} | {med['gflops']:.1f} | {med['peak_gflops']:.1f} | "
              f"{100 * med['gflops'] / med['peak_gflops']:.0f}% |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
