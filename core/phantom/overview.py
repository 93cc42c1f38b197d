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
    rows = len(paired) * 2
    fig = Figure(figsize=(17, 3.5 * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 5, squeeze=False, gridspec_kw={"width_ratios": [1, 1, 1, 0.8, 0.8]})
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
                 f"axial, radiological view (patient left on image right, anterior up)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    # The suffix names the format for savefig.
    return atomic_write(png_path, lambda tmp: fig.savefig(tmp, dpi=90), suffix=".png")
