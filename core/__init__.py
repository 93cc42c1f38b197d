"""vstk: multi-view cross-modality MR translation for unsupervised VS and cochlea segmentation.

The public surface a plugin author needs. Heavy parts (torch models, nnU-Net) live in
sub-modules imported on demand (``vstk.translation``, ...), never here.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version as _version

from .errors import CheckpointError, ConfigError, InputError, PluginError, PoolError, VstkError
from .hookspecs import hookimpl
from .protocols import Prediction, ProgressFn, PseudoLabel, PseudoLabeler, Segmenter, TrainingCase, Translator
from .volume import Volume, read_nifti, write_nifti

try:
    __version__ = _version("vstk")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

__all__ = [
    "CheckpointError", "ConfigError", "InputError", "PluginError", "PoolError", "VstkError",
    "Prediction", "ProgressFn", "PseudoLabel", "PseudoLabeler", "Segmenter", "TrainingCase",
    "Translator", "Volume", "__version__", "hookimpl", "read_nifti", "write_nifti",
]
