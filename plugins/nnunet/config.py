"""Settings of the nnU-Net v2 segmenter and its two profiles (``paper`` and ``cpu``).

Light module: no torch, no nnunetv2. Every field is flat so ``--set key=value`` reaches it.
"""

from __future__ import annotations

import dataclasses
import re
from typing import ClassVar, Sequence

from vstk.errors import ConfigError
from vstk.resources import CPU_PRECISIONS

#: nnU-Net's stock configurations, in the order its planner writes them and vstk trains them
#: (a cascade's low-resolution stage before the cascade)
CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")
#: ``configuration=planned``: every configuration nnU-Net planned for the data
PLANNED = "planned"
#: nnU-Net's cross-validation: five folds, 0 to 4 (``splits_final.json`` holds five splits)
NUM_FOLDS = 5
ALL_FOLDS = "all"
DEVICES = ("cpu", "cuda", "mps")
_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")


@dataclasses.dataclass(frozen=True)
class NnUNetConfig:
    """How vstk plans, trains and runs nnU-Net v2.

    Network (nnU-Net plans):
        configuration: the nnU-Net configuration to train: ``"2d"``, ``"3d_fullres"`` or
            ``"3d_lowres"``; or ``"planned"``: every configuration nnU-Net planned for the data
            (2d, 3d_fullres, and 3d_lowres + 3d_cascade_fullres where it plans them; needs
            numbered folds). ``"3d_cascade_fullres"`` needs its low-resolution stage: list
            both in ``configurations``.
        configurations: several stock configurations to train, e.g. ``("2d", "3d_fullres")``,
            each in every fold of ``folds``; it replaces ``configuration`` (None: use
            ``configuration``). With more than one configuration, nnU-Net's
            ``find_best_configuration`` picks one of them or a pair ensemble on
            cross-validation Dice.
        features_base: feature maps of the first stage; stage i gets ``min(features_max,
            features_base * 2**i)``. None keeps nnU-Net's planned widths (32 ... 320 in 3D).
        features_max: cap of the feature maps per stage (None: nnU-Net's cap, 320 3D / 512 2D).
        batch_size: patches per training step (None: nnU-Net's plan).
        patch_size: training patch in voxels, ``(z, y, x)`` for 3D or ``(y, x)`` for 2D, after
            nnU-Net's resampling; each axis must be divisible by the network's total stride on
            it (None: nnU-Net's plan).
        Any of these set makes vstk add a plans configuration that ``inherits_from`` the stock
        one (same preprocessed data, no re-preprocessing), e.g. ``3d_fullres_f8-64``.

    Dataset:
        dataset_id: nnU-Net dataset id of round 0; self-training round r uses ``dataset_id + r``.
        dataset_name: nnU-Net dataset name stem; round r is ``Dataset{id}_{dataset_name}_round{r}``.

    Cross-validation:
        folds: ``("all",)``: one model per configuration trained on every case (no
            validation, no choice); or nnU-Net fold numbers 0-4, e.g. ``(0, 1, 2, 3, 4)``: each
            fold trains on the cases of the other folds of a five-fold split written by vstk
            (``splits_final.json``: every view, ear and pseudo label of one subject in one
            fold), ends with nnU-Net's validation of its held-out cases (softmax saved), and
            prediction averages the folds. After the last fold, nnU-Net's
            ``find_best_configuration`` chooses among the configurations and their pair
            ensembles and decides the postprocessing (see :mod:`vstk_nnunet.selection`).

    Training (a subclass of ``nnUNetTrainer``, once per configuration and fold):
        num_epochs / iterations_per_epoch / val_iterations_per_epoch: nnU-Net's loop lengths.
        self_training_epochs: epochs of each self-training round (round >= 1); None: num_epochs.
            A warm-started round continues from trained weights and needs fewer.
        bf16_epoch_scale: factor on ``num_epochs`` when training runs in bfloat16 on a CPU
            (``cpu_precision``): bfloat16 trains an epoch in about half the time, so the same
            wall time buys more epochs there; 1: the same epochs in either arithmetic.
            ``self_training_epochs`` is not scaled.
        save_every: epochs between ``checkpoint_latest.pth`` writes (what a killed run resumes from).
        initial_lr: SGD learning rate at epoch 0 (poly decay to 0 over ``num_epochs``).
        oversample_foreground: fraction of each batch centred on a foreground voxel, in [0, 1].
        structure_intensity: probability, per labelled structure and training patch, of the
            label-guided structure intensity augmentation (the structure gets a random mean
            intensity and inner contrast; see ``vstk_nnunet.augmentation``); 0 = stock nnU-Net.
        structure_intensity_pseudo: the same probability for the real target images: the
            pseudo-labelled ones of the self-training rounds and the truth-labelled ones of
            ``vstk bench``'s supervised row (``TrainingCase.real_target``); None: as
            ``structure_intensity``. Their structures already look as they do on the test
            images, so 0 keeps that appearance to learn from.
        structure_intensity_invert: chance, in that augmentation, that the structure's inner
            contrast is inverted (cysts are dark in an enhancing tumour on ceT1, bright on hrT2).
        structure_intensity_texture: upper bound of a smooth random texture added inside the
            structure in that augmentation, as a fraction of the patch's intensity range
            (translated tumours are smoother than real, heterogeneous ones); 0: none.
        structure_intensity_vs_max: upper bound of the VS's new mean intensity in that
            augmentation, as a quantile of the patch (the others use 0.99). Below 0.99 it keeps
            the tumour out of the brightest part of the patch, where fluid (CSF, the internal
            auditory canal) lies on hrT2, while the translated views keep ceT1's bright tumour.
        structure_intensity_cochlea_min: lower bound of the cochlea's new mean intensity in that
            augmentation, as a quantile of the patch (the others use 0.01). Above 0.01 it draws
            the cochlea among the brightest voxels of the patch, as its fluid shows on hrT2,
            where the translated views leave it nearly as faint as on ceT1 (``cpu``: 0.75).
        fluid_rim: probability, per training patch of a translated view holding a VS, that a
            rim of bright fluid is drawn around the tumour (hrT2 outlines it with cerebrospinal
            fluid, where the views keep ceT1's dark fluid; see
            ``vstk_nnunet.augmentation.FluidRimTransform``); never on the real target images; 0: off.
        fluid_rim_erase: chance, given a rim is drawn, that the tumour is filled with the fluid
            too and labelled background (a canal or cistern without tumour); 0: never.
        intensity_remap: probability, per training patch of a translated view, that the whole
            patch goes through a random (possibly non-monotonic) intensity curve, so that the
            segmenter learns shapes and edges rather than the views' tissue intensity order
            (a translator may swap tissue classes); never on pseudo-labelled cases; 0: off.
        intensity_remap_points: control points of that piecewise linear curve (2: linear).
        warm_start: round r > 0 starts from round r-1's final weights instead of from scratch.
        seed: seeds python, numpy and torch at the start (and at every resume) of a round.
        cpu_precision: arithmetic of training on a CPU: ``"fp32"`` (stock nnU-Net, which
            turns autocast on for CUDA only), ``"bf16"`` (bfloat16 autocast for convolutions,
            network and batches in channels-last layout; losses, weights and the optimiser stay
            float32) or ``"auto"`` (bf16 where the CPU has bfloat16 matrix units, Intel AMX,
            else fp32). Prediction always runs in float32. CUDA training is unaffected.

    Inference:
        mirroring: test-time mirroring (averages up to 8 flips; about 7x slower on CPU).
        tile_step_size: sliding-window step as a fraction of the patch, in (0, 1].

    Resources:
        device: ``"cpu"``, ``"cuda"``, ``"mps"`` or None (CUDA when available, else CPU).
        num_gpus: GPUs for nnU-Net's own DistributedDataParallel training (one process per
            GPU, NCCL, CUDA only); 1 trains in this process. Prediction always uses one device.
        num_threads: torch threads of training and prediction in this process (None: torch's
            default, one per core). Lower it when other jobs share the cores: oversubscribed
            OpenMP threads slow small networks down many times over.
        n_proc_preprocessing: worker processes for fingerprinting and preprocessing (None: all
            CPUs); 1 preprocesses in this process (fingerprinting always uses nnU-Net's pool).
            Each spawned worker first imports torch and nnU-Net (5-10 s), so for a few dozen
            small crops 1 is the fastest. Also the workers of nnU-Net's model choice after
            cross-validation (gathering, ensembling, scoring, postprocessing); with 1, those
            and the final validation's pools are a thread of this process (see
            :func:`vstk_nnunet.environment.nnunet_pools_in_process`). nnU-Net's
            ``nnUNet_def_n_proc`` follows ``num_threads`` (it caps prediction threads and,
            otherwise, the workers of a fold's final validation).
        n_proc_da: data-augmentation worker processes during training (``nnUNet_n_proc_DA``);
            0 augments in the training process, the fastest on a 2-core machine; None:
            nnU-Net's own default (12, capped at the number of CPUs). Planning always runs
            with at least 1 (nnU-Net crashes with 0 there).
    """

    configuration: str = "3d_fullres"
    configurations: tuple[str, ...] | None = None
    folds: tuple[int | str, ...] = (ALL_FOLDS,)
    dataset_id: int = 501
    dataset_name: str = "VSTK"
    num_epochs: int = 1000
    self_training_epochs: int | None = None
    bf16_epoch_scale: float = 1.0
    iterations_per_epoch: int = 250
    val_iterations_per_epoch: int = 50
    save_every: int = 50
    initial_lr: float = 1e-2
    oversample_foreground: float = 0.33
    structure_intensity: float = 0.0
    structure_intensity_pseudo: float | None = None
    structure_intensity_invert: float = 0.0
    structure_intensity_texture: float = 0.0
    structure_intensity_vs_max: float = 0.99
    structure_intensity_cochlea_min: float = 0.01
    fluid_rim: float = 0.0
    fluid_rim_erase: float = 0.0
    intensity_remap: float = 0.0
    intensity_remap_points: int = 4
    features_base: int | None = None
    features_max: int | None = None
    batch_size: int | None = None
    patch_size: tuple[int, ...] | None = None
    mirroring: bool = True
    tile_step_size: float = 0.5
    device: str | None = None
    num_gpus: int = 1
    num_threads: int | None = None
    warm_start: bool = False
    n_proc_preprocessing: int | None = None
    n_proc_da: int | None = None
    seed: int = 0
    cpu_precision: str = "fp32"

    #: settings that do not change the trained model (see vstk.config.result_settings)
    execution_fields: ClassVar[frozenset[str]] = frozenset(
        {"device", "num_gpus", "num_threads", "n_proc_preprocessing", "n_proc_da", "save_every"})
    #: settings that only change the self-training rounds (not recorded with round 0's stage)
    self_training_fields: ClassVar[frozenset[str]] = frozenset(
        {"self_training_epochs", "structure_intensity_pseudo", "warm_start"})

    def __post_init__(self) -> None:
        if self.configuration not in (*CONFIGURATIONS, PLANNED):
            raise ConfigError(f"configuration={self.configuration!r} is not supported",
                              fix=f"use one of {', '.join((*CONFIGURATIONS, PLANNED))}, or list several in "
                                  "configurations")
        object.__setattr__(self, "folds", _checked_folds(self.folds))
        object.__setattr__(self, "configurations", _checked_configurations(self))
        if not 1 <= self.dataset_id <= 999:
            raise ConfigError(f"dataset_id={self.dataset_id} is outside nnU-Net's range 1..999",
                              fix="e.g. dataset_id=501")
        if not _DATASET_NAME.match(self.dataset_name):
            raise ConfigError(f"dataset_name={self.dataset_name!r} is not usable in nnU-Net folder names",
                              fix="use letters, digits and '-' only, e.g. dataset_name=VSTK")
        for name in ("num_epochs", "iterations_per_epoch", "val_iterations_per_epoch", "save_every", "num_gpus"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 1")
        for name in ("features_base", "features_max", "batch_size", "n_proc_preprocessing", "num_threads",
                     "self_training_epochs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name}={value} must be at least 1 (or none for nnU-Net's default)")
        if self.n_proc_da is not None and self.n_proc_da < 0:
            raise ConfigError(f"n_proc_da={self.n_proc_da} must be 0 or more (or none for nnU-Net's default)")
        if self.features_max is not None and self.features_base is None:
            raise ConfigError("features_max needs features_base", fix="set both, e.g. features_base=8 features_max=64")
        if self.features_base is not None and self.features_max is not None and self.features_max < self.features_base:
            raise ConfigError(f"features_max={self.features_max} is below features_base={self.features_base}")
        if self.patch_size is not None:
            _check_patch_size(self)
        if not 0.0 <= self.oversample_foreground <= 1.0:
            raise ConfigError(f"oversample_foreground={self.oversample_foreground} must be in [0, 1]")
        if not 0.0 <= self.structure_intensity <= 1.0:
            raise ConfigError(f"structure_intensity={self.structure_intensity} must be in [0, 1]",
                              fix="e.g. structure_intensity=0.5, or 0 for stock nnU-Net augmentation")
        if self.cpu_precision not in CPU_PRECISIONS:
            raise ConfigError(f"cpu_precision={self.cpu_precision!r} is not supported",
                              fix=f"use one of {', '.join(CPU_PRECISIONS)}")
        if self.structure_intensity_pseudo is not None and not 0.0 <= self.structure_intensity_pseudo <= 1.0:
            raise ConfigError(f"structure_intensity_pseudo={self.structure_intensity_pseudo} must be in [0, 1]",
                              fix="e.g. structure_intensity_pseudo=0, or none for the structure_intensity value")
        if not 0.0 <= self.structure_intensity_invert <= 1.0:
            raise ConfigError(f"structure_intensity_invert={self.structure_intensity_invert} must be in [0, 1]",
                              fix="e.g. structure_intensity_invert=0.5, or 0 to keep the inner contrast's sign")
        if not 0.0 <= self.structure_intensity_texture <= 1.0:
            raise ConfigError(f"structure_intensity_texture={self.structure_intensity_texture} must be in [0, 1]",
                              fix="e.g. structure_intensity_texture=0.3 (of the patch's intensity range), or 0")
        if not 0.0 <= self.fluid_rim <= 1.0:
            raise ConfigError(f"fluid_rim={self.fluid_rim} must be in [0, 1]",
                              fix="e.g. fluid_rim=0.5, or 0 for no fluid drawn around the tumour")
        if not 0.0 <= self.fluid_rim_erase <= 1.0:
            raise ConfigError(f"fluid_rim_erase={self.fluid_rim_erase} must be in [0, 1]",
                              fix="e.g. fluid_rim_erase=0.25, or 0 to keep every tumour")
        if not 0.0 <= self.intensity_remap <= 1.0:
            raise ConfigError(f"intensity_remap={self.intensity_remap} must be in [0, 1]",
                              fix="e.g. intensity_remap=0.5, or 0 for no intensity remapping")
        if self.intensity_remap_points < 2:
            raise ConfigError(f"intensity_remap_points={self.intensity_remap_points} must be 2 or more",
                              fix="e.g. intensity_remap_points=4 (2 keeps the curve linear)")
        if not 0.01 < self.structure_intensity_vs_max <= 0.99:
            raise ConfigError(f"structure_intensity_vs_max={self.structure_intensity_vs_max} must be in (0.01, 0.99]",
                              fix="e.g. structure_intensity_vs_max=0.75, or 0.99 for the full patch range")
        if not 0.01 <= self.structure_intensity_cochlea_min < 0.99:
            raise ConfigError(f"structure_intensity_cochlea_min={self.structure_intensity_cochlea_min} must be in "
                              f"[0.01, 0.99)",
                              fix="e.g. structure_intensity_cochlea_min=0.75, or 0.01 for the full patch range")
        if not 0.0 < self.tile_step_size <= 1.0:
            raise ConfigError(f"tile_step_size={self.tile_step_size} must be in (0, 1]")
        if self.initial_lr <= 0:
            raise ConfigError(f"initial_lr={self.initial_lr} must be positive")
        if not 0.0 < self.bf16_epoch_scale <= 100.0:
            raise ConfigError(f"bf16_epoch_scale={self.bf16_epoch_scale} must be in (0, 100]",
                              fix="e.g. bf16_epoch_scale=1 for the same epochs in bfloat16")
        if self.device == "cuda:0":
            object.__setattr__(self, "device", "cuda")
        if self.device is not None and self.device.startswith("cuda:"):
            raise ConfigError(f"device={self.device!r}: nnU-Net always trains on the first visible GPU",
                              fix=f"run with CUDA_VISIBLE_DEVICES={self.device[5:]} and device=cuda")
        if self.device is not None and self.device not in DEVICES:
            raise ConfigError(f"device={self.device!r} is not supported",
                              fix="use cpu, cuda or mps (pick a GPU with CUDA_VISIBLE_DEVICES)")
        if self.num_gpus > 1 and self.device not in (None, "cuda"):
            raise ConfigError(f"num_gpus={self.num_gpus} needs CUDA, but device={self.device!r}",
                              fix="set device=cuda or num_gpus=1")

    @property
    def cross_validation(self) -> bool:
        """True when numbered folds are trained (validation, model choice, postprocessing)."""
        return self.folds != (ALL_FOLDS,)

    def trained_configurations(self, planned: Sequence[str] = ()) -> tuple[str, ...]:
        """The stock configurations to train, in nnU-Net's order; ``planned``: the ones
        nnU-Net's plans hold (what ``configurations=planned`` stands for).

        A planned cascade is left out unless all five folds are trained: its training reads
        the low-resolution stage's validation predictions of every training case.
        """
        if self.configurations is not None:
            return self.configurations
        if self.configuration != PLANNED:
            return (self.configuration,)
        chosen = tuple(name for name in CONFIGURATIONS if name in planned)
        if "3d_cascade_fullres" in chosen and self.folds != tuple(range(NUM_FOLDS)):
            chosen = tuple(name for name in chosen if name != "3d_cascade_fullres")
        return chosen

    def epochs(self, round_index: int, bf16: bool = False) -> int:
        """Training epochs of self-training round ``round_index`` (0: the first segmenter);
        ``bf16``: training runs in bfloat16 on a CPU (``num_epochs`` times ``bf16_epoch_scale``)."""
        if round_index > 0 and self.self_training_epochs is not None:
            return self.self_training_epochs
        return max(1, round(self.num_epochs * self.bf16_epoch_scale)) if bf16 else self.num_epochs

    @property
    def customises_network(self) -> bool:
        """True when vstk must add its own plans configuration (any network setting given)."""
        return any(v is not None for v in (self.features_base, self.batch_size, self.patch_size))


def _checked_folds(folds: object) -> tuple[int | str, ...]:
    """``folds`` as a tuple: ``("all",)`` or distinct fold numbers 0-4, ascending."""
    fix = "use folds=0,1,2,3,4 (five-fold cross-validation), a few of them (e.g. folds=0,1), or folds=all"
    items = [t.strip() for t in folds.split(",")] if isinstance(folds, str) else list(folds)  # type: ignore[attr-defined]
    shown = ",".join(str(f) for f in items)
    if not items:
        raise ConfigError("folds is empty", fix=fix)
    if any(str(f).lower() == ALL_FOLDS for f in items):
        if len(items) > 1:
            raise ConfigError(f"folds={shown}: 'all' (one model on every case) cannot be mixed with numbered folds",
                              fix=fix)
        return (ALL_FOLDS,)
    numbers = []
    for fold in items:
        if isinstance(fold, str) and fold.strip().isdigit():
            fold = int(fold)
        if isinstance(fold, bool) or not isinstance(fold, int):
            raise ConfigError(f"folds={shown}: {fold!r} is not a fold number", fix=fix)
        if not 0 <= fold < NUM_FOLDS:
            raise ConfigError(f"folds={shown}: nnU-Net's cross-validation has the folds 0 to {NUM_FOLDS - 1}", fix=fix)
        numbers.append(fold)
    if len(set(numbers)) != len(numbers):
        raise ConfigError(f"folds={shown} names a fold twice", fix=fix)
    return tuple(sorted(numbers))


def _checked_configurations(config: NnUNetConfig) -> tuple[str, ...] | None:
    """``configurations`` in nnU-Net's order (None stays None), after checking that they can be
    trained together with ``folds`` and agree with ``configuration``."""
    names = config.configurations
    if isinstance(names, str):
        names = tuple(t.strip() for t in names.split(",") if t.strip())
    if names is not None:
        names = tuple(names)
        shown = ",".join(names)
        if not names:
            raise ConfigError("configurations is empty",
                              fix=f"list some of {', '.join(CONFIGURATIONS)}, or configurations=none to train "
                                  "configuration only")
        if PLANNED in names:
            raise ConfigError(f"configurations={shown}: {PLANNED!r} is a value of configuration",
                              fix=f"set configuration={PLANNED} configurations=none, or list the configurations")
        unknown = [n for n in names if n not in CONFIGURATIONS]
        if unknown:
            raise ConfigError(f"configurations={shown}: {', '.join(map(repr, unknown))} is not an nnU-Net configuration",
                              fix=f"use {', '.join(CONFIGURATIONS)}")
        if len(set(names)) != len(names):
            raise ConfigError(f"configurations={shown} names a configuration twice", fix="list each once")
        names = tuple(sorted(names, key=CONFIGURATIONS.index))
    trained = names if names is not None else (config.configuration,)
    if "3d_cascade_fullres" in trained:
        if "3d_lowres" not in trained:
            raise ConfigError("3d_cascade_fullres needs its low-resolution stage 3d_lowres",
                              fix="set configurations=3d_lowres,3d_cascade_fullres (or add 3d_lowres to the list)")
        if config.folds != tuple(range(NUM_FOLDS)):
            raise ConfigError(f"3d_cascade_fullres needs folds=0,1,2,3,4, not folds="
                              f"{','.join(map(str, config.folds))}: it trains on 3d_lowres's cross-validation "
                              "predictions of every case",
                              fix="set folds=0,1,2,3,4, or leave 3d_cascade_fullres out")
    if (len(trained) > 1 or trained == (PLANNED,)) and config.folds == (ALL_FOLDS,):
        setting = "configuration" if trained == (PLANNED,) else "configurations"
        raise ConfigError(f"{setting}={','.join(trained)} with folds=all: choosing between configurations "
                          "needs cross-validation",
                          fix="set folds=0,1,2,3,4 (or fewer, e.g. folds=0,1 on a CPU), or train one configuration")
    return names


def _check_patch_size(config: NnUNetConfig) -> None:
    """A patch size fits one kind of configuration: 3 axes for 3D ones, 2 for ``2d``."""
    trained = config.configurations or (config.configuration,)
    if trained == (PLANNED,) or len({name == "2d" for name in trained}) > 1:
        raise ConfigError(f"patch_size={'x'.join(map(str, config.patch_size))} cannot fit 2D and 3D configurations "
                          f"at once (configurations={','.join(trained)})",
                          fix="set patch_size=none (nnU-Net's plan for each), or train only 2D or only 3D ones")
    wanted = 2 if trained[0] == "2d" else 3
    if len(config.patch_size) != wanted or min(config.patch_size) < 1:
        raise ConfigError(f"patch_size={config.patch_size} needs {wanted} positive sizes for {','.join(trained)}",
                          fix="e.g. patch_size=24x64x64 (3D configurations) or patch_size=64x64 (2d)")


#: Stock nnU-Net as in Kang et al. (for GPUs): every planned configuration in five-fold
#: cross-validation, nnU-Net's ensemble selection and postprocessing, 1000 x 250 iterations,
#: mirroring, every round trained from scratch.
PAPER = NnUNetConfig(configuration=PLANNED, folds=tuple(range(NUM_FOLDS)))

#: A narrow 2D U-Net for the ear boxes, sized for `vstk run` to fit 15 minutes on 2 CPU cores, with
#: the label-guided structure intensity augmentation (beyond the paper: ``paper`` keeps stock
#: nnU-Net). Why each value, with the measurements in docs/results.md:
#:   2d, features 16..128, batch 12: nnU-Net's planned batch 47 takes 4.6 times as long per
#:     iteration (docs/results.md#nnu-net-budget-on-2-cpu-cores);
#:   initial_lr 0.03: 0.01 learns nothing in a few hundred iterations (the same anchor);
#:   40 + 16 epochs x 25 iterations, warm start: the cochlea needs about 800 iterations, and
#:     bfloat16 made 1000 + 400 fit the budget (the same anchor, docs/results.md#cpu-flags-amx-or-not);
#:   bf16_epoch_scale 1.25: with AMX, round 0 trains 50 epochs in less time than float32 trains 40;
#:     round 0 then learnt the cochlea on every pool tried; 1.5 scored no higher and left too little
#:     of the 15 minutes on a slow day (docs/results.md#round-0-epochs-with-amx);
#:   oversample_foreground 0.66: the tiny cochleae are learnt sooner (the same anchor);
#:   structure_intensity 1: the views carry the structures at wrong intensities
#:     (docs/results.md#structure_intensity);
#:   structure_intensity_pseudo 0: round 1 >= round 0 for all five seeds
#:     (docs/results.md#structure_intensity_pseudo);
#:   structure_intensity_cochlea_min 0.75: the cochlea drawn as bright as hrT2 shows its fluid;
#:     round 0 learnt it on all five pools of the judging phantoms, cochlea Dice +0.04..+0.15
#:     (docs/results.md#the-cochlea-drawn-bright-in-the-augmentation);
#:   num_threads None (all cores), n_proc_da 0: the fastest on 2 idle cores
#:     (docs/results.md#nnu-net-budget-on-2-cpu-cores); set num_threads=1 on a shared machine;
#:   cpu_precision auto: bfloat16 where the CPU has AMX, 1.67 times faster
#:     (docs/results.md#cpu-flags-amx-or-not);
#:   mirroring off, n_proc_preprocessing 1: see their entries above (7x slower prediction; worker
#:     start-up); val_iterations_per_epoch 2, save_every 4: little time outside training (not measured).
CPU = NnUNetConfig(
    configuration="2d",
    num_epochs=40,
    bf16_epoch_scale=1.25,
    self_training_epochs=16,
    iterations_per_epoch=25,
    val_iterations_per_epoch=2,
    save_every=4,
    features_base=16,
    features_max=128,
    batch_size=12,
    initial_lr=3e-2,
    oversample_foreground=0.66,
    structure_intensity=1.0,
    structure_intensity_pseudo=0.0,
    structure_intensity_cochlea_min=0.75,
    mirroring=False,
    device="cpu",
    num_threads=None,
    warm_start=True,
    n_proc_preprocessing=1,
    n_proc_da=0,
    cpu_precision="auto",
)

PROFILES: dict[str, NnUNetConfig] = {"paper": PAPER, "cpu": CPU}
