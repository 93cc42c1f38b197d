"""The contracts plugin classes implement, and the records they exchange.

Registered classes are checked structurally (duck typing): a translator plugin need not
inherit from anything in vstk. Each protocol declares exactly the members the core reads
off a plugin's class or instance (``vstk run``, ``vstk bench``, ``vstk translate``, the
pool); anything else a plugin has is its own business. Methods that need torch or nnU-Net
import them inside, so listing plugins stays fast.

Settings the core reads when a plugin's config has them (optional, never required):
``device`` (``--device`` is routed to every config with that field), ``ear_offset_mm``,
``seed`` and ``dataset_name`` of a segmenter (``vstk bench --seeds``), and two class
attributes of a config dataclass: ``execution_fields`` (settings that do not change the
result, e.g. threads; see :func:`vstk.config.result_settings`) and, for segmenters,
``self_training_fields`` (settings that change only the self-training rounds).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from .volume import Volume

if TYPE_CHECKING:  # only annotations name it
    from .translation.distributed import DistContext

#: Progress callback: ``progress(done, total, message)``.
ProgressFn = Callable[[int, int, str], None]


@dataclasses.dataclass(frozen=True)
class TrainingCase:
    """A labelled image for segmenter training (label on the image grid, {0, 1, 2}).

    ``pseudo_labelled`` marks a real target-modality image whose label is a pseudo label of a
    self-training round (not a translated view with its source label); ``truth_target`` a real
    target-modality image with its true label (the supervised reference of ``vstk bench``). A
    segmenter may treat real target images differently from translated views, e.g. augment
    only the translated ones.
    """

    case_id: str
    image: Volume
    label: Volume
    pseudo_labelled: bool = False
    truth_target: bool = False

    @property
    def real_target(self) -> bool:
        """A real target-modality image (pseudo- or truth-labelled), not a translated view."""
        return self.pseudo_labelled or self.truth_target


@dataclasses.dataclass(frozen=True)
class Prediction:
    """A segmenter's output for one image.

    Attributes:
        case_id: the case it belongs to.
        label: uint8 label map {0, 1, 2} on the input image's grid.
        probabilities: float32 ``[classes, z, y, x]`` softmax on the same grid (class 0 is
            background), or None when the segmenter computes none.
    """

    case_id: str
    label: Volume
    probabilities: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class PseudoLabel:
    """A pseudo-labelled real hrT2 case selected for self-training.

    Attributes:
        case_id: the case of the prediction it was made from.
        label: uint8 label map {0, 1, 2} on that case's grid.
        confidence: how sure the pseudo-labeler is, in [0, 1] (stored in the pool).
    """

    case_id: str
    label: Volume
    confidence: float


@runtime_checkable
class SeededConfig(Protocol):
    """What the core reads off every translator config.

    A translator's config is a frozen dataclass (``--set key=value`` overrides its fields,
    the pool stores it as JSON provenance, ``vstk run`` compares its fields between reruns)
    with at least this field.

    Attributes:
        seed: the integer every random source of training derives from (initial weights,
            sampling order, flips, image pools): two CPU trainings with the same config and
            seed give the same weights. The pool records it with every view.
    """

    seed: int


@runtime_checkable
class Translator(Protocol):
    """An unpaired ceT1 -> hrT2 translator, trained on 2D slices and applied to 3D volumes.

    Subclassing :class:`vstk.translation.base.SliceTranslator` provides all of it (slicing,
    normalisation, the training loop, checkpoints, streamed volume translation).

    Attributes:
        name: the user-facing name (``vstk run --translators NAME``): letters, digits, ``-``
            and ``_``; unique among the installed plugins.
        config_class: the frozen dataclass of the settings (a :class:`SeededConfig`).
        config: the settings this instance uses, an instance of ``config_class``. After
            :meth:`load` it holds the settings the checkpoint was trained with: ``vstk run``
            compares them with the command's settings before reusing a checkpoint, and the
            pool records them (with ``config.seed``) as each view's provenance.
        checkpoint: the checkpoint whose weights :meth:`translate_volume` uses; None while the
            instance has no weights (neither trained nor loaded), in which case translating
            raises :class:`vstk.CheckpointError`.

    Optional: ``load_official(path)``, for ``vstk translate apply --official`` (generator
    weights saved by the method's official code).
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    config: SeededConfig
    checkpoint: Path | None

    @classmethod
    def profile(cls, name: str, **overrides: Any) -> Any:
        """The config of the named profile with ``overrides`` applied.

        :param name: ``"cpu"`` (small crops, narrow networks, minutes on 2 cores) or
            ``"paper"`` (the published settings, for GPUs); an unknown name raises
            :class:`vstk.ConfigError` listing the known ones.
        :param overrides: field values, as values or as the strings ``--set key=value`` gives;
            an unknown field raises :class:`vstk.ConfigError`.
        :returns: an instance of ``config_class``.
        """

    def __init__(self, config: Any, device: str | None = None) -> None:
        """Build from a config of ``config_class``; no weights yet (``checkpoint`` is None).

        :param config: the settings.
        :param device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; None chooses CUDA when available,
            else the CPU.
        """

    def train(self, source: Sequence[Volume], target: Sequence[Volume], workdir: Path, *,
              progress: ProgressFn | None = None, distributed: DistContext | None = None) -> Path:
        """Train on unpaired ceT1 and hrT2 volumes; afterwards the instance translates.

        Resumes from ``workdir`` when it holds the checkpoint of an interrupted run (the
        pipeline reruns a killed job this way), and ``workdir/translator.pt`` must be the
        final checkpoint: the pipeline looks for that name to skip a finished training.

        :param source: labelled-side ceT1 volumes (their labels are not used).
        :param target: unlabelled real hrT2 volumes (other cases than ``source``).
        :param workdir: this translator's own folder (created when missing).
        :param progress: called as ``progress(done, total, message)`` with training steps.
        :param distributed: ``vstk translate train --nproc`` passes its torchrun context: None
            or an inactive context means a single process; a translator that cannot train
            data-parallel raises :class:`vstk.ConfigError` for an active one.
        :returns: the path of ``workdir/translator.pt``; ``checkpoint`` is that path too.
        """

    def load(self, checkpoint: Path) -> None:
        """Load the weights and the training settings of a final checkpoint written by :meth:`train`.

        Restores ``config`` from the checkpoint (an instance built from any profile translates
        exactly as the trained one) and sets ``checkpoint``. Reads no arbitrary pickles; a
        missing, truncated or foreign file raises :class:`vstk.CheckpointError` naming it.
        """

    def translate_volume(self, volume: Volume) -> Volume:
        """Translate a ceT1 volume to a pseudo-hrT2 volume on the same grid.

        :param volume: a ceT1 image; left unchanged.
        :returns: finite float intensities (vstk's translators give [0, 1000]) with the input's
            shape, spacing (mm), origin (mm) and direction, so the ceT1 label still fits voxel
            for voxel. Memory should be bounded by a batch of slices, not the volume.
        """


@runtime_checkable
class Segmenter(Protocol):
    """A 3D segmenter trained on labelled images and predicting label maps with probabilities.

    Attributes:
        name: the user-facing name (``vstk run --segmenter NAME``), unique among plugins.
        config_class: the frozen dataclass of the settings, constructible without arguments
            (its defaults are used when the class has no ``profile``). Optional fields the
            core uses: ``seed`` (``vstk bench --seeds``), ``dataset_name``, ``device``.
        config: the settings this instance uses (``vstk bench`` derives each row's from it;
            ``vstk run`` records them with every stage).

    Optional: a classmethod ``profile(name, **overrides)`` as for translators; without it the
    core uses ``config_class()`` with the ``--set`` overrides. A method
    ``describe(round_index) -> str | None``: Markdown on how round ``round_index``'s model was
    chosen (e.g. cross-validation scores), which ``vstk run``'s report shows under the
    round; None when there is nothing to say.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    config: Any

    def __init__(self, config: Any, workdir: Path) -> None:
        """Build from a config; ``workdir`` holds every model and intermediate file it writes."""

    def train(self, cases: Sequence[TrainingCase], *, round_index: int = 0,
              progress: ProgressFn | None = None) -> None:
        """Train on ``cases``; self-training round ``round_index`` gets its own results.

        :param cases: ear crops of the translated views with their ceT1 labels and, from
            round 1, of real hrT2 with pseudo labels (``pseudo_labelled=True``).
        :param round_index: 0 for the first model, k for the k-th self-training round.
        :param progress: called as ``progress(done, total, message)``.
        """

    def predict(self, images: Mapping[str, Volume], *, round_index: int = 0,
                progress: ProgressFn | None = None) -> list[Prediction]:
        """Predict every image with the model of ``round_index``.

        :param images: the images to segment, keyed by case id.
        :param round_index: which trained round's model to use.
        :param progress: called as ``progress(done, total, message)``.
        :returns: one :class:`Prediction` per image, with its case id, a label on the image's
            grid and, where the segmenter has them, class probabilities (the pseudo-labeler's
            input).
        """


@runtime_checkable
class PseudoLabeler(Protocol):
    """Chooses which predictions on real hrT2 become training labels.

    Attributes:
        name: the user-facing name (``vstk run --pseudo-labeler NAME``), unique among plugins.
        config_class: the frozen dataclass of the settings, constructible without arguments.
        config: the settings this instance uses (``vstk run`` records them with every
            self-training stage and refuses a rerun that changes them).

    Optional: a classmethod ``profile(name, **overrides)`` as for translators.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    config: Any

    def __init__(self, config: Any) -> None:
        """Build from a config of ``config_class``."""

    def select(self, predictions: Sequence[Prediction]) -> list[PseudoLabel]:
        """The predictions to train on, as pseudo labels.

        :param predictions: one per real hrT2 case, on the case's whole grid.
        :returns: a subset (possibly all, possibly none), each with the prediction's case id,
            a label on that case's grid and a confidence in [0, 1].
        """
