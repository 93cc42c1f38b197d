"""Errors vstk raises for bad input, each naming the culprit and the fix.

The CLI turns every :class:`VstkError` into one line on stderr and a non-zero exit
status; anything else is a bug and keeps its traceback. :func:`format_value` writes the
values a message names (spacings, origins, label values) as a person would.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence, Set
from pathlib import Path
from typing import Any


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


def format_value(value: Any, *, digits: int = 4, max_items: int = 12) -> str:
    """``value`` as a person would write it in an error message.

    Numpy and torch values print like Python's own (never ``np.float64(...)``). Integers
    print as they are; floats rounded to ``digits`` decimals (``-34.925``, ``0.41``,
    ``0.0``; a non-zero value too small for that in ``digits`` significant figures,
    ``1.235e-07``); tuples as ``(-34.925, -24.925, 0.0)``; lists and arrays as ``[1, 2]``
    (nested for 2D); sets sorted, in braces; mappings as ``{key: value}``; strings and paths
    as they are. A collection longer than ``max_items`` shows its first ``max_items`` items
    and how many it holds, ``[0, 1, ... 4096 in all]``.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy/torch scalars and arrays
        value = value.tolist()
        if isinstance(value, str):
            return value
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _format_float(value, digits)

    def items(values: Any) -> str:
        shown = [format_value(v, digits=digits, max_items=max_items) for v in list(values)[:max_items]]
        if len(values) > max_items:
            shown.append(f"... {len(values)} in all")
        return ", ".join(shown)

    if isinstance(value, Mapping):
        pairs = [f"{format_value(k, digits=digits)}: {format_value(v, digits=digits, max_items=max_items)}"
                 for k, v in list(value.items())[:max_items]]
        return "{" + ", ".join(pairs + ([f"... {len(value)} in all"] if len(value) > max_items else [])) + "}"
    if isinstance(value, Set):
        return "{" + items(sorted(value, key=lambda v: format_value(v, digits=digits))) + "}"
    if isinstance(value, tuple):
        return "(" + items(value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, Sequence):
        return "[" + items(value) + "]"
    return str(value)


def _format_float(value: float, digits: int) -> str:
    if not math.isfinite(value):
        return repr(value)  # nan, inf, -inf
    rounded = round(value, digits) + 0.0  # + 0.0 turns -0.0 into 0.0
    if rounded == 0.0 and value != 0.0:
        return f"{value:.{digits}g}"
    return repr(rounded)
