"""Resampling and the 3D <-> 2D axial-slice mapping used by the translators.

Translators work on N x N axial slices. :class:`SliceGeometry` says how a slice is cut out
of a volume: resampled in-plane to ``spacing`` (mm), centre-cropped or padded to ``crop``
pixels, then resized to ``size`` pixels. The three steps are done as ONE resampling onto a
slice grid (:class:`SliceFrame`), so an image is interpolated once, and
:func:`from_slices` maps slices back onto the exact source grid. Slice ``k`` of the stack
is source slice ``k``: there is no resampling along the slice axis, so the merge is exact
in z.

Labels use nearest neighbour both ways. A label taken through slices and back is identical
when the slice pixels are no coarser than the source voxels in-plane and the crop keeps the
labelled region; an image comes back within interpolation error.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from .errors import format_value
from .volume import Volume

DEFAULT_SPACING: tuple[float, float, float] = (0.41, 0.41, 1.5)


def _interpolator(is_label: bool) -> int:
    return sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear


def resample(volume: Volume, spacing: Sequence[float] = DEFAULT_SPACING, *, is_label: bool = False,
             fill: float = 0.0) -> Volume:
    """Resample ``volume`` to ``spacing`` (mm, x y z) keeping its field of view and direction.

    Images are interpolated linearly, labels by nearest neighbour. The new grid covers the
    same physical extent (rounded to whole voxels) and is centred on the old one.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    old_spacing = np.asarray(volume.spacing)
    extent = np.asarray(volume.size_xyz) * old_spacing
    size = np.maximum(1, np.round(extent / spacing)).astype(int)
    # Keep the centre of the field of view fixed.
    centre = volume.centre
    origin = centre - volume.direction_matrix @ ((size - 1) / 2.0 * spacing)
    out = sitk.Resample(
        volume.to_sitk(), [int(s) for s in size], sitk.Transform(), _interpolator(is_label),
        tuple(origin), tuple(spacing), volume.direction, float(fill), sitk.sitkUnknown,
    )
    return Volume.from_sitk(out)


@dataclasses.dataclass(frozen=True)
class SliceGeometry:
    """How axial slices are cut for translation.

    Attributes:
        size: output slice size N (pixels); slices are N x N.
        spacing: in-plane spacing (mm, x y) the volume is resampled to before cropping.
        crop: centre crop / pad in pixels at ``spacing`` before resizing to ``size``;
            None means ``size`` (no resize).
    """

    size: int = 256
    spacing: tuple[float, float] = (0.41, 0.41)
    crop: int | None = None

    def __post_init__(self) -> None:
        if self.size < 4:
            raise ValueError(f"slice size must be at least 4 pixels, got {self.size}")
        if self.crop is not None and self.crop < 4:
            raise ValueError(f"crop must be at least 4 pixels, got {self.crop}")
        if len(self.spacing) != 2 or min(self.spacing) <= 0:
            raise ValueError(f"in-plane spacing needs two positive values (mm), got {format_value(self.spacing)}")

    @property
    def pixel_spacing(self) -> tuple[float, float]:
        """Spacing (mm, x y) of the output N x N pixels."""
        crop = self.crop or self.size
        return (self.spacing[0] * crop / self.size, self.spacing[1] * crop / self.size)


@dataclasses.dataclass(frozen=True)
class SliceFrame:
    """The slice grid of one volume: where its N x N slices lie in physical space.

    ``slice_*`` describe the 3D stack of slices (x y z order, like SimpleITK); ``source_*``
    the grid the stack maps back to. Plain numbers only, so it can be stored as JSON.
    """

    slice_size: tuple[int, int, int]
    slice_spacing: tuple[float, float, float]
    slice_origin: tuple[float, float, float]
    source_size: tuple[int, int, int]
    source_spacing: tuple[float, float, float]
    source_origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @property
    def num_slices(self) -> int:
        return self.slice_size[2]

    def _slab(self, size, spacing, origin, start: int, stop: int) -> tuple[list[int], tuple, tuple]:
        d = np.asarray(self.direction).reshape(3, 3)
        shifted = np.asarray(origin) + d @ np.array([0.0, 0.0, start * spacing[2]])
        return [int(size[0]), int(size[1]), int(stop - start)], tuple(spacing), tuple(shifted)

    def slice_grid(self, start: int = 0, stop: int | None = None) -> tuple[list[int], tuple, tuple]:
        """(size, spacing, origin) of slices ``start:stop`` of the stack."""
        return self._slab(self.slice_size, self.slice_spacing, self.slice_origin, start,
                          self.num_slices if stop is None else stop)

    def source_grid(self, start: int = 0, stop: int | None = None) -> tuple[list[int], tuple, tuple]:
        """(size, spacing, origin) of source slices ``start:stop``."""
        return self._slab(self.source_size, self.source_spacing, self.source_origin, start,
                          self.num_slices if stop is None else stop)

    def source_volume(self, array: np.ndarray) -> Volume:
        """Wrap an array shaped like the source grid ``[z, y, x]`` with the source geometry."""
        return Volume(array, self.source_spacing, self.source_origin, self.direction)


