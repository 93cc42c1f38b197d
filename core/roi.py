"""Regions of interest around the inner ears, found the same way on ceT1, hrT2 and translations.

The rule (no labels needed, so it applies to unlabelled hrT2 at test time): CrossMoDA-style
acquisitions are planned on the internal auditory canals, so the two ears lie at a fixed
offset left and right of the centre of the field of view. :class:`EarRule` holds that offset
(mm, along the image's own x / y / z axes, mirrored in x for the second ear) and the box
size; both are settings to adjust to a site's protocol. The defaults fit the built-in
phantom, measured from its labels (training ceT1 and test hrT2, mm from the field-of-view
centre, |x| mirrored): cochleae at |x| 30-43, y -19 to -2, z -10 to 8; schwannomas reach
|x| 9-37, y -20 to 8, z -8 to 16. The default box (|x| 5-49, y -26 to 14, z -15 to 19)
held all of them with at least 4 mm to spare on the phantom those were measured on; other
seeds draw tumours up to 25 mm that can cross its medial edge (seed 4 at ``--scale 0.5``
does), and a run then stops naming the case (:func:`labels_outside`) rather than crop a
label away: use ``--ears found`` or a larger ``--ear-size`` there.

Boxes are axis-aligned in voxel space; cropping keeps physical geometry (origin moves), and
:func:`paste` puts a cropped result back on the full grid.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from .labels import LABEL_NAMES
from .volume import Volume


#: Offset (x, y, z) in mm of the right-hand ear box centre from the field-of-view centre.
DEFAULT_OFFSET_MM = (27.0, -6.0, 2.0)
#: Size (x, y, z) in mm of each ear box.
DEFAULT_SIZE_MM = (44.0, 40.0, 34.0)


def grid_key(volume: Volume, box: "Box | None" = None) -> str:
    """A name of ``volume``'s grid (shape, origin, spacing, direction), or of the grid of its
    crop to ``box``: images on one grid are one acquisition (a ceT1 and its translations, an
    image and its label)."""
    shape = volume.shape if box is None else box.size
    origin = volume.origin if box is None else volume.index_to_physical(box.start)
    values = [*shape, *np.round(origin, 3), *np.round(volume.spacing, 4), *np.round(volume.direction_matrix.ravel(), 4)]
    return " ".join(f"{float(v) + 0.0:g}" for v in values)


@dataclasses.dataclass(frozen=True)
class EarRule:
    """Where the ears are: found for the grids in ``found``, else relative to the
    field-of-view centre.

    Attributes:
        offset_mm: (x, y, z) offset of the right-hand box centre from the grid centre along
            the image axes, in mm; the other ear is at (-x, y, z).
        size_mm: (x, y, z) size of each box in mm.
        found: box centres (physical mm, -x side first) found from the content of the images
            on a grid, by :func:`grid_key` (``vstk run --ears found``).
    """

    offset_mm: tuple[float, float, float] = DEFAULT_OFFSET_MM
    size_mm: tuple[float, float, float] = DEFAULT_SIZE_MM
    found: Mapping[str, Sequence[Sequence[float]]] = dataclasses.field(default_factory=dict, compare=False,
                                                                        repr=False)

    def centres(self, volume: Volume) -> list[np.ndarray]:
        """Physical points (x, y, z) in mm of the two ear-box centres (-x side first)."""
        if self.found:
            known = self.found.get(grid_key(volume))
            if known is not None:
                return [np.asarray(point, dtype=np.float64) for point in known]
        centre_index = (np.asarray(volume.shape, dtype=np.float64) - 1) / 2.0  # z, y, x
        points = []
        for sign in (-1.0, 1.0):
            offset = np.array([sign * self.offset_mm[0], self.offset_mm[1], self.offset_mm[2]])
            shift_index = offset / np.asarray(volume.spacing)  # x, y, z voxels along image axes
            points.append(volume.index_to_physical(centre_index + shift_index[::-1]))
        return points


@dataclasses.dataclass(frozen=True)
class Box:
    """A voxel box ``[start, start + size)`` in array order (z, y, x); may extend outside."""

    start: tuple[int, int, int]
    size: tuple[int, int, int]


def box_around(volume: Volume, centre: Sequence[float], size_mm: Sequence[float]) -> Box:
    """The voxel box of ``size_mm`` (x, y, z) centred on the physical point ``centre``."""
    size_zyx = np.maximum(1, np.round(np.asarray(size_mm)[::-1] / np.asarray(volume.spacing)[::-1])).astype(int)
    centre_index = volume.physical_to_index(centre)
    start = np.round(centre_index - (size_zyx - 1) / 2.0).astype(int)
    return Box(tuple(int(v) for v in start), tuple(int(v) for v in size_zyx))


def crop(volume: Volume, box: Box, fill: float = 0.0) -> Volume:
    """The part of ``volume`` inside ``box`` (padded with ``fill`` where the box leaves the grid)."""
    out = np.full(box.size, fill, dtype=volume.array.dtype)
    src, dst = [], []
    for start, size, extent in zip(box.start, box.size, volume.shape):
        lo, hi = max(start, 0), min(start + size, extent)
        if hi <= lo:
            return volume_at(volume, box, out)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[tuple(dst)] = volume.array[tuple(src)]
    return volume_at(volume, box, out)


def volume_at(volume: Volume, box: Box, array: np.ndarray) -> Volume:
    """Wrap ``array`` (shaped like ``box``) with the geometry of ``box`` inside ``volume``."""
    origin = volume.index_to_physical(box.start)
    return Volume(array, volume.spacing, tuple(origin), volume.direction)


def paste(part: np.ndarray, box: Box, shape: Sequence[int], into: np.ndarray | None = None) -> np.ndarray:
    """Put ``part`` (shaped like ``box``) into an array of ``shape`` (or into ``into``)."""
    out = np.zeros(tuple(shape), dtype=part.dtype) if into is None else into
    src, dst = [], []
    for start, size, extent in zip(box.start, box.size, out.shape):
        lo, hi = max(start, 0), min(start + size, extent)
        if hi <= lo:
            return out
        dst.append(slice(lo, hi))
        src.append(slice(lo - start, hi - start))
    out[tuple(dst)] = part[tuple(src)]
    return out


def paste_probabilities(part: np.ndarray, box: Box, shape: Sequence[int],
                        into: np.ndarray | None = None) -> np.ndarray:
    """Put class probabilities ``part`` (``[classes, *box.size]``) into a float32 array
    ``[classes, *shape]`` (or into ``into``); a new array is background (class 0) with
    probability 1 outside the box."""
    if into is None:
        into = np.zeros((part.shape[0], *shape), dtype=np.float32)
        into[0] = 1.0
    for c in range(part.shape[0]):
        paste(part[c].astype(np.float32, copy=False), box, shape, into=into[c])
    return into


def ear_boxes(volume: Volume, rule: EarRule) -> list[Box]:
    """The two ear boxes of ``volume`` under ``rule``."""
    return [box_around(volume, centre, rule.size_mm) for centre in rule.centres(volume)]


@dataclasses.dataclass(frozen=True)
class Outside:
    """Labelled voxels of one label value that no ear box holds.

    Attributes:
        value: the label value (1 VS, 2 cochlea).
        voxels: how many of its voxels lie outside every box.
        total: how many voxels it has.
        farthest_mm: the largest distance of such a voxel from the nearest box, in mm.
    """

    value: int
    voxels: int
    total: int
    farthest_mm: float

    def describe(self, where: str = "the ear boxes") -> str:
        """``"12 of 300 cochlea voxels lie outside the ear boxes, up to 4.2 mm"``."""
        name = LABEL_NAMES.get(self.value, f"label-{self.value}")
        return f"{self.voxels} of {self.total} {name} voxels lie outside {where}, up to {self.farthest_mm:.1f} mm"


def labels_outside(label: Volume, boxes: Sequence[Box]) -> list[Outside]:
    """Every label value with voxels outside all of ``boxes`` (boxes in ``label``'s voxels)."""
    found = []
    spacing_zyx = np.asarray(label.spacing, dtype=np.float64)[::-1]
    for value in (int(v) for v in np.unique(label.array) if v != 0):
        points = np.argwhere(label.array == value)
        nearest = np.full(len(points), np.inf)
        for box in boxes:
            start = np.asarray(box.start)
            end = start + np.asarray(box.size) - 1
            gap = np.maximum(np.maximum(start - points, points - end), 0) * spacing_zyx
            nearest = np.minimum(nearest, np.sqrt((gap ** 2).sum(axis=1)))
        out = nearest > 0
        if out.any():
            found.append(Outside(value, int(out.sum()), len(points), float(nearest[out].max())))
    return found
