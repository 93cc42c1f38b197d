"""Content digest of a pool: SHA-256 over every group, dataset, attribute and hard link.

Two pools have the same digest exactly when h5py sees the same content in them: the same
names, the same attribute values (type and bytes), the same dataset dtypes, shapes and
voxels, and the same hard-link structure (a second name of an object is hashed as a link to
its first name). The physical layout (chunk order in the file, compression bytes, free
space) does not count, and neither do the root attributes in
:data:`~vstk.pool.schema.DIGEST_EXCLUDED_ROOT_ATTRS` (``created``: the assembly time).
"""

from __future__ import annotations

import hashlib
from typing import Any

import h5py
import numpy as np

from .codec import SliceReader
from .schema import DIGEST_EXCLUDED_ROOT_ATTRS


def _feed(hasher: "hashlib._Hash", *parts: bytes) -> None:
    for part in parts:
        hasher.update(len(part).to_bytes(8, "little"))
        hasher.update(part)


def _value_bytes(value: Any) -> bytes:
    if isinstance(value, str):
        return b"str:" + value.encode("utf-8")
    if isinstance(value, bytes):
        return b"bytes:" + value
    array = np.asarray(value)
    if array.dtype.hasobject:
        # Variable-length string arrays come back as object arrays of str/bytes.
        return b"list:" + b"\0".join(_value_bytes(v) for v in array.ravel()) + repr(array.shape).encode()
    array = np.ascontiguousarray(array)
    return f"{array.dtype.str}{array.shape}".encode() + b":" + array.tobytes()


def _attrs(hasher: "hashlib._Hash", obj: h5py.HLObject, excluded: frozenset[str]) -> None:
    for name in sorted(obj.attrs):
        if name in excluded:
            continue
        _feed(hasher, b"attr", name.encode("utf-8"), _value_bytes(obj.attrs[name]))


def content_digest(file: h5py.File, *, threads: int | None = None) -> str:
    """Hex SHA-256 of the content of an open HDF5 file (see the module docstring)."""
    hasher = hashlib.sha256()
    first_name: dict[Any, str] = {}

    def visit(group: h5py.Group, path: str, excluded: frozenset[str]) -> None:
        _feed(hasher, b"group", path.encode("utf-8"))
        _attrs(hasher, group, excluded)
        for name in sorted(group):
            link = group.get(name, getlink=True)
            child_path = f"{path.rstrip('/')}/{name}"
            if not isinstance(link, h5py.HardLink):
                # Soft/external links are not part of the schema; hash their target text.
                target = getattr(link, "path", "") + "|" + getattr(link, "filename", "")
                _feed(hasher, b"link", child_path.encode("utf-8"), target.encode("utf-8"))
                continue
            obj = group[name]
            key = (obj.id.fileno, h5py.h5o.get_info(obj.id).addr)
            if key in first_name:
                _feed(hasher, b"hardlink", child_path.encode("utf-8"), first_name[key].encode("utf-8"))
                continue
            first_name[key] = child_path
            if isinstance(obj, h5py.Group):
                visit(obj, child_path, frozenset())
            else:
                _feed(hasher, b"dataset", child_path.encode("utf-8"),
                      f"{obj.dtype.str}{obj.shape}".encode())
                _attrs(hasher, obj, frozenset())
                if obj.ndim == 3 and obj.chunks == (1, *obj.shape[1:]):
                    data = SliceReader(obj).read_all(threads)
                else:
                    data = obj[()]
                _feed(hasher, np.ascontiguousarray(data).tobytes())

    visit(file, "/", frozenset(DIGEST_EXCLUDED_ROOT_ATTRS))
    return hasher.hexdigest()
