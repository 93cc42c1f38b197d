"""Cost of the structure intensity augmentation inside nnU-Net's training augmentation.

    python benchmarks/structure_intensity_speed.py [--patch 96x112] [--samples 400] [--rounds 5]

Times nnU-Net's own training transforms (spatial, noise, blur, brightness, contrast, low
resolution, gamma, mirroring) per sample, stock and with ``structure_intensity=1`` inserted,
alternating the two in each round on the same samples, and prints the medians and their
ratio. The samples are patch-sized z-scored images with a VS-sized and a cochlea-sized
structure, as the cpu profile's 2D patches are (96 x 112 on the phantom's ear boxes).
One torch thread, as a data-augmentation worker has.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from vstk_nnunet.augmentation import with_structure_intensity


def samples(patch: tuple[int, int], count: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    yy, xx = np.indices(patch)
    for _ in range(count):
        image = rng.normal(0.0, 1.0, patch).astype(np.float32)
        seg = np.zeros(patch, np.int16)
        cy, cx = rng.integers(20, patch[0] - 20), rng.integers(20, patch[1] - 20)
        seg[(yy - cy) ** 2 + (xx - cx) ** 2 <= rng.integers(36, 225)] = 1
        y, x = rng.integers(5, patch[0] - 12), rng.integers(5, patch[1] - 12)
        seg[y:y + 6, x:x + 6] = np.where(seg[y:y + 6, x:x + 6] == 0, 2, seg[y:y + 6, x:x + 6])
        out.append({"image": torch.from_numpy(image)[None], "segmentation": torch.from_numpy(seg)[None]})
    return out


def time_per_sample(transforms, batch: list[dict]) -> float:
    np.random.seed(0)
    started = time.perf_counter()
    for sample in batch:
        transforms(**{k: v.clone() for k, v in sample.items()})
    return (time.perf_counter() - started) / len(batch) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch", default="96x112")
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    patch = tuple(int(v) for v in args.patch.split("x"))

    def pipeline(probability: float):
        stock = nnUNetTrainer.get_training_transforms(patch, (-np.pi, np.pi), None, (0, 1), False,
                                                      foreground_labels=(1, 2))
        return with_structure_intensity(stock, (1, 2), probability)

    stock, augmented = pipeline(0.0), pipeline(1.0)
    batch = samples(patch, args.samples)
    times: dict[str, list[float]] = {"stock": [], "structure_intensity=1": []}
    for _ in range(args.rounds):
        times["stock"].append(time_per_sample(stock, batch))
        times["structure_intensity=1"].append(time_per_sample(augmented, batch))
    for name, values in times.items():
        print(f"{name:24s} median {statistics.median(values):.3f} ms/sample "
              f"(min {min(values):.3f}, max {max(values):.3f}, {args.rounds} rounds x {args.samples} samples)")
    ratios = [a / b for a, b in zip(times["structure_intensity=1"], times["stock"])]
    print(f"ratio augmented / stock: median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, "
          f"max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
