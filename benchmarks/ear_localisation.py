"""How well vstk.ears finds the inner ears, on crossmoda-geometry phantoms of several seeds.

    python benchmarks/ear_localisation.py --seeds 11,12,13 [--cases 4] [--scale 1.0] [--vary] [--work DIR]

For each seed a phantom is generated (``--geometry crossmoda`` with truth labels on every
image: whole-head ceT1 of both sites, hrT2 slabs, oblique grids, shifted and turned heads;
``--vary``: tissue contrasts, tumour and cochlea sizes drawn per seed as well).
The reference is built from the labelled ceT1 whose case id sorts first, as ``vstk run --ears
found`` does; then every other image (training ceT1 and hrT2, test hrT2, the paired cases in
both contrasts) is located without its label. Reported per seed and contrast: the distance
of each found cochlea centre from the centroid of that cochlea in the image's own truth
label (median, worst), the share of labelled voxels inside the ear region the run would
crop and inside the ear boxes within it, and seconds per image. An image in which no ear is
found counts as a failure (printed with its error) and is left out of the error columns. The
last line is the CPU flags that matter for timing (AMX or not).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from vstk.ears import build_reference, cochlea_centres, ear_region, locate
from vstk.errors import InputError
from vstk.phantom import PhantomConfig, generate_phantom
from vstk.roi import Box, EarRule, crop, ear_boxes, grid_key, labels_outside
from vstk.volume import read_nifti


def inside_share(label, boxes) -> float:
    total = int((label.array > 0).sum())
    outside = sum(o.voxels for o in labels_outside(label, boxes))
    return 1.0 if total == 0 else 1.0 - outside / total


def measure(root: Path) -> list[dict]:
    cases = json.loads((root / "phantom.json").read_text())["cases"]
    first = min((c for c in cases if c["split"] == "train_ceT1"), key=lambda c: c["stem"])
    reference = build_reference(read_nifti(root / first["files"]["ceT1"]), read_nifti(root / first["files"]["Label"]))
    rows = []
    for case in cases:
        for contrast in ("ceT1", "hrT2"):
            if contrast not in case["files"] or case is first:
                continue
            image = read_nifti(root / case["files"][contrast])
            label = read_nifti(root / case["files"]["Label"])
            started = time.perf_counter()
            try:
                ears = locate(image, reference)
            except InputError as error:
                print(f"not found: {case['stem']} {contrast}: {error}", flush=True)
                rows.append({"case": case["stem"], "split": case["split"], "contrast": contrast, "failed": True})
                continue
            seconds = time.perf_counter() - started
            truth = cochlea_centres(label)
            errors = [float(np.linalg.norm(np.asarray(p) - t)) for p, t in zip(ears.cochleae, truth)]
            start, size = ear_region(image, ears)
            region = Box(start, size)
            cropped = crop(label, region)
            rule = EarRule(found={grid_key(cropped): ears.box_centres})  # the boxes the run uses: at the ears found
            rows.append({"case": case["stem"], "split": case["split"], "contrast": contrast, "errors_mm": errors,
                         "in_region": inside_share(label, [region]),
                         "in_boxes": inside_share(cropped, ear_boxes(cropped, rule)),
                         "seconds": seconds})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="11,12,13")
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--vary", action="store_true", help="phantoms with --vary (contrasts, sizes per seed)")
    parser.add_argument("--work", type=Path, default=Path("ear_localisation"))
    args = parser.parse_args()
    print("| seed | contrast | images | cochlea error median (mm) | worst (mm) | labels in region | "
          "labels in boxes | s per image |")
    print("|---|---|---|---|---|---|---|---|")
    everything = []
    for seed in (int(s) for s in args.seeds.split(",")):
        root = args.work / f"seed{seed}"
        if not (root / "phantom.json").is_file():
            generate_phantom(root, PhantomConfig(cases=args.cases, seed=seed, resolution_scale=args.scale,
                                                 geometry="crossmoda", target_labels=True, vary=args.vary),
                             workers=2)
        rows = measure(root)
        everything += rows
        for contrast in ("ceT1", "hrT2"):
            part = [r for r in rows if r["contrast"] == contrast and not r.get("failed")]
            failed = sum(1 for r in rows if r["contrast"] == contrast and r.get("failed"))
            if not part:
                print(f"| {seed} | {contrast} | {failed} not found | - | - | - | - | - |")
                continue
            errors = np.ravel([r["errors_mm"] for r in part])
            print(f"| {seed} | {contrast} | {len(part)}{f' ({failed} not found)' if failed else ''} | "
                  f"{np.median(errors):.2f} | {errors.max():.2f} | "
                  f"{min(r['in_region'] for r in part):.1%} (min) | {min(r['in_boxes'] for r in part):.1%} (min) | "
                  f"{np.median([r['seconds'] for r in part]):.1f} |")
    found = [r for r in everything if not r.get("failed")]
    errors = np.ravel([r["errors_mm"] for r in found])
    print(f"\nall: {len(everything)} images, {len(everything) - len(found)} not found; {errors.size} cochleae: "
          f"median {np.median(errors):.2f} mm, worst {errors.max():.2f} mm")
    for row in sorted(found, key=lambda r: -max(r["errors_mm"]))[:3]:
        print(f"largest: {row['case']} {row['contrast']} {max(row['errors_mm']):.2f} mm")
    flags = Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0] if Path("/proc/cpuinfo").exists() else ""
    shown = sorted({f for f in flags.split() if f.startswith(("amx", "avx512_bf16"))})
    print("CPU flags:", " ".join(shown) + ("" if any(f.startswith("amx") for f in shown) else " (no AMX)"))


if __name__ == "__main__":
    main()
