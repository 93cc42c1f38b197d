"""Speed of nnU-Net training on a CPU in float32 and in bfloat16 (``cpu_precision``).

    python benchmarks/nnunet_precision_speed.py OUT/segmenter [--iterations 20] [--rounds 3]
        [--threads N] [--set key=value ...]

Uses the round-0 dataset that ``vstk run --out OUT`` preprocessed (the pool's views in ear
boxes) and vstk's nnU-Net trainer with the cpu profile's settings (``--set`` overrides them,
as in ``vstk run``). Each round trains a fresh network for ``--iterations`` steps in float32,
then in bfloat16 (autocast, channels-last), each with its own seeded data loader and nnU-Net's
full training augmentation, and times every step from batch loading to optimiser step. Prints
the median seconds per iteration of each precision and the median of the per-round ratios;
the first two steps of each run are not counted (one-off allocations). Nothing is written to
OUT: the trainers write into a temporary folder.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from vstk.plugins import load_plugins


def trainer_for(workdir: Path, scratch: Path, config, bf16: bool):
    from vstk_nnunet.environment import nnunet_environment, nnunet_prints_to_log, resolve_device
    from vstk_nnunet.layout import FOLD, read_json
    from vstk_nnunet.planning import network_configuration
    from vstk_nnunet.trainer import TrainerSettings, nnUNetTrainerVstk

    preprocessed = next((workdir / "nnUNet_preprocessed").glob("Dataset*_round0"))
    plans = read_json(preprocessed / "nnUNetPlans.json")
    plans["continue_training"] = False  # nnU-Net 2.8's trainer pops this key
    name, _ = network_configuration(plans, config)
    (scratch / "nnUNet_preprocessed").mkdir(parents=True, exist_ok=True)
    link = scratch / "nnUNet_preprocessed" / preprocessed.name
    if not link.exists():
        link.symlink_to(preprocessed)
    with nnunet_environment(scratch, n_proc=1, n_proc_da=0), nnunet_prints_to_log():
        trainer = nnUNetTrainerVstk(plans, name, FOLD, read_json(preprocessed / "dataset.json"),
                                    resolve_device(config))
        trainer.apply_settings(TrainerSettings(1, 1, 1, 1, config.initial_lr, config.oversample_foreground,
                                               config.structure_intensity, cpu_bf16=bf16))
        trainer.on_train_start()  # initialise, data loaders
    return trainer


def seconds_per_step(trainer, iterations: int) -> list[float]:
    times = []
    trainer.network.train()
    for _ in range(iterations):
        start = time.perf_counter()
        trainer.train_step(next(trainer.dataloader_train))
        times.append(time.perf_counter() - start)
    return times[2:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir", type=Path, help="a vstk run's segmenter folder (OUT/segmenter)")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_plugins().get("segmenter", "nnunet").profile("cpu", **dict(s.split("=", 1) for s in args.settings))
    from vstk.resources import cpu_has_bf16_matrix_units

    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, bfloat16 matrix units (AMX): {cpu_has_bf16_matrix_units()}")
    medians: dict[str, list[float]] = {"fp32": [], "bf16": []}
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(args.rounds):
            for precision in ("fp32", "bf16"):
                torch.manual_seed(round_index)
                trainer = trainer_for(args.workdir, Path(scratch) / f"{precision}{round_index}", config,
                                      precision == "bf16")
                medians[precision].append(statistics.median(seconds_per_step(trainer, args.iterations)))
                del trainer
            print(f"round {round_index + 1}: fp32 {medians['fp32'][-1]:.3f} s/iteration, "
                  f"bf16 {medians['bf16'][-1]:.3f} s/iteration", flush=True)
    ratios = [a / b for a, b in zip(medians["fp32"], medians["bf16"])]
    print(f"median over {args.rounds} rounds x {args.iterations - 2} iterations: fp32 "
          f"{statistics.median(medians['fp32']):.3f} s/iteration, bf16 {statistics.median(medians['bf16']):.3f}; "
          f"fp32 / bf16 ratio {statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f})")


if __name__ == "__main__":
    main()
