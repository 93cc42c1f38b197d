"""Safe, atomic translator checkpoints.

Files are written to a temporary name and renamed, so a killed process leaves either the
previous checkpoint or the new one, never half of one. They are read with
``torch.load(weights_only=True)``: tensors, numbers, strings, lists and dicts only.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write
from ..errors import CheckpointError

FORMAT = "vstk-translator"
VERSION = 1


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Write ``payload`` atomically to ``path``."""
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without unpickling arbitrary objects.

    Raises :class:`CheckpointError` for a missing, truncated, corrupt or unsafe file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint not found", path=path, fix="check the path (train first?)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(f"checkpoint holds objects other than tensors and plain data ({reason})",
                                  path=path, fix="only load checkpoints written by vstk or plain state dicts") from None
        raise CheckpointError(f"corrupt or truncated checkpoint ({type(exc).__name__}: {reason})", path=path,
                              fix="delete it and train again, or restore a complete copy") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"checkpoint holds a {type(payload).__name__}, not a dict", path=path,
                              fix="pass a vstk checkpoint or a generator state dict")
    return payload


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (checkpoint provenance)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
