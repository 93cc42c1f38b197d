"""3D volumes with their physical geometry, and NIfTI input/output through SimpleITK.

Axis convention (the only place it is converted):

* ``Volume.array`` is a numpy array indexed ``[z, y, x]`` (slice, row, column), exactly as
  ``SimpleITK.GetArrayFromImage`` returns it. Axial slice ``k`` is ``array[k]``.
* ``spacing``, ``origin`` and ``direction`` follow SimpleITK / ITK, ordered ``(x, y, z)``:
  spacing in mm, origin in mm (LPS physical space), direction as the 9 entries of the 3 x 3
  direction-cosine matrix, row-major.
"""

from __future__ import annotations

import dataclasses
import gzip
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from .atomic import atomic_write
from .errors import InputError, format_value

# Geometry comparisons: two grids are the same if they agree to this tolerance (mm / cosine).
GEOMETRY_ATOL = 1e-3


@dataclasses.dataclass(frozen=True, eq=False)
class Volume:
    """A 3D image or label map on a physical grid.

    Attributes:
        array: voxel values indexed ``[z, y, x]``.
        spacing: voxel size in mm, ``(x, y, z)``.
        origin: physical position of voxel ``[0, 0, 0]`` in mm, ``(x, y, z)``.
        direction: 3 x 3 direction cosines, row-major, 9 floats.
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume array must be 3D [z, y, x], got shape {self.array.shape}")
        object.__setattr__(self, "spacing", tuple(float(v) for v in self.spacing))
        object.__setattr__(self, "origin", tuple(float(v) for v in self.origin))
        object.__setattr__(self, "direction", tuple(float(v) for v in self.direction))
        if len(self.spacing) != 3 or len(self.origin) != 3 or len(self.direction) != 9:
            raise ValueError("spacing and origin need 3 values, direction 9")
        if min(self.spacing) <= 0:
            raise ValueError(f"spacing must be positive (mm), got {format_value(self.spacing)}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(z, y, x)`` in voxels."""
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def size_xyz(self) -> tuple[int, int, int]:
        """Grid size in SimpleITK order ``(x, y, z)``."""
        z, y, x = self.array.shape
        return (x, y, z)

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    def with_array(self, array: np.ndarray) -> "Volume":
        """The same grid carrying other voxel values (shape must match)."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} does not match grid {self.array.shape}")
        return dataclasses.replace(self, array=array)

    def same_grid(self, other: "Volume", atol: float = GEOMETRY_ATOL) -> bool:
        """True when both volumes have the same shape, spacing, origin and direction."""
        return self.grid_mismatch(other, atol) is None

    def grid_mismatch(self, other: "Volume", atol: float = GEOMETRY_ATOL) -> str | None:
        """Describe how the grids differ, or None when they match."""
        if self.shape != other.shape:
            return f"size {format_value(self.size_xyz)} vs {format_value(other.size_xyz)} (x, y, z)"
        for name in ("spacing", "origin", "direction"):
            a, b = getattr(self, name), getattr(other, name)
            if not np.allclose(a, b, atol=atol, rtol=0):
                return f"{name} {format_value(a)} vs {format_value(b)}"
        return None

    def index_to_physical(self, index_zyx: Sequence[float]) -> np.ndarray:
        """Physical point (x, y, z) in mm of a continuous voxel index given as ``[z, y, x]``."""
        ijk = np.asarray(index_zyx, dtype=np.float64)[::-1]
        return np.asarray(self.origin) + self.direction_matrix @ (ijk * np.asarray(self.spacing))

    def physical_to_index(self, point_xyz: Sequence[float]) -> np.ndarray:
        """Continuous voxel index ``[z, y, x]`` of a physical point (x, y, z) in mm."""
        rel = np.asarray(point_xyz, dtype=np.float64) - np.asarray(self.origin)
        ijk = (self.direction_matrix.T @ rel) / np.asarray(self.spacing)
        return ijk[::-1]

    @property
    def centre(self) -> np.ndarray:
        """Physical centre (x, y, z) in mm of the grid."""
        return self.index_to_physical((np.asarray(self.shape) - 1) / 2.0)

    def to_sitk(self) -> sitk.Image:
        image = sitk.GetImageFromArray(self.array)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> "Volume":
        return cls(
            array=sitk.GetArrayFromImage(image),
            spacing=image.GetSpacing(),
            origin=image.GetOrigin(),
            direction=image.GetDirection(),
        )


def _decompressed(path: Path) -> bytes:
    """The whole decompressed content of a .gz file; InputError for a truncated or corrupt
    stream (ITK may silently zero-fill it)."""
    try:
        return gzip.decompress(path.read_bytes())
    except (EOFError, OSError, zlib.error) as exc:
        raise InputError(
            f"truncated or corrupt gzip stream ({exc})",
            path=path,
            fix="re-export or re-download this file",
        ) from None


def count_nonfinite(path: str | Path, content: bytes | None = None) -> int:
    """Number of NaN/Inf voxels stored in a NIfTI file (``content``: the file's bytes,
    decompressed, when they are already at hand).

    ITK's NIfTI reader silently turns NaN and Inf into 0, so this looks at the stored values
    with nibabel instead (only float data types can hold them).
    """
    import nibabel

    if content is None:
        image = nibabel.load(str(path))
    else:  # a NIfTI-2 header is 540 bytes long, a NIfTI-1 header 348 (either byte order)
        kind = nibabel.Nifti2Image if 540 in (int.from_bytes(content[:4], "little"),
                                               int.from_bytes(content[:4], "big")) else nibabel.Nifti1Image
        image = kind.from_bytes(content)
    if image.get_data_dtype().kind not in "fc":
        return 0
    data = np.asanyarray(image.dataobj)
    return int(data.size - np.count_nonzero(np.isfinite(data)))


def read_nifti_counted(path: str | Path) -> tuple[Volume, int]:
    """:func:`read_nifti` and :func:`count_nonfinite` of one file, decompressing it once for
    both the gzip check and the count (besides ITK's own read)."""
    path = Path(path)
    content = _decompressed(path) if path.is_file() and path.name.endswith(".gz") else None
    volume = _read_checked(path)
    return volume, count_nonfinite(path, content)


def read_nifti(path: str | Path) -> Volume:
    """Read a 3D NIfTI file (``.nii`` or ``.nii.gz``) into a :class:`Volume`.

    Raises :class:`InputError` naming the file when it is missing, unreadable, truncated
    or not 3D. Values are returned as stored (no validation of content; see ``validate``).
    """
    path = Path(path)
    if path.is_file() and path.name.endswith(".gz"):
        _decompressed(path)
    return _read_checked(path)


def _read_checked(path: Path) -> Volume:
    """:func:`read_nifti` after its gzip check."""
    if not path.is_file():
        raise InputError("file not found", path=path, fix="check the path")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        dims = reader.GetDimension()
        size = reader.GetSize()
        n_comp = reader.GetNumberOfComponents()
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1][:160] if str(exc).strip() else "unreadable"
        raise InputError(f"not a readable NIfTI image ({reason})", path=path,
                         fix="check that the file is a complete .nii/.nii.gz") from None
    squeezed = [s for s in size if s != 1] if dims > 3 else list(size)
    if dims < 3 or len(squeezed) != 3 or n_comp != 1:
        raise InputError(
            f"expected a 3D single-channel image, got {dims}D size {tuple(size)} with {n_comp} component(s)",
            path=path,
            fix="provide one 3D volume per file",
        )
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"could not read voxel data ({str(exc).strip().splitlines()[-1][:160]})",
                         path=path, fix="the file is probably truncated; re-export it") from None
    if image.GetDimension() > 3:
        extractor_size = list(image.GetSize())
        extractor_size[3:] = [0] * (len(extractor_size) - 3)
        image = sitk.Extract(image, extractor_size, [0] * image.GetDimension())
    return Volume.from_sitk(image)


def write_nifti(volume: Volume, path: str | Path, *, compress: bool = True) -> Path:
    """Write ``volume`` to ``path`` atomically (a temporary file renamed into place).

    A reader never sees a half-written file: either the old content or the complete new one.
    """
    path = Path(path)
    suffix = ".nii.gz" if path.name.endswith(".gz") else ".nii"
    return atomic_write(
        path, lambda tmp: sitk.WriteImage(volume.to_sitk(), tmp, useCompression=compress and suffix == ".nii.gz"),
        suffix=suffix)
