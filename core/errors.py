"""Errors vstk raises for bad input, each naming the culprit and the fix.

The CLI turns every :class:`VstkError` into one line on stderr and a non-zero exit
status; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class VstkError(Exception):
    """Base class: a problem the user can fix, described in one line."""

    def __init__(self, problem: str, *, fix: str | None = None, path: str | Path | None = None):
        self.problem = problem
        self.fix = fix
        self.path = None if path is None else Path(path)
        super().__init__(self.one_line())

    def one_line(self) -> str:
        parts = []
        if self.path is not None:
            parts.append(f"{self.path}: ")
        parts.append(self.problem)
        if self.fix:
            parts.append(f" (fix: {self.fix})")
        return "".join(parts)


class InputError(VstkError):
    """An input file or folder is missing, unreadable or inconsistent."""


class ConfigError(VstkError):
    """A configuration value, profile or option is not allowed."""


class PluginError(VstkError):
    """A plugin is unknown, failed to load, or clashes with another one."""


class CheckpointError(VstkError):
    """A checkpoint is corrupt, truncated, or belongs to another model."""


class PoolError(VstkError):
    """An HDF5 pool is corrupt, incomplete, or of an unsupported schema."""
