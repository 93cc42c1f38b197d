"""``vstk nnunet-splits``: subject-grouped ``splits_final.json`` for a dataset trained with
nnU-Net's own commands (one SLURM job per configuration and fold, docs/scaling.md).

A dataset written by ``vstk pool export-nnunet`` holds several cases per subject (one per
view, and pseudo-labelled hrT2); nnU-Net's random five-fold split would put them on both
sides of a fold. This command writes the splits :mod:`vstk_nnunet.splits` makes for
``vstk run``, to be copied into ``nnUNet_preprocessed/DatasetXXX_Name/`` after planning.
"""

from __future__ import annotations

from pathlib import Path

import click

from vstk.atomic import write_json_atomic
from vstk.errors import InputError

from .config import NUM_FOLDS
from .layout import read_json
from .splits import SPLITS_FILE, grouped_splits, subject_folds


def dataset_case_ids(dataset: Path) -> list[str]:
    """The training case ids of an nnU-Net raw dataset: its ``labelsTr`` files without the
    file ending of ``dataset.json``."""
    manifest = dataset / "dataset.json"
    if not manifest.is_file():
        raise InputError("not an nnU-Net raw dataset (no dataset.json)", path=dataset,
                         fix="pass the DatasetXXX_Name folder `vstk pool export-nnunet` wrote")
    ending = str(read_json(manifest).get("file_ending", ".nii.gz"))
    ids = sorted(p.name[: -len(ending)] for p in (dataset / "labelsTr").glob(f"*{ending}"))
    if not ids:
        raise InputError(f"no training labels (labelsTr/*{ending})", path=dataset,
                         fix="export the pool again: the dataset is empty or incomplete")
    return ids


@click.command("nnunet-splits")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help=f"Where to write the splits [DATASET/{SPLITS_FILE}].")
@click.option("--keep-folds-of", "previous", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="An earlier round's splits file: its subjects keep their folds (a self-training "
                                 "round whose folds warm-start from the earlier round's).")
def splits_command(dataset: Path, out: Path | None, previous: Path | None) -> None:
    """Write nnU-Net's splits_final.json for the raw DATASET with every case of one subject
    (its views, ears and pseudo labels) in the same fold.

    Copy the file into nnUNet_preprocessed/DATASET_NAME/ after nnUNetv2_plan_and_preprocess and
    before nnUNetv2_train, so that nnU-Net's cross-validation does not validate on views of
    subjects it trained on.
    """
    ids = dataset_case_ids(dataset)
    earlier = subject_folds(read_json(previous)) if previous is not None else None
    splits = grouped_splits(ids, NUM_FOLDS, earlier)
    out = out or dataset / SPLITS_FILE
    write_json_atomic(out, splits)
    sizes = ", ".join(f"fold {k}: {len(s['val'])}" for k, s in enumerate(splits))
    click.echo(f"{len(ids)} case(s) of {len(subject_folds(splits))} subject(s) in {NUM_FOLDS} folds "
               f"(validation cases {sizes}) -> {out}")
