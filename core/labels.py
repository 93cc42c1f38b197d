"""Label schemes and label validation.

vstk's internal scheme (CrossMoDA 2021/2022): 0 background, 1 vestibular schwannoma (VS),
2 cochlea. The CrossMoDA 2023 scheme splits the tumour: 1 intra-meatal VS, 2 extra-meatal
VS, 3 cochlea; ``scheme="crossmoda2023"`` maps it on read: 1 -> 1, 2 -> 1, 3 -> 2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError, format_value

BACKGROUND, VS, COCHLEA = 0, 1, 2
LABEL_NAMES: dict[int, str] = {BACKGROUND: "background", VS: "VS", COCHLEA: "cochlea"}
STRUCTURES: dict[int, str] = {VS: "VS", COCHLEA: "cochlea"}

# Lookup tables from a file's label values to vstk's scheme.
SCHEMES: dict[str, dict[int, int]] = {
    "crossmoda2022": {0: 0, 1: 1, 2: 2},
    "crossmoda2023": {0: 0, 1: 1, 2: 1, 3: 2},
}


def to_vstk_labels(array: np.ndarray, *, scheme: str = "crossmoda2022",
                   path: str | Path | None = None) -> np.ndarray:
    """Validate a label array and return it as uint8 in vstk's scheme {0, 1, 2}.

    Raises :class:`InputError` for non-integer values or values outside the scheme.
    """
    if scheme not in SCHEMES:
        raise InputError(f"unknown label scheme {scheme!r}", path=path,
                         fix=f"use one of {', '.join(sorted(SCHEMES))}")
    mapping = SCHEMES[scheme]
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)):
            raise InputError("label map contains NaN or Inf", path=path, fix="re-export the label map")
        if not np.array_equal(array, np.round(array)):
            raise InputError("label map has non-integer values", path=path,
                             fix="labels must be integers; was an image given as a label?")
    values = np.unique(array)
    bad = [int(v) for v in values if int(v) not in mapping]
    if bad:
        allowed = sorted(mapping)
        hint = ("if this is a CrossMoDA 2023 label (1 intra-, 2 extra-meatal VS, 3 cochlea) "
                "use --label-scheme crossmoda2023" if scheme == "crossmoda2022" and bad == [3]
                else f"labels must be in {allowed}")
        raise InputError(f"label values {format_value(bad)} outside {allowed} (scheme {scheme})", path=path,
                         fix=hint)
    lut = np.zeros(max(mapping) + 1, dtype=np.uint8)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut[array.astype(np.int64)]


def keep_largest_components(label: np.ndarray, keep: dict[int, int]) -> np.ndarray:
    """Keep the ``keep[value]`` largest 26-connected components of each label value."""
    from scipy import ndimage

    out = label.copy()
    structure = np.ones((3, 3, 3), dtype=bool)
    for value, count in keep.items():
        mask = label == value
        if count <= 0 or not mask.any():
            continue
        components, n = ndimage.label(mask, structure=structure)
        if n <= count:
            continue
        sizes = np.bincount(components.ravel())[1:]
        kept = np.argsort(sizes)[::-1][:count] + 1
        out[mask & ~np.isin(components, kept)] = 0
    return out
