"""``NnUNetSegmenter``: vstk's Segmenter protocol on a real nnU-Net v2, driven in-process.

Light at import (no torch, no nnunetv2): the methods import what they run. See
:mod:`vstk_nnunet.layout` for the files a job writes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from vstk.config import select_profile
from vstk.errors import ConfigError, InputError
from vstk.protocols import Prediction, ProgressFn, TrainingCase
from vstk.volume import Volume

from .config import PROFILES, NnUNetConfig
from .environment import (
    n_proc_preprocessing,
    nnunet_default_n_proc,
    nnunet_environment,
    nnunet_prints_to_log,
    refuse_in_worker_bootstrap,
    resolve_device,
    torch_threads,
    trains_in_bf16,
)
from .errors import NotTrainedError
from .layout import FINAL_CHECKPOINT, RESUME_CHECKPOINTS, RoundLayout, read_json, remove_round, round_layout
from .lock import WorkdirLock
from .planning import add_network_configuration, network_configuration, plan_round, preprocess_round
from .raw_dataset import case_digest, read_case_manifest, validate_cases, write_raw_dataset

log = logging.getLogger(__name__)


class NnUNetSegmenter:
    """nnU-Net v2 as a vstk segmenter: plan, preprocess, train (fold ``all``) and predict.

    One instance drives one job folder (``workdir``); self-training round r is nnU-Net dataset
    ``dataset_id + r`` with its own results. Training is resumable (a killed run continues from
    nnU-Net's latest checkpoint), a finished round is not retrained, and one process at a time
    may train in a workdir. Checkpoints load with ``torch.load(weights_only=True)``.

    nnU-Net's worker pools use the "spawn" start method: a script that trains or predicts must
    keep its entry code under ``if __name__ == "__main__":``.
    """

    name: ClassVar[str] = "nnunet"
    config_class: ClassVar[type] = NnUNetConfig
    profiles: ClassVar[dict[str, NnUNetConfig]] = PROFILES

    @classmethod
    def profile(cls, name: str, **overrides: Any) -> NnUNetConfig:
        """The named profile's config (``"paper"`` or ``"cpu"``) with ``overrides`` (strings are coerced)."""
        return select_profile(cls.profiles, name, overrides, owner=f"segmenter {cls.name!r}")

    def __init__(self, config: NnUNetConfig | None = None, workdir: str | Path = "nnunet") -> None:
        self.config = config if config is not None else self.profile("cpu")
        if not isinstance(self.config, NnUNetConfig):
            raise ConfigError(f"{type(self.config).__name__} is not a config of segmenter {self.name!r}",
                              fix="pass an NnUNetConfig, e.g. NnUNetSegmenter.profile('cpu')")
        self.workdir = Path(workdir)

    # -- training ---------------------------------------------------------------------------
    def train(self, cases: Sequence[TrainingCase], *, round_index: int = 0,
              progress: ProgressFn | None = None) -> None:
        """Train self-training round ``round_index`` on ``cases`` (labels on their images' grids).

        Writes the round's raw dataset, plans it (round 0) or reuses the previous round's plans,
        preprocesses what is not yet preprocessed, and trains fold ``all``. Calling it again
        with the same cases resumes an interrupted training and returns at once for a finished
        one. ``progress(epoch, num_epochs, message)`` is called after every epoch.

        Raises:
            InputError: no cases, an unusable case id, a label off its image's grid.
            WorkdirBusyError: another process is training in this workdir.
            ConfigError: the round was trained (or started) on other cases.
            NotTrainedError: ``warm_start`` but round ``round_index - 1`` is not trained.
        """
        refuse_in_worker_bootstrap()
        layout = round_layout(self.workdir, self.config, round_index)
        previous = round_layout(self.workdir, self.config, round_index - 1) if round_index > 0 else None
        cases = list(cases)
        validate_cases(cases)
        digests = {case.case_id: case_digest(case) for case in cases}
        n_proc = n_proc_preprocessing(self.config)
        default_n_proc = nnunet_default_n_proc(self.config)
        planning_da = None if self.config.n_proc_da is None else max(1, self.config.n_proc_da)
        with WorkdirLock(self.workdir), nnunet_prints_to_log():
            manifest = read_case_manifest(layout)
            if manifest is not None and manifest != digests:
                self._forget_changed_round(layout, manifest, digests)
                manifest = None
            if manifest is not None and layout.plans_file.is_file():
                name, _ = network_configuration(read_json(layout.plans_file), self.config)
                if (layout.fold_dir(name) / FINAL_CHECKPOINT).is_file():
                    log.info("round %d is already trained (%s)", round_index, layout.fold_dir(name))
                    if progress is not None:
                        epochs = self.config.epochs(round_index)
                        progress(epochs, epochs, "already trained")
                    return
            warm_start = self._warm_start_source(layout, previous)
            if manifest is None:
                write_raw_dataset(layout, cases, digests, previous)
            with nnunet_environment(self.workdir, n_proc=default_n_proc, n_proc_da=planning_da):
                plan_round(layout, previous, n_proc)
                name = add_network_configuration(layout, self.config)
                preprocess_round(layout, previous, name, digests, n_proc)
            with nnunet_environment(self.workdir, n_proc=default_n_proc, n_proc_da=self.config.n_proc_da), \
                    torch_threads(self.config.num_threads):
                self._train_round(layout, name, warm_start, progress,
                                  tuple(sorted(case.case_id for case in cases if case.pseudo_labelled)))

    def _forget_changed_round(self, layout: RoundLayout, manifest: Mapping[str, str],
                              digests: Mapping[str, str]) -> None:
        """Drop a round whose case list changed, unless its training has begun (then raise)."""
        changed = sorted(c for c in set(manifest) | set(digests) if manifest.get(c) != digests.get(c))
        if layout.has_checkpoints():
            raise ConfigError(
                f"round {layout.round_index} in {self.workdir} was trained on other cases "
                f"(differences: {', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''})",
                fix=f"pass the same cases to resume it, use round_index={layout.round_index + 1} for the new "
                    f"cases, or delete {layout.results} to retrain this round")
        log.warning("round %d's cases changed before its training began: rewriting it (%d difference(s))",
                    layout.round_index, len(changed))
        remove_round(layout)

    def _warm_start_source(self, layout: RoundLayout, previous: RoundLayout | None) -> Path | None:
        """The previous round's final checkpoint when this round starts warm, else None.

        Raises NotTrainedError early (before any writing) when it is needed but missing.
        """
        if previous is None or not self.config.warm_start:
            return None
        name = None
        if previous.plans_file.is_file():  # this round will train on a copy of these plans
            name, _ = network_configuration(read_json(previous.plans_file), self.config)
            if any((layout.fold_dir(name) / n).is_file() for n in RESUME_CHECKPOINTS):
                return None  # resuming this round wins over a warm start
        checkpoint = None if name is None else previous.fold_dir(name) / FINAL_CHECKPOINT
        if checkpoint is None or not checkpoint.is_file():
            raise NotTrainedError(
                f"round {layout.round_index} starts from round {previous.round_index}'s final weights, "
                f"but round {previous.round_index} has not finished training in {self.workdir}",
                fix=f"train round {previous.round_index} first with the same settings, or set warm_start=false")
        return checkpoint

    def _train_round(self, layout: RoundLayout, name: str, warm_start: Path | None,
                     progress: ProgressFn | None, pseudo_cases: tuple[str, ...]) -> None:
        from .trainer import TrainerSettings
        from .training import TrainJob, choose_resume_checkpoint, train_round

        config = self.config
        device = resolve_device(config)
        epochs = config.epochs(layout.round_index)
        resume = choose_resume_checkpoint(layout.fold_dir(name))
        job = TrainJob(
            preprocessed=str(layout.preprocessed), configuration=name,
            settings=TrainerSettings(
                num_epochs=epochs, iterations_per_epoch=config.iterations_per_epoch,
                val_iterations_per_epoch=config.val_iterations_per_epoch, save_every=config.save_every,
                initial_lr=config.initial_lr, oversample_foreground=config.oversample_foreground,
                cpu_bf16=trains_in_bf16(config, device), structure_intensity=config.structure_intensity,
                structure_intensity_vs_max=config.structure_intensity_vs_max,
                structure_intensity_pseudo=config.structure_intensity_pseudo, pseudo_cases=pseudo_cases,
                structure_intensity_invert=config.structure_intensity_invert,
                structure_intensity_texture=config.structure_intensity_texture,
                intensity_remap=config.intensity_remap, intensity_remap_points=config.intensity_remap_points),
            seed=config.seed + 1000 * layout.round_index,
            resume_from=None if resume is None else str(resume),
            warm_start_from=None if resume is not None or warm_start is None else str(warm_start))
        log.info("nnU-Net: training %s / %s on %s (%d epochs x %d iterations)", layout.dataset_name, name,
                 device, epochs, config.iterations_per_epoch)
        train_round(job, device, config.num_gpus, progress)

    # -- prediction -------------------------------------------------------------------------
    def final_checkpoint(self, round_index: int = 0) -> Path:
        """``checkpoint_final.pth`` of round ``round_index`` for this config; NotTrainedError if absent."""
        layout = round_layout(self.workdir, self.config, round_index)
        fix = f"call train(cases, round_index={round_index}) first"
        if not layout.plans_file.is_file():
            raise NotTrainedError(f"round {round_index} has not been trained in {self.workdir} "
                                  f"(no nnU-Net plans in {layout.preprocessed})", fix=fix)
        name, _ = network_configuration(read_json(layout.plans_file), self.config)
        checkpoint = layout.fold_dir(name) / FINAL_CHECKPOINT
        if checkpoint.is_file():
            return checkpoint
        if any((layout.fold_dir(name) / n).is_file() for n in RESUME_CHECKPOINTS):
            fix = "call train() again with the same cases and settings: it resumes the interrupted training"
        trained = sorted(p.parent.parent.name.split("__")[-1]
                         for p in layout.results.glob(f"*/fold_*/{FINAL_CHECKPOINT}"))
        if trained:
            fix += f"; or predict with the settings of the trained configuration(s) {', '.join(trained)}"
        raise NotTrainedError(f"round {round_index} has no trained {name!r} model in {self.workdir} "
                              f"({checkpoint} is missing)", fix=fix)

    def predict(self, images: Mapping[str, Volume], *, round_index: int = 0,
                progress: ProgressFn | None = None) -> list[Prediction]:
        """Segment every image with round ``round_index``'s final model.

        Returns one :class:`Prediction` per image, in input order: a uint8 label {0, 1, 2} and
        float32 softmax probabilities ``[3, z, y, x]``, both on that image's own grid (the label
        is the probabilities' argmax). ``progress(done, total, case_id)`` follows the cases.

        Raises:
            InputError: no images, or an image that is not a finite 3D :class:`vstk.Volume`.
            NotTrainedError: round ``round_index`` has no final model for this config.
        """
        refuse_in_worker_bootstrap()
        items = list(images.items())
        if not items:
            raise InputError("no images were given to the nnU-Net segmenter to predict",
                             fix="pass a mapping {case_id: Volume}")
        for case_id, volume in items:
            if not isinstance(volume, Volume):
                raise InputError(f"image {case_id!r} is a {type(volume).__name__}, not a vstk.Volume",
                                 fix="read it with vstk.read_nifti or wrap the array in vstk.Volume")
            if not np.all(np.isfinite(volume.array)):
                raise InputError(f"image {case_id!r} contains NaN or Inf values",
                                 fix="replace them (e.g. numpy.nan_to_num) before predicting")
        checkpoint = self.final_checkpoint(round_index)
        predictions = []
        with nnunet_environment(self.workdir, n_proc=nnunet_default_n_proc(self.config),
                                n_proc_da=self.config.n_proc_da), nnunet_prints_to_log(), \
                torch_threads(self.config.num_threads):
            from .inference import load_predictor, predict_volume

            device = resolve_device(self.config, for_training=False)
            predictor = load_predictor(checkpoint.parent, self.config, device)
            for done, (case_id, volume) in enumerate(items, start=1):
                label, probabilities = predict_volume(predictor, volume)
                predictions.append(Prediction(case_id, volume.with_array(label), probabilities))
                if progress is not None:
                    progress(done, len(items), case_id)
        return predictions
