"""Subject-grouped cross-validation splits (nnU-Net's ``splits_final.json``).

vstk trains on several cases per subject: one per translated view and ear
(``{view}__{subject}__{side}``), the pseudo-labelled real hrT2 of the self-training rounds
(``pseudo_r{r}__{subject}__{side}``) and, in ``vstk bench``, ``ceT1__{subject}__{side}`` and
``hrT2__{subject}__{side}``. nnU-Net's own split draws cases at random, so one subject's views
would be trained on in a fold that validates on its other views: a leak that inflates
cross-validation Dice and with it the choice of configuration. Here every case of a subject
lands in the same fold, and a subject keeps its fold in later self-training rounds (round r's
fold k may warm-start from round r-1's fold k, which must not have trained on it).

Pure functions and JSON files only: no nnU-Net import.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Iterable, Mapping, Sequence

from vstk.atomic import write_json_atomic
from vstk.errors import ConfigError, InputError

from .config import NUM_FOLDS
from .layout import RoundLayout, read_json

#: the ear suffixes of vstk's case ids (``vstk.pipeline.stages.EAR_SIDES``)
EAR_SIDES = ("R", "L")
SPLITS_FILE = "splits_final.json"
_SEED = 12345  # nnU-Net's own split seed


def subject_of(case_id: str) -> str:
    """The subject a training case shows: its id without the view (or ``pseudo_r{r}``) prefix
    and the ear suffix.

    ``"cyclegan__crossmoda2022_ldn_1__R"`` -> ``"crossmoda2022_ldn_1"``;
    ``"pseudo_r2__crossmoda2022_etz_210__L"`` -> ``"crossmoda2022_etz_210"``;
    ``"cyclegan__crossmoda2022_ldn_1"`` (a pool export, no ear) -> ``"crossmoda2022_ldn_1"``;
    an id without ``__`` is its own subject.
    """
    parts = case_id.split("__")
    if len(parts) > 1 and parts[-1] in EAR_SIDES:
        parts = parts[:-1]
    if len(parts) > 1:
        parts = parts[1:]
    return "__".join(parts)


def subject_counts(case_ids: Iterable[str], num_folds: int = NUM_FOLDS) -> Counter:
    """``{subject: number of cases}``; InputError when there are fewer subjects than folds."""
    counts = Counter(subject_of(case_id) for case_id in case_ids)
    if len(counts) < num_folds:
        shown = ", ".join(sorted(counts)[:8]) + (" ..." if len(counts) > 8 else "")
        raise InputError(f"{num_folds}-fold cross-validation needs at least {num_folds} subjects, but the "
                         f"{sum(counts.values())} training case(s) show {len(counts)}: {shown}",
                         fix="train on more subjects, or set folds=all (one model on every case)")
    return counts


def assign_folds(case_ids: Iterable[str], num_folds: int = NUM_FOLDS,
                 previous: Mapping[str, int] | None = None) -> dict[str, int]:
    """``{subject: fold}`` for the subjects of ``case_ids``: subjects in ``previous`` keep their
    fold; the others, largest first (most cases), go to the fold with the fewest cases
    (ties: fewest subjects, then the lowest fold), in a seeded random order among equals.

    Raises:
        InputError: fewer subjects than folds (a fold would validate on nothing).
    """
    counts = subject_counts(case_ids, num_folds)
    folds = {subject: fold for subject, fold in (previous or {}).items() if subject in counts}
    load = [0] * num_folds
    members = [0] * num_folds
    for subject, fold in folds.items():
        load[fold] += counts[subject]
        members[fold] += 1
    new = sorted(set(counts) - set(folds))
    random.Random(_SEED).shuffle(new)
    new.sort(key=lambda subject: -counts[subject])  # stable: the shuffle breaks ties
    for subject in new:
        fold = min(range(num_folds), key=lambda f: (load[f], members[f], f))
        folds[subject] = fold
        load[fold] += counts[subject]
        members[fold] += 1
    empty = [f for f in range(num_folds) if members[f] == 0]
    if empty:  # only where earlier rounds' subjects crowd the new ones out
        raise InputError(f"fold(s) {', '.join(map(str, empty))} of the cross-validation hold no subject",
                         fix="train on more subjects, or set folds=all")
    return folds


def grouped_splits(case_ids: Sequence[str], num_folds: int = NUM_FOLDS,
                   previous: Mapping[str, int] | None = None) -> list[dict[str, list[str]]]:
    """nnU-Net's ``splits_final.json`` content: for fold k, ``{"train": [...], "val": [...]}``
    with every case of a subject on the same side (see :func:`assign_folds`); ids sorted."""
    folds = assign_folds(case_ids, num_folds, previous)
    ordered = sorted(case_ids)
    return [{"train": [c for c in ordered if folds[subject_of(c)] != k],
             "val": [c for c in ordered if folds[subject_of(c)] == k]} for k in range(num_folds)]


def subject_folds(splits: Sequence[Mapping[str, Sequence[str]]]) -> dict[str, int]:
    """``{subject: fold}`` read back from a splits file's validation lists."""
    return {subject_of(case_id): fold for fold, split in enumerate(splits) for case_id in split["val"]}


def write_round_splits(layout: RoundLayout, case_ids: Sequence[str], previous: RoundLayout | None) -> list:
    """Write the round's ``splits_final.json`` (nnU-Net reads it from the preprocessed dataset
    folder), keeping the folds of the previous round's subjects; returns the splits.

    An existing file with the same content is left alone. One with other content is replaced
    only while no numbered fold of the round has a checkpoint: a fold half trained on other
    splits cannot be continued.
    """
    earlier = None
    if previous is not None and (previous.preprocessed / SPLITS_FILE).is_file():
        earlier = subject_folds(read_json(previous.preprocessed / SPLITS_FILE))
    splits = grouped_splits(case_ids, NUM_FOLDS, earlier)
    path = layout.preprocessed / SPLITS_FILE
    if path.is_file():
        if read_json(path) == splits:
            return splits
        if layout.results.is_dir() and any(layout.results.glob("*/fold_[0-9]*/checkpoint_*.pth")):
            raise ConfigError(f"round {layout.round_index}'s folds were trained on other splits ({path})",
                              fix=f"delete {layout.results} to retrain the round")
    layout.preprocessed.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, splits)
    return splits
