"""The shared translator implementation plugins build on.

A translator plugin subclasses :class:`SliceTranslator`, declares its config dataclass
(extending :class:`TranslatorConfig`) and profiles, and implements :meth:`build_model`
(its training step) and :meth:`build_generator` (its inference network). Slicing,
normalisation, the training loop, checkpoints and volume translation live here, once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

import numpy as np

from ..config import apply_overrides, select_profile, to_json_dict
from ..errors import CheckpointError, ConfigError, InputError
from ..geometry import SliceGeometry, from_slices
from ..protocols import ProgressFn
from ..resources import CPU_PRECISIONS, cpu_trains_in_bf16
from ..roi import DEFAULT_OFFSET_MM, EarRule
from ..volume import Volume
from .data import SliceOptions, SliceSet, normalised_slices, robust_normalisation, sub_volume
from .schedule import TrainSchedule

if TYPE_CHECKING:  # torch is imported only by the methods that run networks
    from torch import nn

    from .distributed import DistContext
    from .trainer import TrainableModel

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TranslatorConfig:
    """Settings every slice translator shares (flat, so each is a ``--set key=value``).

    Slices: ``size`` N (pixels), ``spacing`` (mm, x y) the slice is resampled to, ``crop``
    (pixels at ``spacing`` before resizing to N; None = N), ``centre`` ("head", "volume", or
    "ears": one slice frame per ear at ``ear_offset_mm`` from the grid centre, see vstk.roi);
    ``focus_mm`` > 0 makes the slices within that distance of an ear-box centre (the cochlea,
    the canal and the tumour around it) ``focus_share`` of the training draws.
    Training: ``steps`` at the initial rate then ``decay_steps`` linear decay (or ``epochs`` /
    ``decay_epochs`` over the larger slice set, as the official code counts them),
    ``batch_size``, Adam ``lr``/``beta1``/``beta2``, ``checkpoint_every``, ``sample_every``,
    ``seed``, ``flip``, ``train_crop`` (random square windows of the slices per step, None =
    whole slices), ``cpu_precision`` (``fp32``; ``bf16``: training steps on a CPU under
    bfloat16 autocast; ``auto``: bfloat16 where the CPU has AMX), ``bf16_step_scale`` (the
    factor on ``steps`` and ``decay_steps`` when training does run in bfloat16: the faster
    steps buy more of them in the same time). Networks: ``ngf``, ``n_blocks``, ``ndf``, ``n_layers_d``, ``norm``,
    ``init_type``, ``init_gain``. Inference: ``translate_batch`` slices at a time.
    Pool: ``grey_tumour`` translates each labelled ceT1 with its VS brought down to the
    head's soft-tissue level first (:func:`vstk.translation.structures.grey_tumour`), so
    the view shows it grey as hrT2 does; the trained translator is the same either way.
    """

    size: int = 256
    spacing: tuple[float, float] = (0.41, 0.41)
    crop: int | None = None
    centre: str = "head"
    ear_offset_mm: tuple[float, float, float] = DEFAULT_OFFSET_MM
    focus_mm: float = 0.0
    focus_share: float = 0.5
    steps: int = 1000
    decay_steps: int = 1000
    epochs: int | None = None
    decay_epochs: int | None = None
    batch_size: int = 1
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    checkpoint_every: int = 250
    sample_every: int = 500
    seed: int = 0
    flip: bool = True
    train_crop: int | None = None
    ngf: int = 64
    n_blocks: int = 9
    ndf: int = 64
    n_layers_d: int = 3
    norm: str = "instance"
    init_type: str = "normal"
    init_gain: float = 0.02
    translate_batch: int = 8
    grey_tumour: bool = False
    cpu_precision: str = "fp32"
    bf16_step_scale: float = 1.0

    #: settings that do not change the trained translator (see vstk.config.result_settings)
    execution_fields: ClassVar[frozenset[str]] = frozenset({"checkpoint_every", "sample_every", "translate_batch"})

    def __post_init__(self) -> None:
        if self.size % 4:
            raise ConfigError(f"size={self.size} must be a multiple of 4 (two 2x down/upsamplings)",
                              fix=f"e.g. size={self.size - self.size % 4}")
        if self.centre not in ("head", "volume", "ears"):
            raise ConfigError(f"centre={self.centre!r} is not allowed", fix="use head, volume or ears")
        if self.focus_mm < 0 or not 0.0 < self.focus_share < 1.0:
            raise ConfigError(f"focus_mm={self.focus_mm}, focus_share={self.focus_share}: the focus needs "
                              "focus_mm >= 0 and a share between 0 and 1",
                              fix="e.g. focus_mm=6 focus_share=0.5, or focus_mm=0 for no focus")
        if self.translate_batch < 1:
            raise ConfigError("translate_batch must be at least 1")
        if self.cpu_precision not in CPU_PRECISIONS:
            raise ConfigError(f"cpu_precision={self.cpu_precision!r} is not supported",
                              fix=f"use one of {', '.join(CPU_PRECISIONS)}")
        if not 0.0 < self.bf16_step_scale <= 100.0:
            raise ConfigError(f"bf16_step_scale={self.bf16_step_scale} must be in (0, 100]",
                              fix="e.g. bf16_step_scale=1 for the same steps in bfloat16")
        if self.train_crop is not None and (self.train_crop < 8 or self.train_crop % 4):
            raise ConfigError(f"train_crop={self.train_crop} must be a multiple of 4 and at least 8",
                              fix="e.g. train_crop=64, or none for whole slices")
        if self.train_crop is not None and self.train_crop > self.size:
            raise ConfigError(f"train_crop={self.train_crop} is larger than the slices (size={self.size})",
                              fix=f"use train_crop <= {self.size}, or none")

    def slice_options(self) -> SliceOptions:
        return SliceOptions(SliceGeometry(self.size, self.spacing, self.crop), self.centre,
                            EarRule(offset_mm=self.ear_offset_mm), focus_mm=self.focus_mm)

    def schedule(self, num_slices: int = 0, *, bf16: bool = False) -> TrainSchedule:
        """The training schedule; ``bf16``: the steps run under bfloat16 autocast, so
        ``steps`` and ``decay_steps`` (or the epochs' steps) are scaled by ``bf16_step_scale``."""
        steps, decay = self.steps, self.decay_steps
        if self.epochs is not None:
            steps = self.epochs * num_slices
        if self.decay_epochs is not None:
            decay = self.decay_epochs * num_slices
        if bf16:
            steps, decay = round(steps * self.bf16_step_scale), round(decay * self.bf16_step_scale)
        return TrainSchedule(steps, decay, self.batch_size, self.lr, self.beta1, self.beta2,
                             self.checkpoint_every, self.sample_every, self.seed, self.flip, self.train_crop, bf16)

    def trains_in_bf16(self, device: str) -> bool:
        """Whether training on ``device`` runs under bfloat16 autocast (``cpu_precision``)."""
        import torch

        return torch.device(device).type == "cpu" and cpu_trains_in_bf16(self.cpu_precision)


#: The slice draws, pool views and CPU arithmetic every translator's ``cpu`` profile shares, so that `vstk bench`
#: compares translators at the same settings (unpack into the profile: ``CPUConfig(..., **CPU_VIEWS)``):
#:   focus_mm 5, focus_share 0.75: three quarters of the training slices drawn within 5 mm of the
#:     ear-box centres, where the cochlea is: the views draw it and the segmenter learns it in round 0
#:     on the judging seeds (docs/results.md#slices-near-the-ears-drawn-more-often);
#:   grey_tumour: the pool's views are translated from ceT1 with the VS brought down to soft tissue, so
#:     they show hrT2's grey tumour; with the cochlea drawn bright by nnU-Net's augmentation it raised
#:     VS Dice on all five judging pools (docs/results.md#the-tumour-brought-down-with-the-cochlea-drawn-bright);
#:   with nnU-Net's cochlea bound they beat the profile before them (0.652 against 0.542) on a phantom
#:     used for no decision
#:     (docs/results.md#a-fourth-judging-phantom-never-used-for-any-decision-104);
#:   cpu_precision auto, bf16_step_scale 2: on a CPU with AMX the steps run in bfloat16 (CycleGAN 1.4,
#:     QS-Attn 1.1 times faster a step) and twice as many of them fit the 15 minutes the run has there;
#:     the views then draw the cochlea bright and the canal's fluid around a grey tumour
#:     (docs/results.md#translators-in-bfloat16-with-twice-the-steps); without AMX nothing changes.
#: Read-only.
CPU_VIEWS: Mapping[str, Any] = MappingProxyType({"focus_mm": 5.0, "focus_share": 0.75, "grey_tumour": True,
                                                 "cpu_precision": "auto", "bf16_step_scale": 2.0})


def pick_device(device: str | None = None) -> str:
    """``device`` or, when None, CUDA if available else CPU."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class SliceTranslator:
    """Base of the in-tree and example translator plugins (implements vstk.Translator).

    Attributes:
        config: the settings in use (after :meth:`load`: those the checkpoint was trained with).
        device: where the networks run (``"cpu"``, ``"cuda:0"``, ...).
        checkpoint: the file the current weights came from (:meth:`train` loads its final
            checkpoint, :meth:`load` and :meth:`load_official` the given one); None while
            the instance has no weights. This is what ``vstk.Translator`` declares.
        generator: the inference network, in eval mode on ``device``, set together with
            ``checkpoint`` (None before). Kept for code that reads it; whether a translator
            has weights is ``checkpoint is not None`` (the protocol's member).
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = TranslatorConfig
    profiles: ClassVar[dict[str, Any]] = {}

    @classmethod
    def profile(cls, name: str, **overrides: Any) -> Any:
        """The named profile's config, with ``overrides`` (strings are coerced)."""
        return select_profile(cls.profiles, name, overrides, owner=f"translator {cls.name!r}")

    def __init__(self, config: Any = None, device: str | None = None) -> None:
        self.config = config if config is not None else self.profile("cpu")
        if not isinstance(self.config, self.config_class):
            raise ConfigError(f"{type(self.config).__name__} is not a config of translator {self.name!r}",
                              fix=f"pass a {self.config_class.__name__}")
        self.device = pick_device(device)
        self.generator: nn.Module | None = None
        self.checkpoint: Path | None = None

    # -- what a plugin implements ---------------------------------------------------------
    def build_model(self) -> TrainableModel:
        """The trainable model (networks, optimisers, one training step)."""
        raise NotImplementedError

    def build_generator(self) -> nn.Module:
        """The ceT1 -> hrT2 network used at inference (weights from ``generator_state``)."""
        raise NotImplementedError

    # -- training -------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        return {"translator": self.name, "config": to_json_dict(self.config)}

    def train(self, source: Sequence[Volume] | SliceSet, target: Sequence[Volume] | SliceSet,
              workdir: str | Path, *, progress: ProgressFn | None = None, stop_after: int | None = None,
              distributed: DistContext | None = None) -> Path:
        """Train on unpaired ceT1 (``source``) and hrT2 (``target``) volumes or slice sets.

        Resumes from ``workdir`` when it holds a checkpoint of an interrupted run; returns the
        final checkpoint ``workdir/translator.pt``. ``distributed`` makes this process one rank
        of a data-parallel job (torchrun; see :mod:`vstk.translation.distributed`): every rank
        calls this with the same data and gets the same weights; only rank 0 writes files.
        """
        from .distributed import rank_device
        from .trainer import seed_everything, train

        if distributed is not None and distributed.active:
            self.device = str(rank_device(self.device, distributed))  # build the model on this rank's GPU

        options = self.config.slice_options()
        if not isinstance(source, SliceSet):
            source = SliceSet.from_volumes(source, options, focus_share=self.config.focus_share)
        if not isinstance(target, SliceSet):
            target = SliceSet.from_volumes(target, options, focus_share=self.config.focus_share)
        if source.size != self.config.size or target.size != self.config.size:
            raise InputError(f"slice sets are {source.size}/{target.size} px, config size is {self.config.size}")
        schedule = self.config.schedule(max(len(source), len(target)), bf16=self.config.trains_in_bf16(self.device))
        seed_everything(schedule.seed)  # initial weights depend on the seed only
        model = self.build_model()
        path = train(model, source, target, workdir, schedule, device=self.device, meta=self.metadata(),
                     progress=progress, stop_after=stop_after, distributed=distributed)
        if path.name.endswith("translator.pt"):
            self.load(path)
        return path

    # -- inference ------------------------------------------------------------------------
    def load(self, checkpoint: str | Path) -> None:
        """Load a final checkpoint written by :meth:`train` (``translator.pt``)."""
        from .checkpoint import FORMAT, load_checkpoint

        state = load_checkpoint(checkpoint, map_location="cpu")
        if state.get("format") != FORMAT:
            raise CheckpointError("not a vstk translator checkpoint", path=checkpoint,
                                  fix="official generator weights load with `vstk translate apply --official`")
        if state.get("kind") != "translator":
            raise CheckpointError("this is a training checkpoint (latest.pt), not a finished translator",
                                  path=checkpoint, fix="finish training, then use translator.pt")
        if state.get("translator") != self.name:
            raise CheckpointError(f"checkpoint of translator {state.get('translator')!r}, not {self.name!r}",
                                  path=checkpoint, fix=f"use --translator {state.get('translator')}")
        meta = json.loads(state.get("meta", "{}"))
        saved = meta.get("config", {})
        if saved:
            self.config = apply_overrides(self.config_class(), saved)
        generator = self.build_generator()
        try:
            generator.load_state_dict(state["generator"])
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            raise CheckpointError(f"generator weights do not fit the architecture ({' '.join(first[:2])[:240]})",
                                  path=checkpoint, fix="use the config the checkpoint was trained with") from None
        self.generator = generator.to(self.device).eval()
        self.checkpoint = Path(checkpoint)

    #: whether official checkpoints of this translator use anti-aliased sampling (CUT family)
    official_antialias: ClassVar[bool] = False

    def load_official(self, checkpoint: str | Path) -> None:
        """Load a generator state dict saved by the official CycleGAN / CUT / QS-Attn code
        (``latest_net_G_A.pth``, ``latest_net_G.pth``).

        The architecture (ngf, blocks, norm, input/output channels) is read from the tensor
        shapes; a 3-channel checkpoint is used on grayscale by replicating the input channel
        and averaging the output channels. Loaded with ``weights_only=True``.
        """
        from .checkpoint import load_checkpoint
        from .networks import ResnetGenerator

        state = load_checkpoint(checkpoint, map_location="cpu")
        if "format" in state:
            raise CheckpointError("this is a vstk checkpoint, not an official state dict", path=checkpoint,
                                  fix="load it without --official")
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
        arch = official_architecture(state)
        if arch is None:
            raise CheckpointError("not a ResnetGenerator state dict (no model.1.weight)", path=checkpoint,
                                  fix="pass the generator file, e.g. latest_net_G_A.pth or latest_net_G.pth")
        if arch["antialias"] != self.official_antialias:
            family = "CUT/QS-Attn (anti-aliased)" if arch["antialias"] else "CycleGAN (strided)"
            raise CheckpointError(f"checkpoint is a {family} generator; translator {self.name!r} uses the other layout",
                                  path=checkpoint, fix="use --translator qsattn for CUT/QS-Attn weights, "
                                                       "cyclegan for CycleGAN weights")
        self.config = dataclasses.replace(self.config, ngf=arch["ngf"], n_blocks=arch["n_blocks"], norm=arch["norm"])
        generator = ResnetGenerator(arch["input_nc"], arch["output_nc"], arch["ngf"], arch["n_blocks"],
                                    arch["norm"], antialias=arch["antialias"])
        try:
            generator.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(f"state dict does not fit the inferred architecture {arch} "
                                  f"({str(exc).strip().splitlines()[0][:200]})", path=checkpoint,
                                  fix="check the file is an unmodified official generator") from None
        self.generator = generator.to(self.device).eval()
        self.checkpoint = Path(checkpoint)

    def _require_generator(self) -> nn.Module:
        if self.generator is None:
            raise CheckpointError("translator has no weights yet", fix="train it or load a checkpoint first")
        return self.generator

    def translate_batch(self, slices: np.ndarray) -> np.ndarray:
        """Translate ceT1 slices ``[B, N, N]`` in [-1, 1] to pseudo-hrT2 slices, same shape."""
        import torch

        generator = self._require_generator()
        with torch.no_grad():
            return self._run_generator(generator, slices)

    def _run_generator(self, generator: nn.Module, slices: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))[:, None].to(self.device)
        input_nc = getattr(generator, "input_nc", 1)
        if input_nc != 1:  # 3-channel official weights used on grayscale: replicate the channel
            x = x.expand(-1, input_nc, -1, -1)
        y = generator(x)
        return y.mean(dim=1).float().cpu().numpy()

    def translate_volume(self, volume: Volume, *, progress: ProgressFn | None = None) -> Volume:
        """Translate a ceT1 volume slice by slice onto its own grid (same geometry and shape).

        Streams ``translate_batch`` slices at a time, so memory is bounded by a batch (plus
        the output volume). Output intensities are [0, 1000] (translated [-1, 1] scaled);
        voxels outside every translated frame are 0.
        """
        options = self.config.slice_options()
        regions = options.regions(volume)
        norm = robust_normalisation(volume, options.percentiles)
        out = np.zeros(volume.shape, dtype=np.float32)
        batch = self.config.translate_batch
        total = sum(frame.num_slices for _, frame in regions)
        done = 0
        for zs, frame in regions:
            part = sub_volume(volume, zs)
            target = out[zs]
            for start in range(0, frame.num_slices, batch):
                stop = min(start + batch, frame.num_slices)
                slices = normalised_slices(part, options, start, stop, frame=frame, norm=norm)
                translated = (self.translate_batch(slices) + 1.0) * 500.0
                merged = from_slices(translated, frame, start=start, fill=np.nan)
                covered = ~np.isnan(merged)
                target[start:stop][covered] = merged[covered]
                done += stop - start
                if progress is not None:
                    progress(done, total, "slices")
        return volume.with_array(out)


def official_architecture(state: dict[str, Any]) -> dict[str, Any] | None:
    """Architecture of an official ResnetGenerator state dict, from its keys and shapes."""
    first = state.get("model.1.weight")
    if first is None or getattr(first, "dim", lambda: 0)() != 4:
        return None
    indices = sorted({int(k.split(".")[1]) for k in state if k.startswith("model.")})
    last_conv = max(i for i in indices if f"model.{i}.weight" in state and state[f"model.{i}.weight"].dim() == 4)
    blocks = {int(k.split(".")[1]) for k in state if ".conv_block." in k}
    norm = "batch" if any(k.endswith("running_mean") for k in state) else "instance"
    return {
        "input_nc": int(first.shape[1]),
        "output_nc": int(state[f"model.{last_conv}.weight"].shape[0]),
        "ngf": int(first.shape[0]),
        "n_blocks": len(blocks),
        "antialias": any(k.endswith(".filt") for k in state),
        "norm": norm,
    }
