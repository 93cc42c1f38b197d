"""The HDF5 multi-view augmentation pool: write it, read it, train from it, export it.

One HDF5 file holds every translated view of every labelled case, the labels (stored once,
hard-linked into each view), the real hrT2 images and the self-training pseudo labels; see
:mod:`vstk.pool.schema` for the layout. Public API:

* :class:`PoolBuilder` - crash-safe, resumable writer (``vstk pool build`` / ``add-view``).
* :class:`Pool` - checked read-only access, ``info()`` and ``digest()``.
* :func:`export_nnunet` - an nnU-Net v2 raw dataset from selected views.
* :class:`PoolDataset` - a torch Dataset of 2D slices or 3D volumes (imports torch on use).
* :class:`Compression` - the filters of voxel datasets (default gzip level 1 + shuffle).
* :func:`merge_shards` - join the shard files of a sharded build (``vstk pool merge``).
"""

from __future__ import annotations

from typing import Any

# Public name -> submodule. Loaded on first access (PEP 562) so that `vstk --help` and the
# pool CLI module do not import h5py (or torch, for PoolDataset) until a command runs.
_EXPORTS = {
    "DEFAULT_TARGET_SPACING": "builder", "PoolBuilder": "builder", "DEFAULT_COMPRESSION": "codec",
    "Compression": "codec", "export_nnunet": "export", "nnunet_case_id": "export", "pseudo_case_id": "export",
    "Pool": "reader", "SCHEMA_NAME": "schema", "SCHEMA_VERSION": "schema", "PoolDataset": "dataset",
    "merge_shards": "shard",
}

__all__ = [
    "Compression", "DEFAULT_COMPRESSION", "DEFAULT_TARGET_SPACING", "Pool", "PoolBuilder", "PoolDataset",
    "SCHEMA_NAME", "SCHEMA_VERSION", "export_nnunet", "merge_shards", "nnunet_case_id", "pseudo_case_id",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'vstk.pool' has no attribute {name!r}")
