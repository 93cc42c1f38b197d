"""One training job per nnU-Net workdir: an exclusive lock on ``workdir/nnunet.lock``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

from .errors import WorkdirBusyError
from .layout import LOCK_FILE


class WorkdirLock:
    """An exclusive, non-blocking lock on ``workdir/nnunet.lock``, held while a round trains.

    The operating system releases it when the holder exits, even when the holder is killed,
    so a lock file left behind by a dead process never blocks a rerun.
    """

    def __init__(self, workdir: str | Path) -> None:
        self.path = Path(workdir) / LOCK_FILE
        self._handle: IO[str] | None = None

    def __enter__(self) -> "WorkdirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            _lock(handle)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown process"
            handle.close()
            raise WorkdirBusyError(
                f"another nnU-Net job ({holder}) is training in this workdir; it holds the lock file {self.path}",
                fix="wait for that job to finish (the lock is released when its process exits), "
                    "or give this job its own workdir",
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            _unlock(self._handle)
            self._handle.close()
            self._handle = None


if os.name == "nt":  # pragma: no cover - Windows only
    import msvcrt

    def _lock(handle: IO[str]) -> None:
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)

    def _unlock(handle: IO[str]) -> None:
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _lock(handle: IO[str]) -> None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(handle: IO[str]) -> None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
