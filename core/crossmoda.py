"""Discover and validate CrossMoDA-style data folders.

Three layouts are accepted, all resolved to the same :class:`DataFolder`:

* CrossMoDA 2022/2023 names: ``crossmoda2022_{ldn|etz}_{id}_{ceT1|Label|hrT2}.nii.gz``
* CrossMoDA 2021 names: ``crossmoda_{id}_{ceT1|Label|hrT2}.nii.gz``
* plain names: ``{case}_{ceT1|Label|hrT2}.nii[.gz]`` in one folder, or the sub-folder layout
  ``ceT1/{case}.nii.gz``, ``hrT2/{case}.nii.gz``, ``labels/{case}.nii.gz``.

A labelled ceT1 case needs its ``Label``; an hrT2 case may have one (test truth, or the
paired phantom set). Labels of hrT2 cases can also live in a separate folder (``test_labels``).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np

from .errors import InputError
from .labels import to_vstk_labels
from .volume import Volume, read_nifti_counted

MODALITIES = ("ceT1", "hrT2", "Label")
_NAME = re.compile(r"^(?P<case>.+)_(?P<mod>ceT1|hrT2|Label)\.nii(\.gz)?$")
_SITE = re.compile(r"^crossmoda20\d\d_(?P<site>[a-z]+)_\d+$")
_SUBFOLDERS = {"ceT1": "ceT1", "hrT2": "hrT2", "labels": "Label"}


@dataclasses.dataclass(frozen=True)
class CaseFiles:
    """Files of one case. ``site`` is parsed from CrossMoDA 2022 names (``ldn``/``etz``)."""

    case_id: str
    ceT1: Path | None = None
    hrT2: Path | None = None
    label: Path | None = None

    @property
    def site(self) -> str | None:
        return site_of(self.case_id)


def site_of(case_id: str) -> str | None:
    """The acquisition site of a CrossMoDA 2022 case id (``crossmoda2022_ldn_7`` -> ``ldn``;
    London ``ldn``, Tilburg ``etz``), or None for other names."""
    match = _SITE.match(case_id)
    return match.group("site") if match else None


@dataclasses.dataclass(frozen=True)
class DataFolder:
    """The cases found in a folder.

    Attributes:
        root: the folder.
        layout: ``"crossmoda2022"``, ``"crossmoda2021"`` or ``"plain"``.
        source: labelled ceT1 cases (ceT1 + Label), sorted by case id.
        target: hrT2 cases (with a Label when one exists), sorted by case id.
    """

    root: Path
    layout: str
    source: tuple[CaseFiles, ...]
    target: tuple[CaseFiles, ...]


def _layout_of(case_ids: list[str]) -> str:
    if case_ids and all(c.startswith("crossmoda20") for c in case_ids):
        return "crossmoda2022"
    if case_ids and all(c.startswith("crossmoda_") for c in case_ids):
        return "crossmoda2021"
    return "plain"


def _collect(root: Path) -> dict[str, dict[str, Path]]:
    found: dict[str, dict[str, Path]] = {}

    def add(case: str, mod: str, path: Path) -> None:
        slot = found.setdefault(case, {})
        if mod in slot:
            raise InputError(f"two {mod} files for case {case!r}: {slot[mod].name} and {path.name}",
                             path=root, fix="keep one file per case and modality")
        slot[mod] = path

    for path in sorted(root.iterdir()):
        if path.is_file():
            match = _NAME.match(path.name)
            if match:
                add(match.group("case"), match.group("mod"), path)
    for sub, mod in _SUBFOLDERS.items():
        folder = root / sub
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.is_file() and re.search(r"\.nii(\.gz)?$", path.name):
                    add(re.sub(r"(_(ceT1|hrT2|Label))?\.nii(\.gz)?$", "", path.name), mod, path)
    return found


def discover(root: str | Path, *, labels: str | Path | None = None,
             require_source: bool = False, require_target: bool = False) -> DataFolder:
    """List the cases of a data folder without reading voxels.

    Args:
        root: folder in one of the module's layouts.
        labels: optional separate folder of ``{case}_Label.nii.gz`` for the hrT2 cases
            (CrossMoDA test truth, the phantom's ``test_labels``).
        require_source: fail when there is no labelled ceT1 case.
        require_target: fail when there is no hrT2 case.

    Raises :class:`InputError` for a missing folder, a ceT1 without a label, a label with
    no image, or labels that match no hrT2 image.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError("data folder not found", path=root, fix="pass an existing folder")
    found = _collect(root)
    if labels is not None:
        labels = Path(labels)
        if not labels.is_dir():
            raise InputError("label folder not found", path=labels, fix="pass an existing folder")
        extra = _collect(labels)
        for case, mods in extra.items():
            if set(mods) - {"Label"}:
                continue
            if case not in found or "hrT2" not in found[case]:
                raise InputError(f"label {mods['Label'].name} has no hrT2 image {case}_hrT2.nii.gz in {root}",
                                 path=mods["Label"], fix="test labels must share the case stem of a test image")
            if "Label" in found[case]:
                raise InputError(f"case {case!r} has a label in both folders", path=mods["Label"],
                                 fix="keep one")
            found[case]["Label"] = mods["Label"]
    source, target = [], []
    for case, mods in sorted(found.items()):
        if "ceT1" in mods and "Label" not in mods:
            raise InputError(f"ceT1 of case {case!r} has no label ({case}_Label.nii.gz)",
                             path=mods["ceT1"], fix="add the label, or move unlabelled ceT1 out of the folder")
        if mods.keys() == {"Label"}:
            raise InputError(f"label of case {case!r} has no ceT1 or hrT2 image", path=mods["Label"],
                             fix=f"add {case}_ceT1.nii.gz or {case}_hrT2.nii.gz, or remove the label")
        files = CaseFiles(case, mods.get("ceT1"), mods.get("hrT2"), mods.get("Label"))
        if files.ceT1 is not None:
            source.append(files)
        if files.hrT2 is not None:
            target.append(files)
    layout = _layout_of(list(found))
    if require_source and not source:
        raise InputError("no labelled ceT1 case (*_ceT1.nii.gz with *_Label.nii.gz)", path=root,
                         fix="point --data at a CrossMoDA training folder")
    if require_target and not target:
        raise InputError("no hrT2 image (*_hrT2.nii.gz)", path=root,
                         fix="the method needs unlabelled hrT2 to learn the translation")
    return DataFolder(root, layout, tuple(source), tuple(target))


def read_image(path: str | Path) -> Volume:
    """Read an MR image and check it is usable: finite, non-empty, not constant.

    Returns a float32 :class:`Volume`.
    """
    volume, nonfinite = read_nifti_counted(path)
    if nonfinite:
        raise InputError(f"image contains {nonfinite} NaN/Inf voxel(s)", path=path,
                         fix="replace them (e.g. by 0) or re-export the image")
    array = volume.array
    if array.size == 0:
        raise InputError("image has no voxels", path=path, fix="re-export the image")
    if np.issubdtype(array.dtype, np.complexfloating):
        raise InputError("complex-valued image", path=path, fix="store the magnitude image")
    array = array.astype(np.float32, copy=False)
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - finite.sum())
        raise InputError(f"image contains {bad} NaN/Inf voxel(s)", path=path,
                         fix="replace them (e.g. by 0) or re-export the image")
    if float(array.max()) == float(array.min()):
        raise InputError(f"image is empty (every voxel is {float(array.min()):g})", path=path,
                         fix="the file holds no image content; re-export it")
    return volume.with_array(array)