def slice_frame(volume: Volume, geometry: SliceGeometry, centre: Sequence[float] | None = None) -> SliceFrame:
    """The slice grid of ``volume`` under ``geometry``, centred in-plane on ``centre``.

    ``centre`` is a physical point (x, y, z) in mm; by default the centre of the volume.
    Only its in-plane position matters: slice k is always source slice k.
    """
    n = geometry.size
    px, py = geometry.pixel_spacing
    sz = volume.spacing[2]
    centre = volume.centre if centre is None else np.asarray(centre, dtype=np.float64)
    # Continuous source index (x, y) of the centre, then of the slice grid's first pixel.
    cz, cy, cx = volume.physical_to_index(centre)
    start_x = cx - (n - 1) / 2.0 * px / volume.spacing[0]
    start_y = cy - (n - 1) / 2.0 * py / volume.spacing[1]
    origin = volume.index_to_physical((0.0, start_y, start_x))
    return SliceFrame(
        slice_size=(n, n, volume.shape[0]),
        slice_spacing=(px, py, sz),
        slice_origin=tuple(float(v) for v in origin),
        source_size=volume.size_xyz,
        source_spacing=volume.spacing,
        source_origin=volume.origin,
        direction=volume.direction,
    )


def to_slices(volume: Volume, frame: SliceFrame, *, is_label: bool = False, start: int = 0,
              stop: int | None = None, fill: float = 0.0) -> np.ndarray:
    """Cut slices ``start:stop`` of ``volume`` on ``frame``: float32 (images) or uint8 (labels),
    shaped ``[slices, N, N]``. Pixels outside the volume get ``fill``."""
    size, spacing, origin = frame.slice_grid(start, stop)
    image = volume.to_sitk() if not is_label else sitk.Cast(volume.to_sitk(), sitk.sitkUInt8)
    out = sitk.Resample(image, size, sitk.Transform(), _interpolator(is_label), origin, spacing,
                        frame.direction, float(fill), sitk.sitkUInt8 if is_label else sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def from_slices(slices: np.ndarray, frame: SliceFrame, *, is_label: bool = False, start: int = 0,
                fill: float = 0.0) -> np.ndarray:
    """Map slices ``[k, N, N]`` (stack slices ``start:start+k``) back onto the source grid.

    Returns the source-grid array ``[k, Y, X]`` for source slices ``start:start+k``; source
    voxels outside the slice grid (cropped away) get ``fill``.
    """
    stop = start + slices.shape[0]
    size, spacing, origin = frame.slice_grid(start, stop)
    image = sitk.GetImageFromArray(slices.astype(np.uint8 if is_label else np.float32, copy=False))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(frame.direction)
    src_size, src_spacing, src_origin = frame.source_grid(start, stop)
    out = sitk.Resample(image, src_size, sitk.Transform(), _interpolator(is_label), src_origin,
                        src_spacing, frame.direction, float(fill),
                        sitk.sitkUInt8 if is_label else sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def volume_from_slices(slices: np.ndarray, frame: SliceFrame, *, is_label: bool = False,
                       fill: float = 0.0) -> Volume:
    """The whole slice stack back on the source grid as a :class:`Volume`."""
    return frame.source_volume(from_slices(slices, frame, is_label=is_label, fill=fill))
