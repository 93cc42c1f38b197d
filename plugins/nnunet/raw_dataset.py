"""Training cases -> an nnU-Net raw dataset (imagesTr, labelsTr, dataset.json), with checks."""

from __future__ import annotations

import hashlib
import re
from typing import Any, Mapping, Sequence

import numpy as np

from vstk.atomic import write_json_atomic
from vstk.errors import InputError, format_value
from vstk.labels import LABEL_NAMES
from vstk.protocols import TrainingCase
from vstk.volume import write_nifti

from .layout import FILE_ENDING, RoundLayout, link_or_copy, read_json

# nnU-Net file names are "{case}_0000.nii.gz" and, preprocessed, "{case}.b2nd" / "{case}_seg.b2nd":
# no path separators or dots, and no "_seg" suffix (it would clash with another case's label file).
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,119}$")


def _suggest_case_id(case_id: object) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", str(case_id)).strip("_-")[:120].removesuffix("_seg")
    return cleaned or "case1"


def validate_cases(cases: Sequence[TrainingCase]) -> None:
    """Raise :class:`InputError` unless ``cases`` can become an nnU-Net training set.

    Checks: at least one case; case ids usable as nnU-Net file names and unique (also without
    regard to case, for case-insensitive file systems); each label on its image's grid with
    values in {0, 1, 2}; finite image values.
    """
    if len(cases) == 0:
        raise InputError("no training cases were given to the nnU-Net segmenter",
                         fix="pass at least one TrainingCase (image and label)")
    seen: dict[str, str] = {}
    allowed = sorted(LABEL_NAMES)
    for case in cases:
        case_id = case.case_id
        if not isinstance(case_id, str) or not _CASE_ID.match(case_id) or case_id.endswith("_seg"):
            raise InputError(
                f"case id {case_id!r} cannot be used as an nnU-Net case name",
                fix="use letters, digits, '_' and '-' (no dots, spaces or slashes; at most 120 characters; "
                    f"not ending in '_seg'), e.g. {_suggest_case_id(case_id)!r}")
        folded = case_id.lower()
        if folded in seen:
            raise InputError(f"case ids {seen[folded]!r} and {case_id!r} name the same nnU-Net files",
                             fix="give every training case its own id")
        seen[folded] = case_id
        mismatch = case.label.grid_mismatch(case.image)
        if mismatch is not None:
            raise InputError(f"the label of case {case_id!r} is not on its image's grid: {mismatch}",
                             fix="resample the label onto the image grid (nearest neighbour)")
        values = np.unique(case.label.array)
        bad = [v for v in values.tolist() if v not in allowed]
        if bad:
            raise InputError(f"the label of case {case_id!r} has values {format_value(bad)}; allowed are {allowed} "
                             f"({', '.join(LABEL_NAMES.values())})",
                             fix="map the labels to vstk's scheme (vstk.labels.to_vstk_labels)")
        if not np.all(np.isfinite(case.image.array)):
            raise InputError(f"the image of case {case_id!r} contains NaN or Inf values",
                             fix="replace them (e.g. numpy.nan_to_num) before training")


def case_digest(case: TrainingCase) -> str:
    """SHA-256 of a case's image and label voxels and grids (and whether it is a real target
    image, pseudo- or truth-labelled, which decides its augmentation): equal digests, equal raw
    files and training."""
    digest = hashlib.sha256(b"pseudo-labelled" if case.pseudo_labelled else b"truth-target" if case.truth_target
                            else b"")
    for volume in (case.image, case.label):
        array = np.ascontiguousarray(volume.array)
        digest.update(f"{array.dtype.str}{array.shape}{volume.spacing}{volume.origin}{volume.direction}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def read_case_manifest(layout: RoundLayout) -> dict[str, str] | None:
    """``{case_id: digest}`` of a round's raw dataset, or None while it is incomplete."""
    return read_json(layout.cases_manifest)["cases"] if layout.cases_manifest.is_file() else None


def write_raw_dataset(layout: RoundLayout, cases: Sequence[TrainingCase], digests: Mapping[str, str],
                      previous: RoundLayout | None = None) -> None:
    """Write the nnU-Net raw dataset of a round; its ``vstk_cases.json`` is written last.

    Images keep their data type; labels are written as uint8. Files of cases with the same
    digest in ``previous`` are hard-linked from it. dataset.json lists every file under
    ``dataset``, so nnU-Net need not scan the folders, and fixes the SimpleITK reader so that
    arrays are read ``[z, y, x]`` like :class:`vstk.Volume`.
    """
    previous_cases = (read_case_manifest(previous) or {}) if previous is not None else {}
    entries: dict[str, dict[str, Any]] = {}
    for case in cases:
        image_rel = f"imagesTr/{case.case_id}_0000{FILE_ENDING}"
        label_rel = f"labelsTr/{case.case_id}{FILE_ENDING}"
        if previous is not None and previous_cases.get(case.case_id) == digests[case.case_id]:
            link_or_copy(previous.raw / image_rel, layout.raw / image_rel)
            link_or_copy(previous.raw / label_rel, layout.raw / label_rel)
        else:
            write_nifti(case.image, layout.raw / image_rel)
            write_nifti(case.label.with_array(case.label.array.astype(np.uint8)), layout.raw / label_rel)
        entries[case.case_id] = {"images": [image_rel], "label": label_rel}
    dataset_json = {
        "channel_names": {"0": "hrT2"},  # any name but "CT": nnU-Net z-scores each image (MRI-style)
        "labels": {name: value for value, name in sorted(LABEL_NAMES.items())},
        "numTraining": len(cases),
        "file_ending": FILE_ENDING,
        "overwrite_image_reader_writer": "SimpleITKIO",
        "dataset": entries,
        "name": layout.dataset_name,
        "description": f"vstk training set, self-training round {layout.round_index}",
    }
    write_json_atomic(layout.raw / "dataset.json", dataset_json)
    write_json_atomic(layout.cases_manifest, {"round": layout.round_index, "cases": dict(digests)})
