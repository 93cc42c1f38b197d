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
    nnunet_pools_in_process,
    nnunet_prints_to_log,
    refuse_in_worker_bootstrap,
    resolve_device,
    torch_threads,
    trains_in_bf16,
)
from .errors import NotTrainedError
from .layout import (
    FINAL_CHECKPOINT,
    FOLD,
    RESUME_CHECKPOINTS,
    VALIDATION_SUMMARY,
    RoundLayout,
    read_json,
    remove_round,
    round_layout,
)
from .lock import WorkdirLock
from .planning import (
    add_network_configurations,
    link_ground_truth,
    network_configurations,
    plan_round,
    preprocess_round,
)
from .raw_dataset import case_digest, read_case_manifest, validate_cases, write_raw_dataset
from .selection import ChosenModel
from .splits import subject_counts, write_round_splits

log = logging.getLogger(__name__)


class NnUNetSegmenter:
    """nnU-Net v2 as a vstk segmenter: plan, preprocess, train (fold ``all``, or nnU-Net's
    cross-validation with its model choice and postprocessing) and predict.

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
        preprocesses what is not yet preprocessed, and trains every configuration in every fold
        of the settings (``folds``, ``configuration`` / ``configurations``). With numbered
        folds it first writes subject-grouped splits (:mod:`vstk_nnunet.splits`), ends each
        fold with nnU-Net's final validation (softmax saved) and, after the last, lets
        nnU-Net's ``find_best_configuration`` choose the model and its postprocessing
        (:mod:`vstk_nnunet.selection`). Calling it again with the same cases skips finished
        folds, continues an interrupted one from its checkpoint and returns at once for a
        finished round. ``progress(done, total, message)`` is called after every epoch, with
        the epochs of all folds together.

        Raises:
            InputError: no cases, an unusable case id, a label off its image's grid, fewer
                subjects than cross-validation folds.
            WorkdirBusyError: another process is training in this workdir.
            ConfigError: the round was trained (or started) on other cases.
            NotTrainedError: ``warm_start`` but round ``round_index - 1`` is not trained.
        """
        refuse_in_worker_bootstrap()
        config = self.config
        layout = round_layout(self.workdir, config, round_index)
        previous = round_layout(self.workdir, config, round_index - 1) if round_index > 0 else None
        cases = list(cases)
        validate_cases(cases)
        if config.cross_validation:
            subject_counts(case.case_id for case in cases)  # enough subjects for the folds, before any writing
        digests = {case.case_id: case_digest(case) for case in cases}
        n_proc = n_proc_preprocessing(config)
        default_n_proc = nnunet_default_n_proc(config)
        planning_da = None if config.n_proc_da is None else max(1, config.n_proc_da)
        with WorkdirLock(self.workdir), nnunet_prints_to_log():
            manifest = read_case_manifest(layout)
            if manifest is not None and manifest != digests:
                self._forget_changed_round(layout, manifest, digests)
                manifest = None
            if manifest is not None and layout.plans_file.is_file() and self._round_finished(layout):
                log.info("round %d is already trained (%s)", round_index, layout.results)
                if progress is not None:
                    total = self._total_epochs(layout)
                    progress(total, total, "already trained")
                return
            warm_starts = self._warm_start_sources(layout, previous)
            if manifest is None:
                write_raw_dataset(layout, cases, digests, previous)
            with nnunet_environment(self.workdir, n_proc=default_n_proc, n_proc_da=planning_da):
                plan_round(layout, previous, n_proc)
                names = add_network_configurations(layout, config)
                for name in names:
                    preprocess_round(layout, previous, name, digests, n_proc)
                if config.cross_validation:
                    link_ground_truth(layout, list(digests))
                    write_round_splits(layout, list(digests), previous)
            pseudo = tuple(sorted(case.case_id for case in cases if case.real_target))
            with nnunet_environment(self.workdir, n_proc=default_n_proc, n_proc_da=config.n_proc_da), \
                    torch_threads(config.num_threads), \
                    nnunet_pools_in_process(config.cross_validation and n_proc == 1 and config.num_gpus == 1):
                jobs = [(name, fold) for name in names for fold in config.folds]
                ran = False
                for index, (name, fold) in enumerate(jobs):
                    ran |= self._train_fold(layout, name, fold, warm_starts.get((name, fold)),
                                            _job_progress(progress, index, len(jobs), f"{name} fold {fold}"), pseudo)
                if config.cross_validation and (ran or not self._selection_current(layout, names)):
                    from .selection import select_model

                    select_model(layout, names, config.folds, n_proc)

    def _round_finished(self, layout: RoundLayout) -> bool:
        """True when every configuration and fold of the round is trained (and validated, and the
        model chosen, with numbered folds)."""
        names = list(network_configurations(read_json(layout.plans_file), self.config))
        return all(self._fold_finished(layout, name, fold) for name in names for fold in self.config.folds) \
            and (not self.config.cross_validation or self._selection_current(layout, names))

    def _fold_finished(self, layout: RoundLayout, name: str, fold: int | str) -> bool:
        folder = layout.fold_dir(name, fold)
        return (folder / FINAL_CHECKPOINT).is_file() and (fold == FOLD or (folder / VALIDATION_SUMMARY).is_file())

    def _selection_current(self, layout: RoundLayout, names: Sequence[str]) -> bool:
        """True when the round's selection record covers exactly these configurations and folds."""
        from .selection import read_selection

        record = read_selection(layout)
        return record is not None and record["configurations"] == list(names) \
            and record["folds"] == list(self.config.folds)

    def _total_epochs(self, layout: RoundLayout) -> int:
        names = network_configurations(read_json(layout.plans_file), self.config)
        return self._epochs(layout) * len(names) * len(self.config.folds)

    def _epochs(self, layout: RoundLayout) -> int:
        """Epochs of each configuration and fold of this round, on the device it trains on."""
        return self.config.epochs(layout.round_index, bf16=trains_in_bf16(self.config, resolve_device(self.config)))

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

    def _warm_start_sources(self, layout: RoundLayout, previous: RoundLayout | None) -> dict[tuple[str, Any], Path]:
        """``{(configuration, fold): previous round's final checkpoint}`` when this round starts
        warm: each fold from the same configuration and fold of round r-1 (whose splits it
        keeps), except folds of this round that already have checkpoints to resume from.

        Raises NotTrainedError early (before any writing) when one is needed but missing.
        """
        if previous is None or not self.config.warm_start:
            return {}
        # this round trains on a copy of the previous round's plans, so the same names
        names = list(network_configurations(read_json(previous.plans_file), self.config)) \
            if previous.plans_file.is_file() else [None]
        sources = {}
        for name in names:
            for fold in self.config.folds:
                if name is not None and any((layout.fold_dir(name, fold) / n).is_file() for n in RESUME_CHECKPOINTS):
                    continue  # resuming this round wins over a warm start
                checkpoint = None if name is None else previous.fold_dir(name, fold) / FINAL_CHECKPOINT
                if checkpoint is None or not checkpoint.is_file():
                    where = "" if name is None else f" ({name}, fold {fold})"
                    raise NotTrainedError(
                        f"round {layout.round_index} starts from round {previous.round_index}'s final weights, "
                        f"but round {previous.round_index} has not finished training{where} in {self.workdir}",
                        fix=f"train round {previous.round_index} first with the same settings, or set "
                            "warm_start=false")
                sources[(name, fold)] = checkpoint
        return sources

    def _train_fold(self, layout: RoundLayout, name: str, fold: int | str, warm_start: Path | None,
                    progress: ProgressFn | None, pseudo_cases: tuple[str, ...]) -> bool:
        """Train (or resume, or only validate) one configuration and fold; False when it was done."""
        from .trainer import TrainerSettings
        from .training import TrainJob, choose_resume_checkpoint, train_round

        config = self.config
        epochs = self._epochs(layout)
        folder = layout.fold_dir(name, fold)
        if self._fold_finished(layout, name, fold):
            if progress is not None:
                progress(epochs, epochs, "already trained")
            return False
        validate = fold != FOLD
        final = folder / FINAL_CHECKPOINT
        device = resolve_device(config)
        resume = None if final.is_file() else choose_resume_checkpoint(folder)
        job = TrainJob(
            preprocessed=str(layout.preprocessed), configuration=name, fold=fold, validate=validate,
            validate_from=str(final) if final.is_file() else None,
            settings=TrainerSettings(
                num_epochs=epochs, iterations_per_epoch=config.iterations_per_epoch,
                val_iterations_per_epoch=config.val_iterations_per_epoch, save_every=config.save_every,
                initial_lr=config.initial_lr, oversample_foreground=config.oversample_foreground,
                cpu_bf16=trains_in_bf16(config, device), structure_intensity=config.structure_intensity,
                structure_intensity_vs_max=config.structure_intensity_vs_max,
                structure_intensity_cochlea_min=config.structure_intensity_cochlea_min,
                structure_intensity_pseudo=config.structure_intensity_pseudo, pseudo_cases=pseudo_cases,
                structure_intensity_invert=config.structure_intensity_invert,
                structure_intensity_texture=config.structure_intensity_texture,
                intensity_remap=config.intensity_remap, intensity_remap_points=config.intensity_remap_points,
                fluid_rim=config.fluid_rim, fluid_rim_erase=config.fluid_rim_erase, validation_mirroring=config.mirroring),
            seed=config.seed + 1000 * layout.round_index,
            resume_from=None if resume is None else str(resume),
            warm_start_from=None if resume is not None or final.is_file() or warm_start is None else str(warm_start))
        log.info("nnU-Net: training %s / %s, fold %s, on %s (%d epochs x %d iterations)", layout.dataset_name, name,
                 fold, device, epochs, config.iterations_per_epoch)
        train_round(job, device, config.num_gpus, progress)
        return True

    # -- prediction -------------------------------------------------------------------------
    def chosen_model(self, round_index: int = 0) -> ChosenModel:
        """What :meth:`predict` runs for round ``round_index``: with fold ``all`` the one trained
        configuration; with numbered folds the model nnU-Net chose (one configuration's folds
        or a pair ensemble) and its postprocessing. NotTrainedError when it is not ready."""
        from .selection import chosen_model, read_selection

        layout = round_layout(self.workdir, self.config, round_index)
        fix = f"call train(cases, round_index={round_index}) first"
        if not layout.plans_file.is_file():
            raise NotTrainedError(f"round {round_index} has not been trained in {self.workdir} "
                                  f"(no nnU-Net plans in {layout.preprocessed})", fix=fix)
        names = list(network_configurations(read_json(layout.plans_file), self.config))
        if not self.config.cross_validation:
            self.final_checkpoint(round_index)  # raises with the reason when it is missing
            return ChosenModel(tuple(names), (FOLD,))
        record = read_selection(layout)
        if record is None or not self._selection_current(layout, names):
            missing = [f"{n} fold {f}" for n in names for f in self.config.folds if not self._fold_finished(layout, n, f)]
            if record is not None and not missing:
                raise NotTrainedError(
                    f"round {round_index} in {self.workdir} chose among {', '.join(record['configurations'])} "
                    f"over folds {','.join(map(str, record['folds']))}, not {', '.join(names)} over folds "
                    f"{','.join(map(str, self.config.folds))}",
                    fix="predict with the settings the round was trained with, or call train() with these")
            raise NotTrainedError(
                f"round {round_index} in {self.workdir} has no chosen model yet"
                + (f" ({', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''} not finished)" if missing else ""),
                fix=f"call train(cases, round_index={round_index}) again with the same cases and settings: it "
                    "continues the unfinished folds and then chooses")
        return chosen_model(record)

    def describe(self, round_index: int = 0) -> str | None:
        """Markdown on how round ``round_index``'s model was chosen (cross-validation Dice of
        each configuration and ensemble, the choice, its postprocessing), for the run report;
        None with fold ``all`` or before the choice."""
        from .selection import describe, read_selection

        if not self.config.cross_validation:
            return None
        record = read_selection(round_layout(self.workdir, self.config, round_index))
        return None if record is None else describe(record)

    def final_checkpoints(self, round_index: int = 0) -> list[Path]:
        """``checkpoint_final.pth`` of every fold of every configuration the chosen model uses."""
        model = self.chosen_model(round_index)
        layout = round_layout(self.workdir, self.config, round_index)
        return [layout.fold_dir(name, fold) / FINAL_CHECKPOINT for name in model.configurations for fold in model.folds]

    def final_checkpoint(self, round_index: int = 0) -> Path:
        """``checkpoint_final.pth`` of round ``round_index`` for this config (fold ``all``, one
        configuration); NotTrainedError if absent. See :meth:`final_checkpoints` for folds."""
        layout = round_layout(self.workdir, self.config, round_index)
        fix = f"call train(cases, round_index={round_index}) first"
        if not layout.plans_file.is_file():
            raise NotTrainedError(f"round {round_index} has not been trained in {self.workdir} "
                                  f"(no nnU-Net plans in {layout.preprocessed})", fix=fix)
        if self.config.cross_validation:  # (several configurations need cross-validation)
            raise ConfigError(f"final_checkpoint() names the one model of fold 'all', but folds="
                              f"{','.join(map(str, self.config.folds))}",
                              fix="use final_checkpoints(round_index)")
        name = next(iter(network_configurations(read_json(layout.plans_file), self.config)))
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
        """Segment every image with round ``round_index``'s model (:meth:`chosen_model`).

        Returns one :class:`Prediction` per image, in input order: a uint8 label {0, 1, 2} and
        float32 softmax probabilities ``[3, z, y, x]``, both on that image's own grid. The
        probabilities are the model's (an ensemble's: the mean of its configurations'); the
        label is their argmax after the chosen postprocessing (none with fold ``all``).
        ``progress(done, total, case_id)`` follows the cases.

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
        model = self.chosen_model(round_index)
        layout = round_layout(self.workdir, self.config, round_index)
        predictions = []
        with nnunet_environment(self.workdir, n_proc=nnunet_default_n_proc(self.config),
                                n_proc_da=self.config.n_proc_da), nnunet_prints_to_log(), \
                torch_threads(self.config.num_threads):
            from .inference import ensemble, load_predictor, predict_model
            from .selection import postprocess

            device = resolve_device(self.config, for_training=False)
            predictors = {}
            for name in model.configurations:
                while name is not None and name not in predictors:  # a cascade needs its earlier stage
                    predictors[name] = load_predictor(layout.model_dir(name), model.folds, self.config, device)
                    name = predictors[name].configuration_manager.previous_stage_name
            for done, (case_id, volume) in enumerate(items, start=1):
                cache: dict = {}
                label, probabilities = ensemble([predict_model(predictors, name, volume, cache)
                                                 for name in model.configurations])
                label = postprocess(label, model.postprocessing)
                predictions.append(Prediction(case_id, volume.with_array(label), probabilities))
                if progress is not None:
                    progress(done, len(items), case_id)
        return predictions


def _job_progress(progress: ProgressFn | None, index: int, count: int, label: str) -> ProgressFn | None:
    """A fold's epoch reports as steps of the whole round (job ``index`` of ``count``)."""
    if progress is None:
        return None

    def report(done: int, total: int, message: str) -> None:
        progress(index * total + done, count * total, message if count == 1 else f"{label}: {message}")

    return report
