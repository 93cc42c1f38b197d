"""Seconds per training step of vstk's translators, and of the official implementations.

    python benchmarks/translator_speed.py --profile cpu --steps 8 \
        [--official-cut PATH/contrastive-unpaired-translation] \
        [--official-qsattn PATH/query-selected-attention] [--rounds 2] [--json out.json] \
        [--device cuda]

Each measurement runs in its own process (2 torch threads, grayscale, batch 1, the
profile's slice size and network widths), timing ``--steps`` steps after 2 warm-up steps;
ours and official alternate (A B A B ...) so drift of the shared machine hits both alike.
The official code is not part of vstk: point the options at your own checkouts
(CycleGAN's step is taken from the CUT repository's ``cycle_gan_model.py``). Official runs
are timed as shipped (no denormal flushing) and with ``torch.set_flush_denormal(True)``.
With ``--device cuda`` steps are timed in blocks of 5 between ``torch.cuda.synchronize()``
calls, and the official code runs with ``--gpu_ids 0`` (denormal flushing does not apply).
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


def _batch(size: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 1, size // 8, size // 8, generator=g)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x * 2 - 1).clamp(-1, 1)


def _time_steps(step, steps: int, device: str = "cpu") -> list[float]:
    """Seconds per step. On CUDA the GPU runs asynchronously, so steps are timed in blocks of
    5 between two ``torch.cuda.synchronize()`` calls (a sync after every step would add the
    host's launch time to the GPU's instead of overlapping them, as training does)."""
    import torch

    cuda = device.startswith("cuda")
    for _ in range(3 if cuda else 2):
        step()
    if not cuda:
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        return times
    block = 5
    times = []
    for _ in range(max(1, steps // block)):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(block):
            step()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / block)
    return times


def worker_ours(translator: str, profile: str, steps: int, device: str) -> list[float]:
    import torch

    from vstk.plugins import load_plugins
    from vstk.translation.trainer import configure_cpu

    torch.set_num_threads(2)
    if device == "cpu":
        configure_cpu()
    cls = load_plugins().get("translator", translator)
    config = cls.profile(profile)
    model = cls(config, device=device).build_model()
    a, b = _batch(config.size, 0).to(device), _batch(config.size, 1).to(device)
    model.setup(a, b, config.schedule(1))
    return _time_steps(lambda: model.train_step(a, b), steps, device)


def _official_args(translator: str, profile: str, device: str) -> list[str]:
    from vstk.plugins import load_plugins

    config = load_plugins().get("translator", translator).profile(profile)
    gpu_ids = "0" if device.startswith("cuda") else "-1"
    args = ["--dataroot", "unused", "--name", "bench", "--gpu_ids", gpu_ids, "--input_nc", "1", "--output_nc", "1",
            "--ngf", str(config.ngf), "--ndf", str(config.ndf), "--netG", f"resnet_{config.n_blocks}blocks",
            "--crop_size", str(config.size), "--load_size", str(config.size), "--batch_size", "1",
            "--checkpoints_dir", tempfile.mkdtemp(prefix="official_bench_")]
    if translator == "cyclegan":
        args += ["--model", "cycle_gan", "--lambda_identity", str(config.lambda_identity),
                 "--pool_size", str(config.pool_size), "--init_type", config.init_type]
    else:
        args += ["--model", "qs", "--QS_mode", config.qs_mode, "--num_patches", str(config.num_patches),
                 "--netF_nc", str(config.netf_nc)]
    return args


def worker_official(translator: str, profile: str, steps: int, root: str, flush: bool, device: str) -> list[float]:
    import torch

    torch.set_num_threads(2)
    if flush:
        torch.set_flush_denormal(True)
    if not torch.cuda.is_available():
        # The official QS-Attn PatchSampleF calls mlp.cuda() unconditionally: keep it on the CPU.
        torch.nn.Module.cuda = lambda self, device=None: self
    args = _official_args(translator, profile, device)
    sys.path.insert(0, root)
    os.chdir(root)
    from models import create_model  # noqa: E402  (the official package)
    from options.train_options import TrainOptions  # noqa: E402

    sys.argv = [sys.argv[0], *args]
    with open(os.devnull, "w") as quiet:
        stdout, sys.stdout = sys.stdout, quiet
        try:
            opt = TrainOptions().parse()
            if not hasattr(opt, "amp"):  # CUT's cycle_gan_model reads an option its parser lacks
                opt.amp = False
            model = create_model(opt)
        finally:
            sys.stdout = stdout
    data = {"A": _batch(opt.crop_size, 0), "B": _batch(opt.crop_size, 1), "A_paths": ["a"], "B_paths": ["b"]}
    model.set_input(data)
    if translator == "qsattn" and device.startswith("cuda"):
        model.data_dependent_initialize()
    elif translator == "qsattn":
        # The official data_dependent_initialize divides by len(gpu_ids), 0 on CPU: do its steps here.
        model.forward()
        model.backward_D()
        model.backward_G()
        model.optimizer_F = torch.optim.Adam(model.netF.parameters(), lr=opt.lr, betas=(opt.beta1, opt.beta2))
        model.optimizers.append(model.optimizer_F)
    with open(os.devnull, "w") as quiet:
        stdout, sys.stdout = sys.stdout, quiet
        try:
            model.setup(opt)
        finally:
            sys.stdout = stdout

    def step():
        model.set_input(data)
        model.optimize_parameters()

    return _time_steps(step, steps, device)


def run_worker(kind: str, translator: str, profile: str, steps: int, root: str | None, device: str) -> float:
    cmd = [sys.executable, __file__, "--worker", kind, "--translator", translator, "--profile", profile,
           "--steps", str(steps), "--device", device] + (["--root", root] if root else [])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} {translator} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["median_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu", choices=["cpu", "paper"])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--translators", default="cyclegan,qsattn")
    parser.add_argument("--official-cut", default=None, help="checkout of the official CUT repository")
    parser.add_argument("--official-qsattn", default=None, help="checkout of the official QS-Attn repository")
    parser.add_argument("--json", default=None)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the official code then runs on GPU 0)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--translator", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--root", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        if args.worker == "ours":
            times = worker_ours(args.translator, args.profile, args.steps, args.device)
        else:
            times = worker_official(args.translator, args.profile, args.steps, args.root,
                                    flush=args.worker == "official+flush", device=args.device)
        print(json.dumps({"median_s": statistics.median(times), "times": times}))
        return

    roots = {name: os.path.abspath(root) for name, root in
             (("cyclegan", args.official_cut), ("qsattn", args.official_qsattn)) if root}
    rows = []
    for translator in args.translators.split(","):
        official = ["official"] if args.device.startswith("cuda") else ["official", "official+flush"]
        kinds = ["ours"] + (official if roots.get(translator) else [])
        samples: dict[str, list[float]] = {k: [] for k in kinds}
        for _ in range(args.rounds):
            for kind in kinds:
                samples[kind].append(run_worker(kind, translator, args.profile, args.steps, roots.get(translator),
                                                args.device))
        row = {"translator": translator, "profile": args.profile, "device": args.device}
        for kind in kinds:
            row[f"{kind}_s_per_step"] = statistics.median(samples[kind])
        for kind in kinds[1:]:
            row[f"ours/{kind}"] = row["ours_s_per_step"] / row[f"{kind}_s_per_step"]
        rows.append(row)
        print(f"measured: {json.dumps(row)}", flush=True)  # kept even if a time cap stops the rest
    columns = list(dict.fromkeys(k for row in rows for k in row))
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(f"{row.get(c, ''):.3f}" if isinstance(row.get(c), float) else str(row.get(c, ""))
                                for c in columns) + " |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
