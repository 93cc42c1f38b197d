"""The overview figure of a phantom folder: paired ceT1 and hrT2 slices with their labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..errors import InputError
from ..labels import COCHLEA, VS
from ..volume import read_nifti
from .dataset import load_manifest


def save_overview_png(out_dir: str | Path, png_path: str | Path, max_cases: int = 3) -> Path:
    """Draw paired cases as a PNG: for each, an axial slice through the VS and one through a cochlea,
    as ceT1 | hrT2 | label over hrT2 | ceT1 zoom | hrT2 zoom (36 mm around the VS, 20 mm around
    the cochlea), for up to ``max_cases`` cases.

    Returns the path written.
    """
    # An Agg canvas of its own: no pyplot, so the caller's matplotlib backend is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    out = Path(out_dir)
    manifest = load_manifest(out)
    paired = [r for r in manifest["cases"] if r["split"] == "paired"][:max_cases]
    if not paired:
        raise InputError("the phantom has no paired cases to draw", path=out, fix="generate with paired_cases >= 2")
    overlay = ListedColormap([(0, 0, 0, 0), (1.0, 0.25, 0.1, 0.55), (0.1, 0.9, 1.0, 0.7)])
    whole = ([r for r in manifest["cases"] if r["split"] in ("train_ceT1", "train_hrT2", "test")][:5]
             if manifest["config"].get("geometry") == "crossmoda" else [])
    rows = len(paired) * 2 + (2 if whole else 0)
    fig = Figure(figsize=(17, 3.5 * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 5, squeeze=False, gridspec_kw={"width_ratios": [1, 1, 1, 0.8, 0.8]})
    if whole:
        _whole_volumes(out, whole, axes[-2:])
    for n, record in enumerate(paired):
        ce = read_nifti(out / record["files"]["ceT1"])
        t2 = read_nifti(out / record["files"]["hrT2"])
        lab = read_nifti(out / record["files"]["Label"])
        limits = {k: np.percentile(v.array, [0.5, 99.7]) for k, v in (("ce", ce), ("t2", t2))}
        side = record["vs"]["side"]
        for row, (what, value) in enumerate(((f"VS ({side}, {record['vs']['kind']}, "
                                              f"{record['vs']['volume_mm3'] / 1000:.2f} ml)", VS),
                                             ("cochlea", COCHLEA))):
            ax_row = axes[2 * n + row]
            mask = lab.array == value
            if value == COCHLEA:  # the cochlea on the tumour side, else the left one
                x_mid = lab.physical_to_index(record["landmarks_mm"]["brainstem"])[2]
                xs = np.arange(mask.shape[2])[None, None, :]
                mask = mask & ((xs > x_mid) if side == "left" else (xs < x_mid))
            zyx = np.argwhere(mask)
            k = int(np.bincount(zyx[:, 0]).argmax()) if len(zyx) else mask.shape[0] // 2
            cy, cx = (zyx[zyx[:, 0] == k][:, 1:].mean(axis=0) if len(zyx) else np.asarray(mask.shape[1:]) / 2)
            half = int(round((18.0 if value == VS else 10.0) / ce.spacing[0]))  # zoom: 36 or 20 mm wide
            y0, x0 = int(max(0, cy - half)), int(max(0, cx - half))
            crop = (slice(y0, y0 + 2 * half), slice(x0, x0 + 2 * half))
            panels = [(ce.array[k], "ce", f"ceT1  {record['stem']}  z={k}"),
                      (t2.array[k], "t2", f"hrT2 (paired, same grid)  z={k}"),
                      (t2.array[k], "t2", f"label on hrT2: VS red, cochlea cyan ({what.split()[0]} slice)"),
                      (ce.array[k][crop], "ce", f"ceT1 zoom: {what}"),
                      (t2.array[k][crop], "t2", f"hrT2 zoom: {what}")]
            for col, (image, key, title) in enumerate(panels):
                ax = ax_row[col]
                ax.imshow(image, cmap="gray", vmin=limits[key][0], vmax=limits[key][1], interpolation="nearest")
                if col == 2:
                    ax.imshow(lab.array[k], cmap=overlay, vmin=0, vmax=2, interpolation="nearest")
                if col >= 3:
                    ax.contour(lab.array[k][crop] == value, levels=[0.5], colors=["orange" if value == VS else "cyan"],
                               linewidths=0.8)
                ax.set_title(title, fontsize=9)
                ax.set_axis_off()
    fig.suptitle(f"vstk phantom (seed {manifest['seed']}): the same anatomy as ceT1 and hrT2 on one grid (paired set); "
                 f"axial, radiological view (patient left on image right, anterior up)"
                 + ("; last two rows: whole volumes as acquired, cochleae marked (+)" if whole else ""), fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    # The suffix names the format for savefig.
    return atomic_write(png_path, lambda tmp: fig.savefig(tmp, dpi=90), suffix=".png")


def _whole_volumes(out: Path, records: list[dict], axes) -> None:
    """Whole acquired volumes, one per column: an axial slice through the cochleae (top) and
    a coronal one (bottom), both cochleae marked, so the field of view and the head's place
    in it show."""
    for column, record in enumerate(records):
        contrast = "ceT1" if "ceT1" in record["files"] else "hrT2"
        volume = read_nifti(out / record["files"][contrast])
        marks = [volume.physical_to_index(record["landmarks_mm"][f"cochlea_{side}"]) for side in ("left", "right")]
        z, y = (int(np.clip(round(np.mean([m[i] for m in marks])), 0, volume.shape[i] - 1)) for i in (0, 1))
        low, high = np.percentile(volume.array, [0.5, 99.7])
        for row, (image, points, aspect) in enumerate((
                (volume.array[z], [(m[2], m[1]) for m in marks], volume.spacing[1] / volume.spacing[0]),
                (volume.array[:, y][::-1], [(m[2], volume.shape[0] - 1 - m[0]) for m in marks],
                 volume.spacing[2] / volume.spacing[0]))):
            ax = axes[row][column]
            ax.imshow(image, cmap="gray", vmin=low, vmax=high, aspect=aspect, interpolation="nearest")
            ax.plot([p[0] for p in points], [p[1] for p in points], "+", color="orange", markersize=12, mew=2)
            size = "x".join(str(n) for n in volume.size_xyz)
            name = record["stem"].removeprefix("crossmoda2022_")
            ax.set_title(f"{name} {contrast} {'axial' if row == 0 else 'coronal'}, {size}", fontsize=9)
            ax.set_axis_off()
