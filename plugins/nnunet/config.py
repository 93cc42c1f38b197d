"""Settings of the nnU-Net v2 segmenter and its two profiles (``paper`` and ``cpu``).

Light module: no torch, no nnunetv2. Every field is flat so ``--set key=value`` reaches it.
"""

from __future__ import annotations

import dataclasses
import re
from typing import ClassVar

from vstk.errors import ConfigError

CONFIGURATIONS = ("3d_fullres", "2d")
DEVICES = ("cpu", "cuda", "mps")
CPU_PRECISIONS = ("fp32", "bf16", "auto")
_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")


@dataclasses.dataclass(frozen=True)
class NnUNetConfig:
    """How vstk plans, trains and runs nnU-Net v2.

    Network (nnU-Net plans):
        configuration: the stock nnU-Net configuration to start from, ``"3d_fullres"`` or ``"2d"``.
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

    Training (a subclass of ``nnUNetTrainer``, fold ``all``):
        num_epochs / iterations_per_epoch / val_iterations_per_epoch: nnU-Net's loop lengths.
        self_training_epochs: epochs of each self-training round (round >= 1); None: num_epochs.
            A warm-started round continues from trained weights and needs fewer.
        save_every: epochs between ``checkpoint_latest.pth`` writes (what a killed run resumes from).
        initial_lr: SGD learning rate at epoch 0 (poly decay to 0 over ``num_epochs``).
        oversample_foreground: fraction of each batch centred on a foreground voxel, in [0, 1].
        structure_intensity: probability, per labelled structure and training patch, of the
            label-guided structure intensity augmentation (the structure gets a random mean
            intensity and inner contrast; see ``vstk_nnunet.augmentation``); 0 = stock nnU-Net.
        structure_intensity_pseudo: the same probability for the pseudo-labelled real target
            images of the self-training rounds (``TrainingCase.pseudo_labelled``); None: as
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
            small crops 1 is the fastest. nnU-Net's ``nnUNet_def_n_proc`` follows
            ``num_threads`` (it caps prediction threads).
        n_proc_da: data-augmentation worker processes during training (``nnUNet_n_proc_DA``);
            0 augments in the training process, the fastest on a 2-core machine; None:
            nnU-Net's own default (12, capped at the number of CPUs). Planning always runs
            with at least 1 (nnU-Net crashes with 0 there).
    """

    configuration: str = "3d_fullres"
    dataset_id: int = 501
    dataset_name: str = "VSTK"
    num_epochs: int = 1000
    self_training_epochs: int | None = None
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
        if self.configuration not in CONFIGURATIONS:
            raise ConfigError(f"configuration={self.configuration!r} is not supported",
                              fix=f"use one of {', '.join(CONFIGURATIONS)}")
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
            wanted = 3 if self.configuration == "3d_fullres" else 2
            if len(self.patch_size) != wanted or min(self.patch_size) < 1:
                raise ConfigError(f"patch_size={self.patch_size} needs {wanted} positive sizes for "
                                  f"{self.configuration}",
                                  fix="e.g. patch_size=24x64x64 (3d_fullres) or patch_size=64x64 (2d)")
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
        if not 0.0 <= self.intensity_remap <= 1.0:
            raise ConfigError(f"intensity_remap={self.intensity_remap} must be in [0, 1]",
                              fix="e.g. intensity_remap=0.5, or 0 for no intensity remapping")
        if self.intensity_remap_points < 2:
            raise ConfigError(f"intensity_remap_points={self.intensity_remap_points} must be 2 or more",
                              fix="e.g. intensity_remap_points=4 (2 keeps the curve linear)")
        if not 0.01 < self.structure_intensity_vs_max <= 0.99:
            raise ConfigError(f"structure_intensity_vs_max={self.structure_intensity_vs_max} must be in (0.01, 0.99]",
                              fix="e.g. structure_intensity_vs_max=0.75, or 0.99 for the full patch range")
        if not 0.0 < self.tile_step_size <= 1.0:
            raise ConfigError(f"tile_step_size={self.tile_step_size} must be in (0, 1]")
        if self.initial_lr <= 0:
            raise ConfigError(f"initial_lr={self.initial_lr} must be positive")
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

    def epochs(self, round_index: int) -> int:
        """Training epochs of self-training round ``round_index`` (0: the first segmenter)."""
        if round_index > 0 and self.self_training_epochs is not None:
            return self.self_training_epochs
        return self.num_epochs

    @property
    def customises_network(self) -> bool:
        """True when vstk must add its own plans configuration (any network setting given)."""
        return any(v is not None for v in (self.features_base, self.batch_size, self.patch_size))


#: Stock nnU-Net 3d_fullres as in Kang et al. (for GPUs): 1000 x 250 iterations, mirroring,
#: every round trained from scratch.
PAPER = NnUNetConfig()

#: A narrow 2D U-Net for the ear boxes, sized for `vstk run` to fit 15 minutes on 2 CPU cores, with
#: the label-guided structure intensity augmentation (beyond the paper: ``paper`` keeps stock
#: nnU-Net). Why each value, with the measurements in docs/results.md:
#:   2d, features 16..128, batch 12: nnU-Net's planned batch 47 takes 4.6 times as long per
#:     iteration (docs/results.md#nnu-net-budget-on-2-cpu-cores);
#:   initial_lr 0.03: 0.01 learns nothing in a few hundred iterations (the same anchor);
#:   40 + 16 epochs x 25 iterations, warm start: the cochlea needs about 800 iterations, and
#:     bfloat16 made 1000 + 400 fit the budget (the same anchor, docs/results.md#cpu-flags-amx-or-not);
#:   oversample_foreground 0.66: the tiny cochleae are learnt sooner (the same anchor);
#:   structure_intensity 1: the views carry the structures at wrong intensities
#:     (docs/results.md#structure_intensity);
#:   structure_intensity_pseudo 0: round 1 >= round 0 for all five seeds
#:     (docs/results.md#structure_intensity_pseudo);
#:   num_threads None (all cores), n_proc_da 0: the fastest on 2 idle cores
#:     (docs/results.md#nnu-net-budget-on-2-cpu-cores); set num_threads=1 on a shared machine;
#:   cpu_precision auto: bfloat16 where the CPU has AMX, 1.67 times faster
#:     (docs/results.md#cpu-flags-amx-or-not);
#:   mirroring off, n_proc_preprocessing 1: see their entries above (7x slower prediction; worker
#:     start-up); val_iterations_per_epoch 2, save_every 4: little time outside training (not measured).
CPU = NnUNetConfig(
    configuration="2d",
    num_epochs=40,
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
    mirroring=False,
    device="cpu",
    num_threads=None,
    warm_start=True,
    n_proc_preprocessing=1,
    n_proc_da=0,
    cpu_precision="auto",
)

PROFILES: dict[str, NnUNetConfig] = {"paper": PAPER, "cpu": CPU}
