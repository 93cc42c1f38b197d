"""Conformance kit for translator plugins, usable from any plugin's own test suite.

One call trains the translator a few steps on tiny phantom slices and checks every member
of :class:`vstk.Translator` as the pipeline uses it (registration, profiles with an int
``config.seed``, training into ``WORK/translator.pt`` with progress, ``checkpoint`` None
until weights exist, a save/load round trip restoring weights and settings, volumes
translated onto their own grid, seeded reproducibility, clear errors for corrupt
checkpoints)::

    from vstk.testing import check_translator

    def test_my_translator_conforms(tmp_path):
        check_translator("mine", overrides={"my_width": 4}, workdir=tmp_path)

A failed check raises :class:`ConformanceError` (an ``AssertionError``, so pytest shows it
as a test failure) with one line per failed check naming the check, what was seen and the
fix. The kit needs no pytest and imports torch only when it runs.
"""

from __future__ import annotations

from .conformance import (
    CHECKS,
    TINY_SETTINGS,
    CheckResult,
    ConformanceError,
    ConformanceReport,
    check_translator,
    make_phantom_data,
)

__all__ = ["CHECKS", "TINY_SETTINGS", "CheckResult", "ConformanceError", "ConformanceReport", "check_translator",
           "make_phantom_data"]
