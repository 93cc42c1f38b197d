"""Does a translated view draw the VS and the cochlea as hrT2 shows them? Structure contrast.

The contrast of a labelled structure is the mean intensity inside it minus the mean of the
unlabelled voxels within ``ring_mm`` of it, divided by the image's robust intensity range
(the 0.5-99.5 percentiles of the head voxels, as the translators normalise). It is computed
the same way on the ceT1 the views come from, on every view of a pool (with the ceT1 labels)
and on labelled real hrT2, so a view that has taken on hrT2's contrast reads like the hrT2
column (cochlea: fluid bright against bone; VS: grey against bright fluid) and one that kept
ceT1's contrast reads like the ceT1 column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
from scipy import ndimage

from ..labels import COCHLEA, VS
from ..volume import Volume

STRUCTURES = {VS: "VS", COCHLEA: "cochlea"}

#: Column name of the labelled real hrT2 in :func:`pool_contrasts`.
REAL_HRT2 = "real hrT2"

#: How far around a structure its surroundings reach (mm).
RING_MM = 2.0


def intensity_range(image: Volume) -> float:
    """The robust intensity range contrasts are divided by (the translators' normalisation)."""
    from ..translation.data import robust_normalisation

    norm = robust_normalisation(image)
    return norm.high - norm.low


def structure_contrast(image: Volume, label: Volume, value: int, ring_mm: float = RING_MM,
                       scale: float | None = None) -> float | None:
    """Contrast of the voxels of ``label == value`` in ``image`` (one grid) against their ring
    (at least the in-plane neighbours where voxels are coarser than ``ring_mm``); None where the
    structure is absent or has no unlabelled voxel around it. ``scale``: the image's
    :func:`intensity_range`, when the caller has it already."""
    inside = label.array == value
    if not inside.any():
        return None
    # the structure's bounding box grown by the ring: a distance map of a whole-head volume
    # would cost seconds for a structure of a few thousand voxels
    ring_mm = max(ring_mm, *image.spacing[:2])
    zyx_spacing = tuple(reversed(image.spacing))
    pad = [int(np.ceil(ring_mm / s)) + 1 for s in zyx_spacing]
    box = tuple(slice(max(0, int(i.min()) - p), int(i.max()) + p + 1) for i, p in zip(np.nonzero(inside), pad))
    distance = ndimage.distance_transform_edt(~inside[box], sampling=zyx_spacing)
    ring = (distance <= ring_mm) & (label.array[box] == 0)
    if not ring.any():
        return None
    scale = intensity_range(image) if scale is None else scale
    values = image.array[box].astype(np.float64)
    return float((values[inside[box]].mean() - values[ring].mean()) / scale)


def pool_contrasts(pool_path: Path, sources: Mapping[str, Path], real: Iterable[tuple[Path, Path]] = (),
                   ring_mm: float = RING_MM) -> dict[str, dict[str, list[float]]]:
    """Per column (``ceT1``, every view of the pool, :data:`REAL_HRT2`) and structure, the
    contrast of each case: ``sources`` are the ceT1 of the pool's labelled cases by case id
    (on the grid of their pool labels), ``real`` (hrT2, label) paths."""
    from ..crossmoda import read_image, read_label
    from ..pool import Pool

    columns: dict[str, dict[str, list[float]]] = {}

    def add(column: str, image: Volume, label: Volume) -> None:
        scale = intensity_range(image)  # once per image, not per structure
        for value, name in STRUCTURES.items():
            contrast = structure_contrast(image, label, value, ring_mm, scale)
            if contrast is not None:
                columns.setdefault(column, {}).setdefault(name, []).append(contrast)

    with Pool(pool_path) as pool:
        for case in pool.label_cases():
            label = pool.read_label(case)
            if case in sources:
                add("ceT1", read_image(sources[case]), label)
            for view in pool.views():
                add(view, pool.read_image(view, case), label)
    for image_path, label_path in real:
        add(REAL_HRT2, read_image(image_path), read_label(label_path))
    return columns


def contrast_summary(columns: Mapping[str, Mapping[str, list[float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Median, minimum and maximum over cases of each column and structure."""
    return {column: {name: {"median": float(np.median(v)), "min": float(np.min(v)), "max": float(np.max(v)),
                            "cases": len(v)} for name, v in by_name.items()}
            for column, by_name in columns.items()}


def contrast_table(summary: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """Markdown: one row per structure, one column per image kind, ``median (min..max)``."""
    lines = [f"| structure | {' | '.join(summary)} |", f"|---|{'---|' * len(summary)}"]
    for name in STRUCTURES.values():
        cells = [f"{s[name]['median']:+.2f} ({s[name]['min']:+.2f}..{s[name]['max']:+.2f})" if name in s else "-"
                 for s in summary.values()]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines)
