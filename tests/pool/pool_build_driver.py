"""Subprocess driver for the SIGKILL resume test: builds the standard test pool.

    python pool_build_driver.py POOL.h5 [--kill-at-step N] [--kill-in-cleanup]

Prints ``ready`` once imports are done (the parent starts its kill timer then), ``done``
at the end. ``--kill-at-step N`` SIGKILLs itself after the N-th step (entry staged or
finalize step); ``--kill-in-cleanup`` after the pool was renamed into place, while the
staging folder is being removed.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import pool_helpers  # noqa: E402
import vstk.pool.builder as builder_module  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("pool", type=Path)
    parser.add_argument("--kill-at-step", type=int, default=None)
    parser.add_argument("--kill-in-cleanup", action="store_true")
    parser.add_argument("--shape", default="12,96,96")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    steps = []

    def step(name: str) -> None:
        steps.append(name)
        if args.kill_at_step is not None and len(steps) == args.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)

    if args.kill_in_cleanup:
        def killing_rmtree(*a, **k):
            os.kill(os.getpid(), signal.SIGKILL)
        builder_module.shutil.rmtree = killing_rmtree  # type: ignore[assignment]
    print("ready", flush=True)
    pool_helpers.build_pool(args.pool, shape=shape, step=step)
    print(f"done {len(steps)}", flush=True)


if __name__ == "__main__":
    main()
