"""Where one nnU-Net job keeps its files, and the small file helpers every stage uses.

A job's ``workdir`` holds nnU-Net's three folders::

    workdir/nnunet.lock                            held by the process that trains
    workdir/nnUNet_raw/Dataset501_VSTK_round0/     imagesTr, labelsTr, dataset.json, vstk_cases.json
    workdir/nnUNet_preprocessed/Dataset501_VSTK_round0/
    workdir/nnUNet_results/Dataset501_VSTK_round0/nnUNetTrainerVstk__nnUNetPlans__2d_f16-128/fold_all/
    workdir/model_selection_round0.json            with numbered folds: cross-validation Dice, the
                                                   chosen model and its postprocessing

With numbered folds every configuration has ``fold_0`` ... ``fold_4`` (each with nnU-Net's
``validation/``), the splits are ``nnUNet_preprocessed/Dataset.../splits_final.json``, and
nnU-Net's ``find_best_configuration`` writes ``crossval_results_folds_*``, ``ensembles/`` and
``inference_information.json`` into the round's results folder.

Self-training round r is a dataset of its own (id ``dataset_id + r``), so every round has its
own raw, preprocessed and results folders and never writes into another round's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

from vstk.errors import VstkError

from .config import NnUNetConfig

TRAINER_NAME = "nnUNetTrainerVstk"
PLANS_NAME = "nnUNetPlans"
FOLD = "all"
FILE_ENDING = ".nii.gz"
CASES_MANIFEST = "vstk_cases.json"
LOCK_FILE = "nnunet.lock"
FINAL_CHECKPOINT = "checkpoint_final.pth"
RESUME_CHECKPOINTS = ("checkpoint_latest.pth", "checkpoint_best.pth")
VALIDATION_SUMMARY = "validation/summary.json"  # nnU-Net writes it last in a fold's final validation


@dataclasses.dataclass(frozen=True)
class RoundLayout:
    """Folders of one self-training round (an nnU-Net dataset of its own).

    Attributes:
        workdir: the job folder.
        round_index: self-training round, 0 for the first training.
        dataset_id: nnU-Net dataset id of this round (``config.dataset_id + round_index``).
        dataset_name: nnU-Net dataset folder name, ``Dataset{id:03d}_{name}_round{r}``.
    """

    workdir: Path
    round_index: int
    dataset_id: int
    dataset_name: str

    @property
    def raw(self) -> Path:
        return self.workdir / "nnUNet_raw" / self.dataset_name

    @property
    def preprocessed(self) -> Path:
        return self.workdir / "nnUNet_preprocessed" / self.dataset_name

    @property
    def results(self) -> Path:
        return self.workdir / "nnUNet_results" / self.dataset_name

    @property
    def plans_file(self) -> Path:
        return self.preprocessed / f"{PLANS_NAME}.json"

    @property
    def cases_manifest(self) -> Path:
        """``{case_id: digest}`` of the raw dataset; written last, so it marks it complete."""
        return self.raw / CASES_MANIFEST

    def model_dir(self, configuration_name: str) -> Path:
        """nnU-Net's training output folder ``{trainer}__{plans}__{configuration}``."""
        return self.results / f"{TRAINER_NAME}__{PLANS_NAME}__{configuration_name}"

    def fold_dir(self, configuration_name: str, fold: int | str = FOLD) -> Path:
        return self.model_dir(configuration_name) / f"fold_{fold}"

    @property
    def selection_file(self) -> Path:
        """vstk's record of the round's cross-validation and model choice (numbered folds only)."""
        return self.workdir / f"model_selection_round{self.round_index}.json"

    def has_checkpoints(self) -> bool:
        """True when any training of this round has written a checkpoint."""
        return self.results.is_dir() and any(self.results.glob("*/fold_*/checkpoint_*.pth"))


def round_layout(workdir: str | Path, config: NnUNetConfig, round_index: int) -> RoundLayout:
    """The layout of round ``round_index`` of the job in ``workdir``."""
    if isinstance(round_index, bool) or not isinstance(round_index, int) or round_index < 0:
        raise VstkError(f"round_index={round_index!r} must be an integer >= 0")
    dataset_id = config.dataset_id + round_index
    if dataset_id > 999:
        raise VstkError(f"round {round_index} would need nnU-Net dataset id {dataset_id} (> 999)",
                        fix=f"use a smaller dataset_id (now {config.dataset_id})")
    name = f"Dataset{dataset_id:03d}_{config.dataset_name}_round{round_index}"
    return RoundLayout(Path(workdir), round_index, dataset_id, name)


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link ``source`` to ``target``, or copy it where the file system cannot link."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def remove_round(layout: RoundLayout) -> None:
    """Delete a round's raw, preprocessed and results folders (a fresh start of that round)."""
    for folder in (layout.raw, layout.preprocessed, layout.results):
        if folder.exists():
            shutil.rmtree(folder)
    layout.selection_file.unlink(missing_ok=True)
