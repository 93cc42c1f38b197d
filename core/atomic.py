"""Atomic file writes: a reader sees the old file or the complete new one, never half of one."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def fsync_path(path: str | Path, *, directory: bool = False) -> None:
    """Flush a file (or, with ``directory``, a folder's entries) to the disk."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[str], None], *, suffix: str = "",
                 durable: bool = False) -> Path:
    """Call ``write(tmp)`` on a temporary name beside ``path``, then rename it into place.

    ``durable`` flushes the new file and its folder to the disk, so the rename survives a power
    cut, not only a killed process.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        if durable:
            fsync_path(tmp)
        os.replace(tmp, path)
        if durable:
            fsync_path(path.parent, directory=True)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json_atomic(path: str | Path, data: Any, *, indent: int = 2, sort_keys: bool = False,
                      default: Callable[[Any], Any] | None = None, durable: bool = False) -> Path:
    """Write ``data`` as JSON (UTF-8, newline at the end) with :func:`atomic_write`."""
    text = json.dumps(data, indent=indent, sort_keys=sort_keys, default=default) + "\n"

    def write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    return atomic_write(path, write, suffix=".tmp", durable=durable)
