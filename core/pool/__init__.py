"""The HDF5 multi-view augmentation pool: write it, read it, train from it, export it.

One HDF5 file holds every translated view of every labelled case, the labels (stored once,
hard-linked into each view), the real hrT2 images and the self-training pseudo labels; see
:mod:`vstk.pool.schema` for the layout. Public API:

* :class:`PoolBuilder` - crash-safe, resumable writer (``vstk pool build`` / ``add-view``).
* :class:`Pool` - checked read-only access, ``info()`` and ``digest()``.
* :func:`export_nnunet` - an nnU-Net v2 raw dataset from selected views.
* :class:`PoolDataset` - a torch Dataset of 2D slices or 3D volumes (imports torch on use).
* :class:`Compression` - the filters of voxel datasets (default gzip level 1 + shuffle).
"""

from __future__ import annotations

from typing import Any

from .builder import DEFAULT_TARGET_SPACING, PoolBuilder
from .codec import DEFAULT_COMPRESSION, Compression
from .export import export_nnunet, nnunet_case_id, pseudo_case_id
from .reader import Pool
from .schema import SCHEMA_NAME, SCHEMA_VERSION

__all__ = [
    "Compression", "DEFAULT_COMPRESSION", "DEFAULT_TARGET_SPACING", "Pool", "PoolBuilder", "PoolDataset",
    "SCHEMA_NAME", "SCHEMA_VERSION", "export_nnunet", "nnunet_case_id", "pseudo_case_id",
]


def __getattr__(name: str) -> Any:
    # torch is heavy: import the Dataset only when someone asks for it.
    if name == "PoolDataset":
        from .dataset import PoolDataset

        return PoolDataset
    raise AttributeError(f"module 'vstk.pool' has no attribute {name!r}")
