"""The vstk.translation package: its public names, loaded on demand."""

from __future__ import annotations

import subprocess
import sys

import vstk.translation


def test_every_public_name_resolves() -> None:
    for name in vstk.translation.__all__:
        assert getattr(vstk.translation, name) is not None
    assert callable(vstk.translation.query_selected_attention)


def test_importing_the_package_does_not_import_torch() -> None:
    code = "import sys, vstk.translation; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
