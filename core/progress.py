"""The one progress-bar helper: tqdm on stderr, silent when not a terminal unless asked."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from .protocols import ProgressFn


@contextlib.contextmanager
def progress_bar(total: int, description: str, *, enabled: bool | None = None) -> Iterator[ProgressFn]:
    """Yield a ``progress(done, total, message)`` callback drawing a bar on stderr.

    ``enabled=None`` shows the bar only when stderr is a terminal (logs stay clean in CI).
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield lambda done, total_, message="": None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=description, file=sys.stderr, dynamic_ncols=True, leave=True)
    try:
        def update(done: int, total_: int, message: str = "") -> None:
            if total_ != bar.total:
                bar.total = total_
            bar.n = done
            if message:
                bar.set_postfix_str(message, refresh=False)
            bar.refresh()

        yield update
    finally:
        bar.close()
