"""Ears found from image content (``vstk run --ears found``): every input is cropped to the
region around its inner ears before the rest of the run sees it.

Real CrossMoDA images do not share one field of view: a whole-head ceT1 has the canals
several centimetres below its centre, an hrT2 slab near it, and heads sit anywhere. This
stage finds the ears of every training ceT1, training hrT2 and test hrT2 with
:func:`vstk.ears.locate` (a reference built from the first labelled ceT1), crops each to its
ear region (:data:`vstk.ears.REGION_MM`, the field of view the cpu profile was built for) and
writes the crops as a data folder of its own, ``OUT/ears/train``; labels are cropped with
their image and must lie wholly inside the region. Test images are cropped when they are
predicted, and the predictions pasted back onto each test image's own grid.

``OUT/ears/regions.json`` (written last) records, per image, the source file, the ears found
(mm) and the region (voxels); a rerun on the same files reuses it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from ..atomic import write_json_atomic
from ..crossmoda import CaseFiles, DataFolder, discover, load_case, read_image
from ..ears import EarReference, Ears, build_reference, ear_region, locate
from ..errors import InputError, VstkError
from ..progress import progress_bar
from ..resources import usable_cores
from ..roi import Box, crop, grid_key, labels_outside, paste
from ..volume import Volume, write_nifti
from .parallel import watch_parent

log = logging.getLogger(__name__)

EARS_DIR = "ears"
RECORD = "regions.json"


@dataclasses.dataclass(frozen=True)
class Region:
    """Where one image's ears are, the voxel box (z, y, x) cropped around them, and the grids
    (:func:`vstk.roi.grid_key`) on which the ears are these: the image's and its crop's."""

    source: Path
    ears: Ears
    box: Box
    grids: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"source": str(self.source), "ears": self.ears.as_dict(), "start": list(self.box.start),
                "size": list(self.box.size), "grids": list(self.grids)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Region":
        return cls(Path(data["source"]), Ears.from_dict(data["ears"]),
                   Box(tuple(data["start"]), tuple(data["size"])), tuple(data["grids"]))  # type: ignore[arg-type]


def found_centres(regions: Mapping[str, Region]) -> dict[str, tuple[tuple[float, float, float], ...]]:
    """The ear-box centres of every grid the regions know, for :class:`vstk.roi.EarRule`; a
    grid shared by images with other ears (one scanner grid for every subject of a site)
    names none of them."""
    claims: dict[str, set[tuple[tuple[float, float, float], ...]]] = {}
    for region in regions.values():
        for grid in region.grids:
            claims.setdefault(grid, set()).add(region.ears.box_centres)
    return {grid: next(iter(centres)) for grid, centres in claims.items() if len(centres) == 1}


def ears_by_case(regions: Mapping[str, Region], suffix: str) -> dict[str, dict[str, Any]]:
    """``{case id: ears found (Ears.as_dict)}`` of the images named ``{case}{suffix}``
    (e.g. ``"_ceT1.nii.gz"``) among ``regions``."""
    return {Path(key).name[: -len(suffix)]: region.ears.as_dict()
            for key, region in regions.items() if Path(key).name.endswith(suffix)}


def _stamp(path: Path) -> list[Any]:
    stat = path.stat()
    return [path.name, stat.st_size, stat.st_mtime_ns]


def _inputs(train: DataFolder, test: DataFolder | None) -> dict[str, list[Any]]:
    """The files the regions are computed from, by name, size and modification time."""
    files = [c.ceT1 for c in train.source] + [c.label for c in train.source] + [c.hrT2 for c in train.target]
    files += [c.hrT2 for c in test.target] if test is not None else []
    return {str(p): _stamp(p) for p in files if p is not None}


def find_region(image: Volume, reference: EarReference, path: Path) -> Region:
    """The ears and ear region of ``image``."""
    try:
        ears = locate(image, reference)
    except InputError as error:
        raise InputError(error.problem, path=path, fix=error.fix) from None
    return _region(image, ears, path, None)


def _region(image: Volume, ears: Ears, path: Path, taken: dict[str, Ears] | None) -> Region:
    """The ear region of ``image`` around ``ears``; with ``taken`` (grid -> ears of the regions
    so far) it is moved by whole voxels until its grid is no other image's, so that a grid
    always names one image's ears."""
    start, size = ear_region(image, ears)
    box = Box(start, size)
    while taken is not None and taken.get(grid_key(image, box), ears) != ears:
        box = Box((box.start[0], box.start[1], box.start[2] + 1), box.size)
    grids = (grid_key(image), grid_key(image, box))
    if taken is not None:
        taken.update({grid: ears for grid in grids})
    return Region(path, ears, box, grids)


