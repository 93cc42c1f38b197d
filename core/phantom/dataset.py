"""The phantom data set: a CrossMoDA-layout folder of rendered subjects and its manifest.

Output layout (``generate_phantom``)::

    OUT/train/        crossmoda2022_{site}_{id}_ceT1.nii.gz + _Label.nii.gz  (labelled ceT1)
                      crossmoda2022_{site}_{id}_hrT2.nii.gz                  (other subjects)
    OUT/train_hrT2_labels/  crossmoda2022_{site}_{id}_Label.nii.gz           (only with ``target_labels``)
    OUT/test/         crossmoda2022_{site}_{id}_hrT2.nii.gz                  (new subjects)
    OUT/test_labels/  crossmoda2022_{site}_{id}_Label.nii.gz                 (on the test grid)
    OUT/paired/       crossmoda2022_{site}_{id}_{ceT1,hrT2,Label}.nii.gz     (one grid, one pose)
    OUT/phantom.json  configuration and per-case metadata, written last (completion marker)

Case ids are unique over all splits (labelled ceT1 1..N, unlabelled hrT2 N+1..2N, then test,
then paired) and the two sites alternate within every split. ``phantom.json`` records per
case: stem, split, site, id, seed, files, grid (size, spacing, origin, direction), head pose,
the tumour (side, kind, nominal diameter in mm, cystic, volume in mm3 measured on the case's
grid), cochlea volume (mm3), label fractions, and landmarks (brainstem, fourth ventricle,
cochleae, IAC fundi, VS centre) as physical points in mm on that case's grid. With
``PhantomConfig.vary``, ``population`` holds the drawn population (:class:`Population`:
tissue intensities, noise and bias factors, slab protocols, anatomy distributions); it is
null otherwise.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import multiprocessing
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..atomic import write_json_atomic
from ..errors import ConfigError, InputError, format_value
from ..labels import BACKGROUND, COCHLEA, VS
from ..volume import write_nifti
from .anatomy import TISSUE_TO_LABEL, build_subject, subject_rng
from .population import Population
from .rendering import (CONTRASTS, DEFAULT_GEOMETRY, FOV_CENTRE, GEOMETRIES, HEAD_FOV_CENTRE, SITES, Grid, Pose,
                        acquire, crossmoda_protocols, draw_pose, grid_frame, render)

log = logging.getLogger(__name__)

MANIFEST = "phantom.json"
# Present from the first write on: marks a folder (complete or not) as written by vstk.phantom,
# so a rerun may clear it. phantom.json, written last, marks it complete.
OWNER_MARKER = ".vstk-phantom"
TARGET_LABELS = "train_hrT2_labels"
_OUTPUTS = ("train", TARGET_LABELS, "test", "test_labels", "paired", "overview.png")
_SPLITS = ("train_ceT1", "train_hrT2", "test", "paired")
_GENERATOR = "vstk.phantom"
_FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PhantomConfig:
    """What :func:`generate_phantom` writes.

    Attributes:
        cases: labelled ceT1 training cases, and as many unlabelled hrT2 training cases of
            other subjects. At least 2, so that both sites occur in every split.
        test_cases: hrT2 test cases (new subjects) with truth labels; None means
            ``max(2, cases // 2)``.
        paired_cases: subjects rendered in both contrasts on the same grid (the site's ceT1
            grid, one pose) with their label, to score translation against truth; None means
            ``max(2, cases // 4)``.
        seed: master seed. Subject ``id`` draws everything from
            ``numpy.random.SeedSequence([seed, id, stream])``: same seed, same bytes.
        resolution_scale: multiplies every protocol's matrix size and divides its voxel size,
            keeping the field of view; 1.0 gives CrossMoDA-like grids, 0.5 a quick small set.
        noise_fraction: Rician noise sigma as a fraction of the contrast's brightest tissue.
        bias_strength: peak amplitude of the log bias field (0.2 is about +-20 % intensity).
        pose_rotation_deg: head rotation about z per acquisition, uniform in +- this (degrees).
        pose_shift_mm: head translation per acquisition, normal with this std per axis (mm).
        target_labels: also write the truth labels of the unlabelled training hrT2 to
            ``OUT/train_hrT2_labels/`` (a supervised reference for ``vstk bench``); the images
            are the same either way.
        geometry: ``slab``: every image a small field of view (about 120 x 120 x 57 mm) centred
            near the ears, one matrix per site and contrast, heads shifted by ``pose_*``.
            ``crossmoda``: the real data's geometry (:func:`crossmoda_protocols`): whole-head
            ceT1 with the head shifted about +-12 mm in-plane and +-15 mm in z, hrT2 slabs
            planned on the canals within about +-8 mm, heads rotated about +-8 degrees and the
            grids oblique by as much (their direction matrices); ``pose_*`` are then unused.
            The default (:data:`DEFAULT_GEOMETRY`) is ``crossmoda``.
        vary: draw one :class:`Population` per seed (its own stream, ``[seed, 0, 99]``):
            tissue contrasts within the orderings that define ceT1 and hrT2, VS texture,
            noise and bias, the slab protocols of each site, and the tumour and cochlea size
            distributions, the same for every subject of the data set. False keeps the fixed
            phantom, the same bytes for every seed's subjects as without the option.
    """

    cases: int = 10
    test_cases: int | None = None
    paired_cases: int | None = None
    seed: int = 0
    resolution_scale: float = 1.0
    noise_fraction: float = 0.025
    bias_strength: float = 0.2
    pose_rotation_deg: float = 4.0
    pose_shift_mm: float = 2.0
    target_labels: bool = False
    geometry: str = DEFAULT_GEOMETRY
    vary: bool = False

    def __post_init__(self) -> None:
        if self.geometry not in GEOMETRIES:
            raise ConfigError(f"PhantomConfig.geometry {str(self.geometry)!r} is not known",
                              fix=f"use one of {', '.join(GEOMETRIES)}")
        for name in ("cases", "test_cases", "paired_cases"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, np.integer)) or value < 2):
                raise ConfigError(f"PhantomConfig.{name} must be an integer >= 2, got {format_value(value)}",
                                  fix="every split needs 2 cases so that both sites (ldn, etz) occur")
        if not 0.2 <= self.resolution_scale <= 2.0:
            raise ConfigError("PhantomConfig.resolution_scale must be in [0.2, 2], got "
                              f"{format_value(self.resolution_scale)}",
                              fix="use 1.0 for CrossMoDA-like grids, 0.5 for a quick test set")
        for name in ("noise_fraction", "bias_strength", "pose_rotation_deg", "pose_shift_mm"):
            if getattr(self, name) < 0:
                raise ConfigError(f"PhantomConfig.{name} must be >= 0, got {format_value(getattr(self, name))}",
                                  fix="use 0 to switch the effect off")

    def population(self) -> Population:
        """The population every subject is drawn from: drawn from the seed with ``vary``, else fixed."""
        return Population.draw(self.seed) if self.vary else Population.fixed()

    @property
    def n_test(self) -> int:
        """Number of test hrT2 cases after applying the default."""
        return self.test_cases if self.test_cases is not None else max(2, self.cases // 2)

    @property
    def n_paired(self) -> int:
        """Number of paired cases after applying the default."""
        return self.paired_cases if self.paired_cases is not None else max(2, self.cases // 4)


# --------------------------------------------------------------------------------------------
# Data set generation
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Case:
    """One subject to write: ``split`` is train_ceT1, train_hrT2, test or paired."""

    split: str
    case_id: int
    site: str

    @property
    def stem(self) -> str:
        return f"crossmoda2022_{self.site}_{self.case_id}"


def _plan(config: PhantomConfig) -> list[_Case]:
    """Cases with ids unique over all splits; sites alternate within each split."""
    cases: list[_Case] = []
    next_id = 1
    for split, count in (("train_ceT1", config.cases), ("train_hrT2", config.cases),
                         ("test", config.n_test), ("paired", config.n_paired)):
        for i in range(count):
            cases.append(_Case(split, next_id, SITES[i % 2]))
            next_id += 1
    return cases


def _grid_record(grid: Grid) -> dict[str, Any]:
    return {"size": list(grid.size), "spacing": list(grid.spacing), "origin": list(grid.origin),
            "direction": list(grid.direction)}


def _write_case(out: Path, case: _Case, config: PhantomConfig, population: Population) -> dict[str, Any]:
    """Render one subject of ``population`` for its split, write its files, return its metadata."""
    subject = build_subject(case.case_id, config.seed, population.anatomy)
    rng = subject_rng(config.seed, case.case_id, 1)
    pose = draw_pose(rng, rotation_deg=config.pose_rotation_deg, shift_mm=config.pose_shift_mm)
    if config.geometry == "crossmoda":  # draws of their own: the slab geometry's stay as they were
        geometry = subject_rng(config.seed, case.case_id, 2)
        protocols = crossmoda_protocols(case.site, geometry, config.resolution_scale)
        pose = Pose(round(float(geometry.uniform(-8.0, 8.0)), 4),
                    tuple(float(v) for v in np.round(geometry.uniform(-1.0, 1.0, 3) * [12.0, 12.0, 15.0], 4)))
        oblique = round(float(geometry.uniform(-8.0, 8.0)), 4)
        slab_shift = geometry.uniform(-8.0, 8.0, 3)
    else:
        protocols = population.site_protocols(case.site, config.resolution_scale)
    if case.split == "train_ceT1":
        folder, contrasts, grid_contrast, label_folder = "train", ("ceT1",), "ceT1", "train"
    elif case.split == "train_hrT2":
        folder, contrasts, grid_contrast = "train", ("hrT2",), "hrT2"
        label_folder = TARGET_LABELS if config.target_labels else None
    elif case.split == "test":
        folder, contrasts, grid_contrast, label_folder = "test", ("hrT2",), "hrT2", "test_labels"
    else:
        folder, contrasts, grid_contrast, label_folder = "paired", CONTRASTS, "ceT1", "paired"
    if config.geometry == "slab":
        # The grid follows the scanner, not the head: it is centred on the nominal FOV centre.
        grid = Grid.centred(protocols[grid_contrast], FOV_CENTRE)
    elif grid_contrast == "ceT1":  # the whole head, centred in the scanner; the head lies where it lies
        grid = Grid.centred(protocols[grid_contrast], HEAD_FOV_CENTRE, oblique)
    else:  # a slab planned on the canals, off by a few mm
        grid = Grid.centred(protocols[grid_contrast], pose.to_physical(FOV_CENTRE) + slab_shift, oblique)
    intensity = population.intensity_table()
    clean, tissue = render(subject, *grid_frame(grid, pose), contrasts, intensity)
    files: dict[str, str] = {}
    for contrast in contrasts:
        image = acquire(clean[contrast], grid, contrast, rng, intensity=intensity,
                        bias_strength=config.bias_strength * population.bias_factor,
                        noise_fraction=config.noise_fraction * population.noise_factor)
        path = write_nifti(grid.volume(image), out / folder / f"{case.stem}_{contrast}.nii.gz")
        files[contrast] = str(path.relative_to(out))
    label = TISSUE_TO_LABEL[tissue]
    if label_folder is not None:
        path = write_nifti(grid.volume(label), out / label_folder / f"{case.stem}_Label.nii.gz")
        files["Label"] = str(path.relative_to(out))
    voxel_mm3 = float(np.prod(grid.spacing))
    counts = np.bincount(label.ravel(), minlength=3)
    return {
        "stem": case.stem, "split": case.split, "site": case.site, "id": case.case_id,
        "seed": [int(config.seed), int(case.case_id)],
        "files": files, "grid": _grid_record(grid),
        "pose": {"rotation_z_deg": pose.angle_deg, "shift_mm": list(pose.shift_mm)},
        "vs": {**subject.vs, "volume_mm3": round(float(counts[VS]) * voxel_mm3, 2)},
        "cochlea_volume_mm3": round(float(counts[COCHLEA]) * voxel_mm3, 2),
        "label_fraction": {"vs": float(counts[VS] / label.size), "cochlea": float(counts[COCHLEA] / label.size)},
        "landmarks_mm": {k: [round(float(v), 3) for v in pose.to_physical(p)] for k, p in subject.landmarks.items()},
    }


def _prepare_folder(out: Path) -> None:
    """Make ``out`` an empty phantom folder, clearing an earlier (possibly partial) phantom run.

    Refuses to clear a non-empty folder that this module did not write.
    """
    if out.exists() and not out.is_dir():
        raise InputError("phantom output exists and is not a folder", path=out, fix="choose another path")
    if out.is_dir() and any(out.iterdir()):
        manifest = out / MANIFEST
        owned = (out / OWNER_MARKER).is_file()
        if not owned and manifest.is_file():
            try:
                owned = json.loads(manifest.read_text()).get("generator") == _GENERATOR
            except (OSError, ValueError, AttributeError):
                owned = False
        if not owned:
            raise InputError("folder is not empty and was not written by vstk phantom", path=out,
                             fix="choose an empty or new folder for the phantom")
        manifest.unlink(missing_ok=True)  # first: the folder now reads as incomplete
        for name in _OUTPUTS:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / OWNER_MARKER).write_text("written by vstk.phantom; phantom.json appears when complete\n")


def generate_phantom(out_dir: str | Path, config: PhantomConfig = PhantomConfig(),
                     progress: Callable[[str], None] | None = None, *, workers: int = 1) -> dict[str, Any]:
    """Write a CrossMoDA-layout phantom data set to ``out_dir`` (see the module docstring).

    An earlier phantom in ``out_dir``, complete or interrupted, is replaced; any other
    non-empty folder is refused. ``phantom.json`` is written last, so a folder without it is
    an interrupted run. The content depends on ``config`` only, not on ``workers``.

    Args:
        out_dir: output folder (created).
        config: what to generate.
        progress: called with one line per written case.
        workers: processes writing cases in parallel (1: in this process). More than one
            uses "spawn" worker processes, so a calling script needs the usual
            ``if __name__ == "__main__":`` guard.

    Returns:
        Summary: ``out_dir``, ``counts`` per split, ``files`` (paths relative to ``out_dir``),
        ``seconds`` (wall time) and ``manifest`` (path of phantom.json).
    """
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}",
                          fix="use 1 (serial) or the number of CPU cores")
    start = time.perf_counter()
    out = Path(out_dir)
    _prepare_folder(out)
    plan = _plan(config)
    population = config.population()
    records: dict[int, dict[str, Any]] = {}

    def done(record: dict[str, Any]) -> None:
        records[record["id"]] = record
        message = (f"phantom {len(records)}/{len(plan)}: {record['stem']} ({record['split']}, "
                   f"VS {record['vs']['side']} {record['vs']['kind']} {record['vs']['diameter_mm']:.0f} mm)")
        log.debug(message)
        if progress is not None:
            progress(message)

    if workers == 1 or len(plan) == 1:
        for case in plan:
            done(_write_case(out, case, config, population))
    else:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(min(workers, len(plan)), mp_context=context) as pool:
            futures = [pool.submit(_write_case, out, case, config, population) for case in plan]
            try:
                for future in concurrent.futures.as_completed(futures):
                    done(future.result())
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    ordered = [records[case.case_id] for case in plan]
    seconds = time.perf_counter() - start
    counts = {split: sum(r["split"] == split for r in ordered) for split in _SPLITS}
    manifest = {
        "generator": _GENERATOR,
        "format_version": _FORMAT_VERSION,
        "config": dataclasses.asdict(config) | {"test_cases": config.n_test, "paired_cases": config.n_paired},
        "seed": config.seed,
        "labels": {str(BACKGROUND): "background", str(VS): "vestibular schwannoma", str(COCHLEA): "cochlea"},
        # the crossmoda geometry draws each case's grids: cases[].grid holds them
        "protocols": ({site: {c: dataclasses.asdict(p)
                              for c, p in population.site_protocols(site, config.resolution_scale).items()}
                       for site in SITES} if config.geometry == "slab" else "per case"),
        "population": population.to_json() if config.vary else None,
        "counts": counts,
        "seconds": round(seconds, 2),
        "cases": ordered,
    }
    write_json_atomic(out / MANIFEST, manifest, indent=1)
    log.info("phantom: %d cases written to %s in %.1f s", len(ordered), out, seconds)
    return {"out_dir": str(out), "counts": counts,
            "files": [f for r in ordered for f in r["files"].values()],
            "seconds": seconds, "manifest": str(out / MANIFEST)}


def load_manifest(out_dir: str | Path) -> dict[str, Any]:
    """Read ``phantom.json`` of a complete phantom folder."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise InputError("no phantom.json: not a complete phantom folder", path=Path(out_dir),
                         fix="run `vstk phantom OUT` (again) to finish it")
    data = json.loads(path.read_text())
    if data.get("generator") != _GENERATOR:
        raise InputError("phantom.json was not written by vstk.phantom", path=path, fix="regenerate the phantom")
    return data

