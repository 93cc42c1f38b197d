"""Export a pool to an nnU-Net v2 raw dataset (``DatasetXXX_Name/imagesTr``, ``labelsTr``, ``dataset.json``).

Case ids must be unique in nnU-Net, so every view entry becomes ``{view}__{case}`` (view
names cannot contain ``__``), and a pseudo-labelled real hrT2 case of round ``r`` becomes
``pseudo_r{r}__{case}``. Images are written as ``{id}_0000.nii.gz`` (one channel, "hrT2":
translated views are pseudo-hrT2), labels as uint8 ``{id}.nii.gz``, both with the pool's
geometry. The folder is written under a temporary name and renamed into place when done.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputError, PoolError
from ..labels import LABEL_NAMES
from ..protocols import ProgressFn
from ..volume import write_nifti
from .reader import Pool

log = logging.getLogger(__name__)

FILE_ENDING = ".nii.gz"
_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def nnunet_case_id(view: str, case: str) -> str:
    """The nnU-Net case id of a view entry: ``{view}__{case}``."""
    return f"{view}__{case}"


def pseudo_case_id(round_index: int, case: str) -> str:
    """The nnU-Net case id of a pseudo-labelled real hrT2 case: ``pseudo_r{round}__{case}``."""
    return f"pseudo_r{round_index}__{case}"


def _parse_views(views: Sequence[str] | str | None) -> list[str] | None:
    if views is None:
        return None
    if isinstance(views, str):
        views = [v.strip() for v in views.split(",") if v.strip()]
    return list(views)


def export_nnunet(pool_path: str | Path, raw_root: str | Path, dataset_id: int, name: str = "vstkPool",
                  views: Sequence[str] | str | None = None, pseudo_round: int | None = None, *,
                  overwrite: bool = False, progress: ProgressFn | None = None) -> Path:
    """Write the pool's view entries (and optionally one round of pseudo labels) as an nnU-Net v2 raw dataset.

    Args:
        pool_path: the pool file.
        raw_root: the ``nnUNet_raw`` folder; the dataset goes to ``raw_root/Dataset{id:03d}_{name}``.
        dataset_id: nnU-Net dataset id, 1-999 (must not be used by another dataset in ``raw_root``).
        name: dataset name (letters, digits, ``_``, ``-``).
        views: views to export (list or ``"a,b"``); None exports all.
        pseudo_round: also export the real hrT2 targets with their pseudo labels of this round.
        overwrite: replace an existing dataset folder of the same id and name.
        progress: ``progress(done, total, message)`` per case written.

    Returns:
        The dataset folder.
    """
    raw_root = Path(raw_root)
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, (int, np.integer)) or not 1 <= dataset_id <= 999:
        raise InputError(f"nnU-Net dataset id {dataset_id!r} is not in 1-999", fix="pick a free id, e.g. 501")
    if not _DATASET_NAME.match(name):
        raise InputError(f"nnU-Net dataset name {name!r} is not allowed",
                         fix="use letters, digits, '_' or '-' (no spaces, no dots)")
    folder_name = f"Dataset{int(dataset_id):03d}_{name}"
    target = raw_root / folder_name
    if raw_root.is_dir():
        clashes = [p.name for p in raw_root.glob(f"Dataset{int(dataset_id):03d}_*") if p.name != folder_name]
        if clashes:
            raise InputError(f"nnU-Net dataset id {dataset_id} is already used by {', '.join(sorted(clashes))}",
                             path=raw_root, fix="pick another --dataset-id")
    if target.exists() and not overwrite:
        raise InputError("nnU-Net dataset folder already exists", path=target,
                         fix="pass --overwrite (overwrite=True) or pick another dataset id/name")

    with Pool(pool_path) as pool:
        wanted = _parse_views(views)
        available = pool.views()
        if wanted is None:
            wanted = available
        unknown = [v for v in wanted if v not in available]
        if unknown:
            raise PoolError(f"view(s) {', '.join(unknown)} not in the pool (views: {', '.join(available) or 'none'})",
                            path=pool.path, fix="choose views listed by `vstk pool info`")
        items: list[tuple[str, str, Any]] = []  # (nnU-Net id, kind, key)
        for view in wanted:
            items += [(nnunet_case_id(view, case), "view", (view, case)) for case in pool.cases(view)]
        if pseudo_round is not None:
            items += [(pseudo_case_id(pseudo_round, case), "pseudo", case)
                      for case in pool.pseudo_labels(pseudo_round)]
        ids = [i for i, _, _ in items]
        if len(set(ids)) != len(ids):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            raise PoolError(f"exported case ids clash: {', '.join(dupes[:5])}", path=pool.path,
                            fix="rename the view that looks like a pseudo-label id (pseudo_rN)")
        if not items:
            raise PoolError("nothing to export (no view entries selected)", path=pool.path,
                            fix="build the pool first, or select views that have cases")

        raw_root.mkdir(parents=True, exist_ok=True)
        staging = raw_root / f".{folder_name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            (staging / "imagesTr").mkdir(parents=True)
            (staging / "labelsTr").mkdir()
            for done, (case_id, kind, key) in enumerate(items):
                if kind == "view":
                    image, label = pool.read(*key)
                else:
                    image = pool.read_target(key)
                    label, _ = pool.read_pseudo_label(pseudo_round, key)  # type: ignore[arg-type]
                write_nifti(image, staging / "imagesTr" / f"{case_id}_0000{FILE_ENDING}")
                write_nifti(label.with_array(label.array.astype(np.uint8, copy=False)),
                            staging / "labelsTr" / f"{case_id}{FILE_ENDING}")
                if progress is not None:
                    progress(done + 1, len(items), case_id)
            dataset_json = {
                "channel_names": {"0": "hrT2"},
                "labels": {name_: value for value, name_ in sorted(LABEL_NAMES.items())},
                "numTraining": len(items),
                "file_ending": FILE_ENDING,
                "name": name,
                "description": "vstk multi-view pool: translated ceT1 (pseudo-hrT2) views with ceT1 labels"
                               + (f", plus real hrT2 with round-{pseudo_round} pseudo labels"
                                  if pseudo_round is not None else ""),
                "vstk": {"pool": str(Path(pool_path).absolute()), "views": wanted, "pseudo_round": pseudo_round,
                         "case_id_format": "{view}__{case} / pseudo_r{round}__{case}"},
            }
            (staging / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
            if target.exists():
                trash = raw_root / f".{folder_name}.{uuid.uuid4().hex[:8]}.old"
                os.replace(target, trash)
                os.replace(staging, target)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    log.info("exported %d cases to %s", len(items), target)
    return target
