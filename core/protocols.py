"""The contracts plugin classes implement, and the records they exchange.

Registered classes are checked structurally (duck typing): a translator plugin need not
inherit from anything in vstk. Methods that need torch or nnU-Net import them inside, so
listing plugins stays fast.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from .volume import Volume

#: Progress callback: ``progress(done, total, message)``.
ProgressFn = Callable[[int, int, str], None]


@dataclasses.dataclass(frozen=True)
class TrainingCase:
    """A labelled image for segmenter training (label on the image grid, {0, 1, 2}).

    ``pseudo_labelled`` marks a real target-modality image whose label is a pseudo label of a
    self-training round (not a translated view with its source label): a segmenter may treat
    the two kinds differently, e.g. augment only the translated ones.
    """

    case_id: str
    image: Volume
    label: Volume
    pseudo_labelled: bool = False


@dataclasses.dataclass(frozen=True)
class Prediction:
    """A segmenter's output for one image.

    Attributes:
        case_id: the case it belongs to.
        label: uint8 label map {0, 1, 2} on the input image's grid.
        probabilities: float32 ``[classes, z, y, x]`` softmax on the same grid, or None.
    """

    case_id: str
    label: Volume
    probabilities: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class PseudoLabel:
    """A pseudo-labelled real hrT2 case selected for self-training."""

    case_id: str
    label: Volume
    confidence: float


@runtime_checkable
class Translator(Protocol):
    """An unpaired ceT1 -> hrT2 translator trained on 2D axial slices.

    Slices are float32 arrays ``[batch, N, N]`` with intensities in [-1, 1].
    """

    name: ClassVar[str]
    config_class: ClassVar[type]

    @classmethod
    def profile(cls, name: str) -> Any:
        """The config instance of the named profile (``"cpu"``, ``"paper"``)."""

    def __init__(self, config: Any, device: str = "cpu") -> None: ...

    def train(self, source: Any, target: Any, workdir: Path, *,
              progress: ProgressFn | None = None) -> Path:
        """Train (resuming from ``workdir`` when it holds a checkpoint); return the final checkpoint."""

    def load(self, checkpoint: Path) -> None:
        """Load weights saved by :meth:`train` (safely, no arbitrary pickles)."""

    def translate_batch(self, slices: np.ndarray) -> np.ndarray:
        """Translate ceT1 slices ``[B, N, N]`` in [-1, 1] to pseudo-hrT2 slices of the same shape."""


@runtime_checkable
class Segmenter(Protocol):
    """A 3D segmenter trained on labelled images and predicting label maps with probabilities."""

    name: ClassVar[str]
    config_class: ClassVar[type]

    @classmethod
    def profile(cls, name: str) -> Any: ...

    def __init__(self, config: Any, workdir: Path) -> None: ...

    def train(self, cases: Sequence[TrainingCase], *, round_index: int = 0,
              progress: ProgressFn | None = None) -> None:
        """Train on ``cases``; self-training round ``round_index`` gets its own results."""

    def predict(self, images: Mapping[str, Volume], *, round_index: int = 0,
                progress: ProgressFn | None = None) -> list[Prediction]:
        """Predict every image (keyed by case id) with the model of ``round_index``."""


@runtime_checkable
class PseudoLabeler(Protocol):
    """Chooses which predictions on real hrT2 become training labels."""

    name: ClassVar[str]
    config_class: ClassVar[type]

    def __init__(self, config: Any) -> None: ...

    def select(self, predictions: Sequence[Prediction]) -> list[PseudoLabel]:
        """The predictions to train on, as pseudo labels with a confidence in [0, 1]."""
