"""nnU-Net v2 segmenter plugin for vstk (entry point ``nnunet``).

Drives a real nnU-Net v2 (PyPI ``nnunetv2``) in-process: raw dataset, fingerprint, plans,
preprocessing, a trainer subclass (fold ``all``) and ``nnUNetPredictor``. This module stays
light (no torch, no nnunetv2 import) so listing plugins is fast.
"""

from __future__ import annotations

import vstk

from .config import CPU, PAPER, PROFILES, NnUNetConfig
from .errors import NnUNetRunError, NotTrainedError, WorkdirBusyError
from .segmenter import NnUNetSegmenter

__all__ = ["CPU", "PAPER", "PROFILES", "NnUNetConfig", "NnUNetRunError", "NnUNetSegmenter", "NotTrainedError",
           "WorkdirBusyError", "vstk_add_commands", "vstk_register_segmenters"]


@vstk.hookimpl
def vstk_register_segmenters(registry) -> None:
    registry.add(NnUNetSegmenter)


@vstk.hookimpl
def vstk_add_commands(cli) -> None:
    from .commands import splits_command  # click only: the CLI stays fast

    cli.add_command(splits_command)
