"""Errors of the nnU-Net segmenter (all :class:`vstk.errors.VstkError`, one clear line each)."""

from __future__ import annotations

from vstk.errors import VstkError


class WorkdirBusyError(VstkError):
    """Another process is training in the same nnU-Net workdir (one job per dataset)."""


class NotTrainedError(VstkError):
    """Prediction asked for a round whose training has not finished."""


class NnUNetRunError(VstkError):
    """nnU-Net itself failed in a way the user can act on (worker processes died, ...)."""