@dataclasses.dataclass(frozen=True)
class _Located:
    """What a worker of :func:`_locate_case` hands back: the region of one image before the
    grids of the other images are known, and (training images) its crop to that region."""

    region: Region
    image: Volume | None
    label: Volume | None


_WORKER_REFERENCE: dict[str, EarReference] = {}  # the reference of a worker process, read once


def _locate_case(case: CaseFiles, modality: str, crop_it: bool, reference: EarReference | str) -> _Located | VstkError:
    """Read one image (and its label), find its ears and, for ``crop_it``, cut both to the
    region; a bad input is returned (not raised) so that it crosses a process boundary whole.
    ``reference``: the reference, or (in a worker) the folder it is saved in."""
    if isinstance(reference, str):
        if reference not in _WORKER_REFERENCE:
            _WORKER_REFERENCE[reference] = EarReference.load(Path(reference))
        reference = _WORKER_REFERENCE[reference]
    path = getattr(case, modality)
    try:
        image, label = load_case(case, modality)  # a test label too: checked against its image
        region = find_region(image, reference, path)
        if not crop_it:
            return _Located(region, None, None)
        image_crop, label_crop = crop_labelled(image, label, region.box, case.label)
        return _Located(region, image_crop, label_crop)
    except VstkError as error:
        return error


#: At most this many processes find the ears side by side: each holds a whole-head image and
#: its smoothed copies (up to about 1 GB), and a run has a few dozen images.
MAX_EAR_WORKERS = 8


def ear_workers() -> int:
    """Processes that find the ears side by side: one per core, up to ``MAX_EAR_WORKERS``
    (each locates on one thread, see vstk.ears.locate; docs/results.md#the-ear-stage-on-two-cores)."""
    return max(1, min(usable_cores(), MAX_EAR_WORKERS))


def _recorded(out: Path, inputs: dict[str, list[Any]]) -> dict[str, Region] | None:
    """The regions ``OUT/ears`` holds when they are of exactly the files ``inputs`` stamps."""
    record_path = out / EARS_DIR / RECORD
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("inputs") != inputs:
        return None
    return {key: Region.from_dict(value) for key, value in record["regions"].items()}


def regions_recorded(out: Path, train: DataFolder, test: DataFolder | None) -> bool:
    """Whether ``OUT/ears`` holds the regions of exactly these files, unchanged since."""
    return _recorded(out, _inputs(train, test)) is not None


def _in_order(futures: list[Future]) -> Iterator[Any]:
    """The futures' results in their order, except that a bad input (a returned VstkError) of
    any of them comes at once, not after every image before it has been located."""
    for future in futures:
        while not future.done():
            wait([future], timeout=1.0)
            failed = next((f.result() for f in futures if f.done() and isinstance(f.result(), VstkError)), None)
            if failed is not None:
                yield failed
                return
        yield future.result()