def read_label(path: str | Path, *, image: Volume | None = None, image_path: str | Path | None = None,
               scheme: str = "crossmoda2022") -> Volume:
    """Read a label map as uint8 {0 background, 1 VS, 2 cochlea} and check it fits ``image``."""
    volume, nonfinite = read_nifti_counted(path)
    if nonfinite:
        raise InputError("label map contains NaN or Inf", path=path, fix="re-export the label map")
    labels = to_vstk_labels(volume.array, scheme=scheme, path=path)
    volume = volume.with_array(labels)
    if image is not None:
        mismatch = volume.grid_mismatch(image)
        if mismatch is not None:
            other = f" {Path(image_path).name}" if image_path else ""
            raise InputError(f"label grid does not match its image{other}: {mismatch}", path=path,
                             fix="resample the label onto the image grid (nearest neighbour)")
    return volume


def load_case(files: CaseFiles, modality: str, *, scheme: str = "crossmoda2022") -> tuple[Volume, Volume | None]:
    """Read ``modality`` ("ceT1" or "hrT2") of a case and its label (None when it has none)."""
    if modality not in ("ceT1", "hrT2"):
        raise ValueError(f"modality must be ceT1 or hrT2, got {modality!r}")
    path = getattr(files, modality)
    if path is None:
        raise InputError(f"case {files.case_id!r} has no {modality} image", fix="check the data folder")
    image = read_image(path)
    label = None
    if files.label is not None:
        label = read_label(files.label, image=image, image_path=path, scheme=scheme)
    return image, label
