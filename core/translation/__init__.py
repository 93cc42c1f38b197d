"""Building blocks shared by every translator: networks, adversarial and contrastive losses.

The names below load on first access (PEP 562), so importing a light sibling module such as
``vstk.translation.base`` does not import torch; ``vstk/__init__.py`` never imports this package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .losses import GANLoss, GANMode, ImagePool
    from .networks import (
        BlurDownsample,
        BlurUpsample,
        InitName,
        NLayerDiscriminator,
        NormName,
        ResnetBlock,
        ResnetGenerator,
        init_weights,
    )
    from .patchnce import PatchNCELoss, PatchSampleMLP, l2_normalize
    from .qs_attention import QSMode, QuerySelection, query_selected_attention, select_queries

# Public name -> submodule that defines it.
_EXPORTS: dict[str, str] = {
    "GANLoss": "losses",
    "GANMode": "losses",
    "ImagePool": "losses",
    "BlurDownsample": "networks",
    "BlurUpsample": "networks",
    "InitName": "networks",
    "NLayerDiscriminator": "networks",
    "NormName": "networks",
    "ResnetBlock": "networks",
    "ResnetGenerator": "networks",
    "init_weights": "networks",
    "PatchNCELoss": "patchnce",
    "PatchSampleMLP": "patchnce",
    "l2_normalize": "patchnce",
    "QSMode": "qs_attention",
    "QuerySelection": "qs_attention",
    "query_selected_attention": "qs_attention",
    "select_queries": "qs_attention",
}

__all__ = [
    "BlurDownsample",
    "BlurUpsample",
    "GANLoss",
    "GANMode",
    "ImagePool",
    "InitName",
    "NLayerDiscriminator",
    "NormName",
    "PatchNCELoss",
    "PatchSampleMLP",
    "QSMode",
    "QuerySelection",
    "ResnetBlock",
    "ResnetGenerator",
    "init_weights",
    "l2_normalize",
    "query_selected_attention",
    "select_queries",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
