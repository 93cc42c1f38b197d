"""Peak memory of translating one 512 x 512 x 120 ceT1 volume (CrossMoDA's largest grids).

    python benchmarks/translate_memory.py [--profile cpu|paper] [--translator cyclegan] [--batch 8]

Each measurement runs in a fresh process and reports its peak resident memory (ru_maxrss)
after loading torch and building the translator (baseline) and after translating; the
volume itself is 512*512*120 float32 = 126 MB in and 126 MB out. Weights are freshly
initialised: memory does not depend on training.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def worker(translator: str, profile: str, batch: int) -> dict:
    import numpy as np
    import torch

    from vstk.plugins import load_plugins
    from vstk.volume import Volume

    cls = load_plugins().get("translator", translator)
    config = cls.profile(profile, translate_batch=batch)
    model = cls(config, device="cpu")
    model.generator = model.build_generator().eval()
    rng = np.random.default_rng(0)
    y, x = np.meshgrid(np.linspace(-1, 1, 512), np.linspace(-1, 1, 512), indexing="ij")
    head = (400 * np.exp(-(x**2 + y**2) * 2)).astype(np.float32)
    array = np.empty((120, 512, 512), dtype=np.float32)
    for k in range(120):  # slice by slice: no volume-sized temporaries inflate the baseline
        array[k] = np.clip(head + rng.normal(0, 5, head.shape).astype(np.float32), 0, None)
    volume = Volume(array, (0.41, 0.41, 1.5))
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    out = model.translate_volume(volume)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert out.shape == volume.shape
    return {"translator": translator, "profile": profile, "batch": batch, "threads": torch.get_num_threads(),
            "baseline_MB": round(baseline), "peak_MB": round(peak), "translate_s": round(seconds, 1),
            "volume_MB": round(array.nbytes / 2**20)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--translator", default="cyclegan")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.translator, args.profile, args.batch)))
        return
    rows = []
    for batch in (1, args.batch):
        cmd = [sys.executable, __file__, "--worker", "--translator", args.translator, "--profile", args.profile,
               "--batch", str(batch)]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        if result.returncode:
            raise SystemExit(result.stderr[-2000:])
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
