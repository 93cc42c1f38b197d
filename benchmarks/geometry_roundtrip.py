"""Round-trip errors of the slice geometry on phantom volumes.

    python benchmarks/geometry_roundtrip.py PHANTOM_DIR

For every labelled ceT1 (and its label) of ``PHANTOM_DIR/train``: volume -> N x N axial
slices -> back onto the source grid, with the ``paper`` slice geometry (0.41 mm, 384 px
crop resized to 256: 0.615 mm pixels) and an exact-resolution one (0.41 mm, 320 px, no
resize). Labels: Dice per structure and the fraction of voxels changed; images: mean and
95th percentile absolute error inside the head and in the slice field of view, in % of the
robust intensity range (p0.5..p99.5).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from vstk.crossmoda import discover, load_case
from vstk.evaluation.metrics import dice
from vstk.geometry import SliceGeometry, slice_frame, to_slices, volume_from_slices
from vstk.translation.data import head_centre, head_mask, robust_normalisation

GEOMETRIES = {
    "paper 256 px (384 px crop at 0.41 mm)": SliceGeometry(256, (0.41, 0.41), 384),
    "320 px at 0.41 mm (no resize)": SliceGeometry(320, (0.41, 0.41), None),
}


def main(root: Path) -> None:
    folder = discover(root / "train")
    print("| geometry | label Dice VS | label Dice cochlea | label voxels changed | image MAE % | image p95 % |")
    print("|---|---|---|---|---|---|")
    for name, geometry in GEOMETRIES.items():
        dices_vs, dices_co, changed, mae, p95 = [], [], [], [], []
        for case in folder.source:
            image, label = load_case(case, "ceT1")
            frame = slice_frame(image, geometry, head_centre(image))
            back_label = volume_from_slices(to_slices(label, frame, is_label=True), frame, is_label=True).array
            dices_vs.append(dice(back_label == 1, label.array == 1))
            dices_co.append(dice(back_label == 2, label.array == 2))
            changed.append(float(np.mean(back_label != label.array)))
            back = volume_from_slices(to_slices(image, frame, fill=np.nan), frame, fill=np.nan).array
            norm = robust_normalisation(image)
            inside = head_mask(image.array) & np.isfinite(back)
            error = np.abs(back[inside] - image.array[inside]) / (norm.high - norm.low) * 100
            mae.append(float(error.mean()))
            p95.append(float(np.percentile(error, 95)))
        print(f"| {name} | {np.mean(dices_vs):.4f} (min {np.min(dices_vs):.4f}) | {np.mean(dices_co):.4f} "
              f"(min {np.min(dices_co):.4f}) | {np.mean(changed) * 100:.4f} % | {np.mean(mae):.2f} | {np.mean(p95):.2f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