def crop_training_data(out: Path, train: DataFolder, test: DataFolder | None, *,
                       show: bool | None = None, workers: int | None = None) -> tuple[DataFolder, dict[str, Region]]:
    """The training data cropped to each image's ear region (``OUT/ears/train``), and the
    region of every image by its file path (test images included), found or read back.

    The images are located in ``workers`` processes side by side (one per core by default);
    their regions are then settled in a fixed order, so the result does not depend on it.
    Every file (labels included) is read and checked as its ears are found; a bad one stops
    the stage as soon as it is read."""
    folder = out / EARS_DIR
    record_path = folder / RECORD
    inputs = _inputs(train, test)
    recorded = _recorded(out, inputs)
    if recorded is not None:
        return discover(folder / "train", require_source=True, require_target=True), recorded
    record_path.unlink(missing_ok=True)
    labelled = sorted(train.source, key=lambda c: c.case_id)
    image, label = load_case(labelled[0], "ceT1")
    build_reference(image, label).save(folder / "reference")
    log.info("ear reference: %s", labelled[0].ceT1)
    regions: dict[str, Region] = {}
    taken: dict[str, Ears] = {}
    jobs: list[tuple[CaseFiles, str, str]] = [(c, "ceT1", "train") for c in train.source]
    jobs += [(c, "hrT2", "train") for c in train.target]
    jobs += [(c, "hrT2", "") for c in (test.target if test is not None else [])]
    workers = max(1, min(workers or ear_workers(), len(jobs)))
    reference_folder = str(folder / "reference")  # as saved: the same reference in every process
    with contextlib.ExitStack() as stack:
        if workers == 1:
            reference = EarReference.load(Path(reference_folder))
            located = (_locate_case(case, modality, bool(split), reference) for case, modality, split in jobs)
        else:
            pool = stack.enter_context(ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"), initializer=watch_parent,
                initargs=(os.getpid(),)))
            stack.callback(pool.shutdown, cancel_futures=True)  # a bad image stops the others at once
            futures = [pool.submit(_locate_case, case, modality, bool(split), reference_folder)
                       for case, modality, split in jobs]
            located = _in_order(futures)
        bar = stack.enter_context(progress_bar(len(jobs), "find the ears", enabled=show))
        for n, ((case, modality, split), found) in enumerate(zip(jobs, located)):
            if isinstance(found, VstkError):
                raise found
            path = getattr(case, modality)
            region = found.region
            if taken.get(region.grids[1], region.ears) == region.ears:  # as located: nothing to move
                taken.update({grid: region.ears for grid in region.grids})
                if split:
                    _write_crops(folder / split, path, found.image, found.label, case)
            else:  # its crop's grid is another image's: moved by whole voxels, cut again here
                image, label = load_case(case, modality) if split else (read_image(path), None)
                region = _region(image, region.ears, path, taken)
                if split:
                    _write_crop(folder / split, path, image, label, case, region.box)
            regions[str(path)] = region
            bar(n + 1, len(jobs), path.name)
    write_json_atomic(record_path, {"inputs": inputs, "reference": str(labelled[0].ceT1),
                                    "regions": {key: r.as_dict() for key, r in regions.items()}})
    return discover(folder / "train", require_source=True, require_target=True), regions


def _write_crop(folder: Path, path: Path, image: Volume, label: Volume | None, case: CaseFiles, box: Box) -> None:
    _write_crops(folder, path, *crop_labelled(image, label, box, case.label), case)


def _write_crops(folder: Path, path: Path, image_crop: Volume, label_crop: Volume | None, case: CaseFiles) -> None:
    if label_crop is not None:
        write_nifti(label_crop, folder / case.label.name)
    write_nifti(image_crop, folder / path.name)


def crop_labelled(image: Volume, label: Volume | None, box: Box,
                  label_path: Path | None) -> tuple[Volume, Volume | None]:
    """``image`` and its ``label`` cut to the ear region ``box``; a label with voxels outside
    it is refused, naming ``label_path``: nothing labelled is cropped away."""
    label_crop = None
    if label is not None:
        outside = labels_outside(label, [box])
        if outside:
            raise InputError("; ".join(o.describe("the ear region found (the crop the run trains on)")
                                       for o in outside), path=label_path,
                             fix="check the image (both inner ears in view?), or give the boxes by hand "
                                 "with --ears rule --ear-offset X,Y,Z")
        label_crop = crop(label, box)
    return _crop_image(image, box), label_crop


def crop_to_region(image: Volume, region: Region) -> Volume:
    """``image`` cut to its ear region (padding with its background where none is needed)."""
    return _crop_image(image, region.box)


def _crop_image(image: Volume, box: Box) -> Volume:
    """``image`` cut to ``box``, padded with its background (1st percentile) where it ends."""
    inside = all(start >= 0 and start + size <= extent for start, size, extent in zip(box.start, box.size, image.shape))
    return crop(image, box, fill=0.0 if inside else float(np.percentile(image.array, 1.0)))


def restore(label: Volume, region: Region, original: Volume) -> Volume:
    """A label predicted on the ear region put back onto the ``original`` image's grid
    (background elsewhere)."""
    return original.with_array(paste(label.array.astype(np.uint8), region.box, original.shape))


def locate_regions(images: Mapping[str, tuple[Path, Volume]], run_ears: Path) -> dict[str, Region]:
    """The ear region of each image (``{key: (path, volume)}``) against the reference a run
    saved in ``run_ears`` (its ``OUT/ears``); an image file the run itself located, unchanged
    since, keeps the region the run used."""
    record_path = run_ears / RECORD
    known: dict[str, Any] = {}
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        known = {key: value for key, value in record["regions"].items()
                 if Path(key).is_file() and record["inputs"].get(key) == _stamp(Path(key))}
    reference = None
    regions = {}
    for key, (path, volume) in images.items():
        if str(path) in known:
            regions[key] = Region.from_dict(known[str(path)])
            continue
        reference = reference or EarReference.load(run_ears / "reference")
        regions[key] = find_region(volume, reference, path)
    return regions
