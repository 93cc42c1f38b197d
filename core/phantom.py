"""Procedural inner-ear MRI phantom written as a CrossMoDA-layout folder (no downloads).

Every subject's anatomy is defined once, in continuous physical space, as an ordered list
of painted layers: implicit solids (ellipsoids, rounded boxes, tubes along curves such as
the cochlear spiral) that each carry a tissue class. The anatomy frame is in mm with the
axes of LPS space: x to the patient's left, y posterior, z superior; its origin lies on the
midline between the two internal auditory canals (IAC), at their height.

A subject is rendered onto an acquisition grid (the site's ceT1 or hrT2 protocol) seen
through a per-acquisition head pose (rotation about z, translation), so two acquisitions
of a data set are not aligned. Rendering is anti-aliased: a layer's signed distance in
voxel units gives a coverage ``alpha`` (a one-voxel box filter across its surface) that
blends the layer's intensity over what was painted before (partial volume). The tissue map,
and from it the label, takes the class of the last layer that contains the voxel centre,
so labels are crisp nearest-neighbour samples of the same continuous anatomy. After
rendering, a smooth multiplicative bias field and Rician noise are applied per acquisition.

Label values follow :mod:`vstk.labels`: 0 background, 1 vestibular schwannoma (VS),
2 cochlea (both ears). Vestibule and semicircular canals are fluid-bright but unlabelled.

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
cochleae, IAC fundi, VS centre) as physical points in mm on that case's grid.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import enum
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy.spatial import cKDTree

from .errors import ConfigError, InputError
from .labels import BACKGROUND, COCHLEA, VS
from .volume import Volume, read_nifti, write_nifti

log = logging.getLogger(__name__)

CONTRASTS: tuple[str, str] = ("ceT1", "hrT2")
SITES: tuple[str, str] = ("ldn", "etz")
MANIFEST = "phantom.json"
# Present from the first write on: marks a folder (complete or not) as written by this module,
# so a rerun may clear it. phantom.json, written last, marks it complete.
OWNER_MARKER = ".vstk-phantom"
TARGET_LABELS = "train_hrT2_labels"
_OUTPUTS = ("train", TARGET_LABELS, "test", "test_labels", "paired", "overview.png")
_SPLITS = ("train_ceT1", "train_hrT2", "test", "paired")
_GENERATOR = "vstk.phantom"
_FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------------
# Configuration and acquisition protocols
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

    def __post_init__(self) -> None:
        for name in ("cases", "test_cases", "paired_cases"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, np.integer)) or value < 2):
                raise ConfigError(f"PhantomConfig.{name} must be an integer >= 2, got {value!r}",
                                  fix="every split needs 2 cases so that both sites (ldn, etz) occur")
        if not 0.2 <= self.resolution_scale <= 2.0:
            raise ConfigError(f"PhantomConfig.resolution_scale must be in [0.2, 2], got {self.resolution_scale!r}",
                              fix="use 1.0 for CrossMoDA-like grids, 0.5 for a quick test set")
        for name in ("noise_fraction", "bias_strength", "pose_rotation_deg", "pose_shift_mm"):
            if getattr(self, name) < 0:
                raise ConfigError(f"PhantomConfig.{name} must be >= 0, got {getattr(self, name)!r}",
                                  fix="use 0 to switch the effect off")

    @property
    def n_test(self) -> int:
        """Number of test hrT2 cases after applying the default."""
        return self.test_cases if self.test_cases is not None else max(2, self.cases // 2)

    @property
    def n_paired(self) -> int:
        """Number of paired cases after applying the default."""
        return self.paired_cases if self.paired_cases is not None else max(2, self.cases // 4)


@dataclasses.dataclass(frozen=True)
class AcquisitionProtocol:
    """An acquisition grid: voxel size in mm and matrix size in voxels, both ``(x, y, z)``."""

    spacing: tuple[float, float, float]
    size: tuple[int, int, int]

    def scaled(self, scale: float) -> "AcquisitionProtocol":
        """Same field of view with ``scale`` times as many voxels per axis."""
        size = tuple(max(8, int(round(n * scale))) for n in self.size)
        spacing = tuple(round(s * n / m, 4) for s, n, m in zip(self.spacing, self.size, size))
        return AcquisitionProtocol(spacing, size)  # type: ignore[arg-type]

    @property
    def field_of_view_mm(self) -> tuple[float, float, float]:
        return tuple(s * n for s, n in zip(self.spacing, self.size))  # type: ignore[return-value]


def site_protocols(site: str, scale: float = 1.0) -> dict[str, AcquisitionProtocol]:
    """The ceT1 and hrT2 grids of a site ("ldn" or "etz"), fields of view about 120 x 120 x 57 mm."""
    table = {
        "ldn": {"ceT1": AcquisitionProtocol((0.41, 0.41, 1.5), (288, 288, 40)),
                "hrT2": AcquisitionProtocol((0.5, 0.5, 1.0), (240, 240, 60))},
        "etz": {"ceT1": AcquisitionProtocol((0.47, 0.47, 1.2), (256, 256, 48)),
                "hrT2": AcquisitionProtocol((0.6, 0.6, 0.8), (208, 208, 68))},
    }
    if site not in table:
        raise ConfigError(f"unknown phantom site {site!r}", fix=f"use one of {', '.join(table)}")
    return {c: p.scaled(scale) if scale != 1.0 else p for c, p in table[site].items()}


# --------------------------------------------------------------------------------------------
# Tissues and their appearance
# --------------------------------------------------------------------------------------------
class _Tissue(enum.IntEnum):
    """Tissue classes of the phantom (the values of the internal tissue map)."""

    AIR = 0
    FAT = 1
    BONE = 2
    MARROW = 3
    CSF = 4
    GREY = 5
    WHITE = 6
    BRAINSTEM = 7
    NERVE = 8
    VESSEL = 9
    CHOROID = 10
    LABYRINTH = 11
    COCHLEA = 12
    VS = 13
    VS_CYST = 14


# Mean intensity (arbitrary MR units) per tissue: column 0 ceT1, column 1 hrT2 (CISS-like).
# ceT1: fluid dark, fat/marrow bright, white > grey, VS and vessels enhancing.
# hrT2: fluid bright, brain grey with grey > white, bone/air/flowing blood dark, VS grey.
_MEAN_INTENSITY: dict[_Tissue, tuple[float, float]] = {
    _Tissue.AIR: (0, 0), _Tissue.FAT: (720, 430), _Tissue.BONE: (40, 35), _Tissue.MARROW: (560, 260),
    _Tissue.CSF: (95, 920), _Tissue.GREY: (360, 330), _Tissue.WHITE: (470, 250),
    _Tissue.BRAINSTEM: (440, 275), _Tissue.NERVE: (400, 210), _Tissue.VESSEL: (780, 60),
    _Tissue.CHOROID: (650, 420), _Tissue.LABYRINTH: (150, 860), _Tissue.COCHLEA: (150, 860),
    _Tissue.VS: (820, 430), _Tissue.VS_CYST: (230, 780),
}
_INTENSITY = np.array([_MEAN_INTENSITY[t] for t in _Tissue], dtype=np.float64)  # (tissues, contrasts)

_TISSUE_TO_LABEL = np.zeros(len(_Tissue), dtype=np.uint8)
_TISSUE_TO_LABEL[[_Tissue.VS, _Tissue.VS_CYST]] = VS
_TISSUE_TO_LABEL[_Tissue.COCHLEA] = COCHLEA


# --------------------------------------------------------------------------------------------
# Grids, poses and blocks of sample points
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Grid:
    """An axis-aligned acquisition grid (identity direction); sizes and mm in (x, y, z)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    @classmethod
    def centred(cls, protocol: AcquisitionProtocol, centre: np.ndarray) -> "_Grid":
        size = np.asarray(protocol.size)
        spacing = np.asarray(protocol.spacing)
        origin = np.asarray(centre) - (size - 1) / 2.0 * spacing
        return cls(protocol.size, protocol.spacing, tuple(float(v) for v in np.round(origin, 4)))

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(z, y, x)``."""
        return (self.size[2], self.size[1], self.size[0])

    def volume(self, array: np.ndarray) -> Volume:
        return Volume(array, self.spacing, self.origin)


@dataclasses.dataclass(frozen=True)
class _Pose:
    """Where the head sits in the scanner: physical p = R_z(angle) q + shift, q in anatomy mm."""

    angle_deg: float = 0.0
    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def _rz(self) -> np.ndarray:
        a = np.deg2rad(self.angle_deg)
        return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])

    def to_physical(self, q: np.ndarray) -> np.ndarray:
        """Anatomy points (..., 3) in mm to physical (scanner) points in mm."""
        return np.asarray(q) @ self._rz().T + np.asarray(self.shift_mm)


@dataclasses.dataclass(frozen=True, eq=False)
class _Block:
    """Sample points of a box of voxels, in anatomy coordinates (mm).

    ``qx`` and ``qy`` vary in-plane only (shape ``(1, Y, X)``), ``qz`` along slices only
    (shape ``(Z, 1, 1)``): poses rotate about z, so 3D arrays are formed only by broadcasting.
    ``s_xy`` and ``s_z`` are the voxel size in mm (in-plane, slice), used to express signed
    distances in voxels. ``cache`` lets layers that share a solid (the head's shells) share
    its evaluation. ``plane`` caches in-plane factors for all slabs of a rendering that share
    the in-plane range ``xy_key`` (None: do not cache).
    """

    qx: np.ndarray
    qy: np.ndarray
    qz: np.ndarray
    s_xy: float
    s_z: float
    cache: dict = dataclasses.field(default_factory=dict, repr=False)
    plane: dict = dataclasses.field(default_factory=dict, repr=False)
    xy_key: tuple | None = None

    def planar(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """In-plane quantity ``compute()`` (depends on qx, qy only), cached over slabs."""
        if self.xy_key is None:
            return compute()
        full_key = (*key, self.xy_key)
        if full_key not in self.plane:
            self.plane[full_key] = compute()
        return self.plane[full_key]

    @property
    def shape(self) -> tuple[int, ...]:
        return np.broadcast_shapes(self.qx.shape, self.qy.shape, self.qz.shape)

    @classmethod
    def of_points(cls, points: np.ndarray) -> "_Block":
        """A block of scattered points (N, 3), shaped (1, 1, N); distances come out in mm."""
        p = np.asarray(points, dtype=np.float32).reshape(1, 1, -1, 3)
        return cls(p[..., 0], p[..., 1], p[..., 2], 1.0, 1.0)


# --------------------------------------------------------------------------------------------
# Smooth random fields, textures and solids
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class _Field:
    """A smooth random field of about unit variance, defined in anatomy space (mm).

    A sum of products ``cos(k_xy . q_xy + a) * cos(k_z q_z + b)`` (each a pair of plane
    waves with wavelengths in ``wavelength_mm``). The terms come in groups sharing ``k_z``,
    so a group costs one in-plane sum (2D arrays) and one broadcast product: cheap on whole
    volumes. A block's evaluation is cached, so layers sharing a field (the cortex and the
    white matter follow the same folds) evaluate it once.
    """

    k_xy: np.ndarray     # (groups, per_group, 2) rad/mm
    phase_xy: np.ndarray  # (groups, per_group)
    k_z: np.ndarray      # (groups,) rad/mm
    phase_z: np.ndarray  # (groups,)
    weight: float

    @classmethod
    def random(cls, rng: np.random.Generator, wavelength_mm: tuple[float, float], components: int = 8,
               per_group: int = 4) -> "_Field":
        groups = max(1, int(np.ceil(components / per_group)))
        k = 2 * np.pi / rng.uniform(*wavelength_mm, size=(groups, per_group))
        cos_polar = rng.uniform(-1.0, 1.0, groups)  # shared direction cosine to z per group
        k_z = k.mean(axis=1) * cos_polar
        k_in = np.sqrt(np.maximum(k ** 2 - k_z[:, None] ** 2, (0.2 * k) ** 2))
        azimuth = rng.uniform(0, 2 * np.pi, (groups, per_group))
        k_xy = np.stack([k_in * np.cos(azimuth), k_in * np.sin(azimuth)], axis=-1)
        return cls(k_xy, rng.uniform(0, 2 * np.pi, (groups, per_group)), k_z, rng.uniform(0, 2 * np.pi, groups),
                   2.0 / np.sqrt(groups * per_group))

    @property
    def max_abs(self) -> float:
        return self.weight * self.phase_xy.size

    def __call__(self, b: _Block) -> np.ndarray:
        key = ("field", id(self))
        if key in b.cache:
            return b.cache[key]
        def inplane_sums() -> list[np.ndarray]:
            sums = []
            for kxy, pxy in zip(self.k_xy, self.phase_xy):
                waves = [np.cos(b.qx * np.float32(kx) + b.qy * np.float32(ky) + np.float32(p))
                         for (kx, ky), p in zip(kxy, pxy)]
                sums.append(np.sum(waves, axis=0))
            return sums

        total = None
        for inplane, kz, pz in zip(b.planar(("field", id(self)), inplane_sums), self.k_z, self.phase_z):
            term = inplane * np.cos(b.qz * np.float32(kz) + np.float32(pz))
            total = term if total is None else total + term
        b.cache[key] = total = total * np.float32(self.weight)
        return total


@dataclasses.dataclass(frozen=True, eq=False)
class _Fissures:
    """Thin lines in [0, 1] on warped shells every ``spacing_mm`` around ``centre`` (cerebellar folia)."""

    centre: np.ndarray
    spacing_mm: float
    warp: _Field
    warp_mm: float

    def __call__(self, b: _Block) -> np.ndarray:
        c = [float(v) for v in self.centre]
        dx, dy, dz = b.qx - c[0], b.qy - c[1], b.qz - c[2]
        r = np.sqrt((dx * dx + dy * dy) + dz * dz) + np.float32(self.warp_mm) * self.warp(b)
        wave = np.float32(0.5) + np.float32(0.5) * np.cos(r * np.float32(2 * np.pi / self.spacing_mm))
        wave *= wave
        wave *= wave
        return wave * wave


def _frame(axis: np.ndarray, hint: np.ndarray | None = None) -> np.ndarray:
    """Rotation whose rows are an orthonormal frame (u, v, w) with w along ``axis``."""
    w = _unit(axis)
    hint = np.array([0.0, 0.0, 1.0]) if hint is None else np.asarray(hint, dtype=np.float64)
    if abs(np.dot(_unit(hint), w)) > 0.95:
        hint = np.array([1.0, 0.0, 0.0]) if abs(w[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = hint - np.dot(hint, w) * w
    u /= np.linalg.norm(u)
    return np.stack([u, np.cross(w, u), w])


def _inplane_frame(axis_xy: np.ndarray) -> np.ndarray:
    """Rows: ``axis_xy`` (in the axial plane), its in-plane normal, and z."""
    a = _unit([axis_xy[0], axis_xy[1], 0.0])
    return np.stack([a, np.cross([0.0, 0.0, 1.0], a), [0.0, 0.0, 1.0]])


def _rot_z(angle_deg: float) -> np.ndarray:
    """Rows are the local axes of a frame turned by ``angle_deg`` about z."""
    a = np.deg2rad(angle_deg)
    return np.array([[np.cos(a), np.sin(a), 0.0], [-np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


@dataclasses.dataclass(frozen=True, eq=False)
class _Ellipsoid:
    """Solid ``rho <= 1`` with ``rho ** power = sum_i |u_i / a_i| ** power``, u = rotation @ (q - centre).

    ``power`` 2 is an ellipsoid, larger powers round boxes. ``field`` displaces the surface
    by about ``field_mm`` mm per unit of field (outwards where positive): folds, irregular
    bone. Distances are the first-order estimate ``(rho - 1) / |grad rho|`` (exact for a
    sphere), taken per voxel index for :meth:`sd` and in mm for :meth:`distance_mm`.
    """

    centre: np.ndarray
    semi_axes: np.ndarray
    rotation: np.ndarray = dataclasses.field(default_factory=lambda: np.eye(3))
    power: float = 2.0
    field: _Field | None = None
    field_mm: float = 0.0

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        half = np.abs(self.rotation).T @ np.asarray(self.semi_axes, dtype=np.float64)
        if self.field is not None:
            half = half + abs(self.field_mm) * self.field.max_abs
        return self.centre - half, self.centre + half

    def _powers(self, t):
        """|t| ** power and its derivative."""
        if self.power == 2:
            return t * t, 2 * t
        at = np.abs(t)
        tp1 = at ** (self.power - 1)
        return tp1 * at, self.power * tp1 * np.sign(t)

    def _parts(self, b: _Block):
        """rho - 1 - displacement, squared gradient of rho^p per voxel index and in mm, and rho."""
        c = [float(v) for v in self.centre]
        a = [float(v) for v in self.semi_axes]
        r = self.rotation
        dx, dy, dz = b.qx - c[0], b.qy - c[1], b.qz - c[2]
        if abs(r[2, 2]) == 1.0 and not r[0, 2] and not r[1, 2]:
            # z stays z: in-plane and per-slice parts are computed apart and broadcast.
            def inplane() -> tuple[np.ndarray, np.ndarray]:
                t0 = (float(r[0, 0]) * dx + float(r[0, 1]) * dy) * (1 / a[0])
                t1 = (float(r[1, 0]) * dx + float(r[1, 1]) * dy) * (1 / a[1])
                (f0, g0), (f1, g1) = self._powers(t0), self._powers(t1)
                g0, g1 = g0 * (1 / a[0]), g1 * (1 / a[1])
                return f0 + f1, g0 * g0 + g1 * g1

            fxy, gxy2 = b.planar(("ellipsoid", id(self)), inplane)
            f2, g2 = self._powers(dz * (1 / a[2]))
            value = fxy + f2
            gz2 = (g2 * (1 / a[2])) ** 2
        else:
            ts = [(float(r[i, 0]) * dx + float(r[i, 1]) * dy + float(r[i, 2]) * dz) * (1 / a[i]) for i in range(3)]
            fg = [self._powers(t) for t in ts]
            value = fg[0][0] + fg[1][0] + fg[2][0]
            gu = [fg[i][1] * (1 / a[i]) for i in range(3)]
            gz = float(r[0, 2]) * gu[0] + float(r[1, 2]) * gu[1] + float(r[2, 2]) * gu[2]
            gz2 = gz * gz
            gxy2 = gu[0] * gu[0] + gu[1] * gu[1] + gu[2] * gu[2] - gz2
        rho = np.sqrt(value) if self.power == 2 else value ** (1.0 / self.power)
        g = rho - 1.0
        if self.field is not None and self.field_mm:
            g = g - np.float32(self.field_mm / float(np.mean(a))) * self.field(b)
        return g, gxy2, gz2, rho

    def sd(self, b: _Block) -> np.ndarray:
        g, gxy2, gz2, rho = self._parts(b)
        # |grad rho| = |grad rho^p| / (p rho^(p-1))
        scale = self.power * (rho if self.power == 2 else rho ** (self.power - 1))
        return g * scale / np.sqrt(np.maximum(b.s_xy ** 2 * gxy2 + b.s_z ** 2 * gz2, 1e-12))

    def distance_mm(self, b: _Block) -> tuple[np.ndarray, np.ndarray]:
        """Approximate signed distance in mm and the voxel footprint (mm) across the surface."""
        key = ("distance_mm", id(self))
        if key not in b.cache:
            g, gxy2, gz2, rho = self._parts(b)
            grad2 = np.maximum(gxy2 + gz2, 1e-12)
            scale = self.power * (rho if self.power == 2 else rho ** (self.power - 1))
            width = np.sqrt((b.s_xy ** 2 * gxy2 + b.s_z ** 2 * gz2) / grad2)
            b.cache[key] = (g * scale / np.sqrt(grad2), width)
        return b.cache[key]


@dataclasses.dataclass(frozen=True, eq=False)
class _Shell:
    """The solid ``inset_mm`` inside the surface of ``base`` (skull tables, cortex...), optionally
    displaced by ``field`` (``field_mm`` per unit, outwards where positive).

    Shells of one base share its evaluation (the block's cache), so the layered head costs
    little more than one ellipsoid.
    """

    base: _Ellipsoid
    inset_mm: float
    field: _Field | None = None
    field_mm: float = 0.0

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.base.bounds()  # same box as the base, so the cached evaluation is reused

    def sd(self, b: _Block) -> np.ndarray:
        distance, width = self.base.distance_mm(b)
        d = distance + np.float32(self.inset_mm)
        if self.field is not None and self.field_mm:
            d = d - np.float32(self.field_mm) * self.field(b)
        return d / width


@dataclasses.dataclass(frozen=True, eq=False)
class _Capsule:
    """Solid of all points within ``radius`` mm of the segment from ``a`` to ``b`` (exact distance)."""

    a: np.ndarray
    b: np.ndarray
    radius: float

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.minimum(self.a, self.b) - self.radius, np.maximum(self.a, self.b) + self.radius

    def sd(self, blk: _Block) -> np.ndarray:
        a = [float(v) for v in self.a]
        d = np.asarray(self.b, dtype=np.float64) - np.asarray(self.a, dtype=np.float64)
        inv_len2 = 1.0 / float(d @ d)
        dx, dy, dz = blk.qx - a[0], blk.qy - a[1], blk.qz - a[2]
        t = np.clip((dx * float(d[0]) + dy * float(d[1]) + dz * float(d[2])) * inv_len2, 0.0, 1.0)
        ex, ey, ez = dx - t * float(d[0]), dy - t * float(d[1]), dz - t * float(d[2])
        dist2 = np.maximum(ex * ex + ey * ey + ez * ez, 1e-12)
        width = np.sqrt(blk.s_xy ** 2 + (blk.s_z ** 2 - blk.s_xy ** 2) * (ez * ez) / dist2)
        return (np.sqrt(dist2) - self.radius) / width


@dataclasses.dataclass(frozen=True, eq=False)
class _Tube:
    """Solid of points within ``radii[i]`` mm of a densely sampled curve ``points`` (N, 3).

    The curve is sampled finely (about 0.05 mm) so that the nearest sample stands in for the
    nearest curve point; a k-d tree answers the queries. For small curved structures
    (cochlea, semicircular canals); straight pieces use :class:`_Capsule`.
    """

    points: np.ndarray
    radii: np.ndarray
    _tree: cKDTree = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_tree", cKDTree(self.points))

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        r = float(self.radii.max())
        return self.points.min(axis=0) - r, self.points.max(axis=0) + r

    def sd(self, b: _Block) -> np.ndarray:
        shape = b.shape
        q = np.stack([np.broadcast_to(v, shape).ravel() for v in (b.qx, b.qy, b.qz)], axis=1).astype(np.float64)
        reach = float(self.radii.max()) + 2.0 * max(b.s_xy, b.s_z)
        dist, idx = self._tree.query(q, distance_upper_bound=reach)
        far = ~np.isfinite(dist)
        idx[far] = 0
        dist = np.where(far, reach, dist)
        nz = (q[:, 2] - self.points[idx, 2]) / np.maximum(dist, 1e-9)
        width = np.sqrt(b.s_xy ** 2 + (b.s_z ** 2 - b.s_xy ** 2) * nz * nz)
        out = ((dist - self.radii[idx]) / width).astype(np.float32)
        out[far] = 1e3
        return out.reshape(shape)


@dataclasses.dataclass(frozen=True, eq=False)
class _Union:
    parts: tuple

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        boxes = [p.bounds() for p in self.parts]
        return np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0)

    def sd(self, b: _Block) -> np.ndarray:
        out = None
        for part in self.parts:
            d = part.sd(b)
            out = d if out is None else np.minimum(out, d)
        return out


@dataclasses.dataclass(frozen=True, eq=False)
class _Intersection:
    """Points inside every part; the box is that of the first part."""

    parts: tuple

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.parts[0].bounds()

    def sd(self, b: _Block) -> np.ndarray:
        out = None
        for part in self.parts:
            d = part.sd(b)
            out = d if out is None else np.maximum(out, d)
        return out


@dataclasses.dataclass(frozen=True, eq=False)
class _Cut:
    """``keep`` minus ``remove``."""

    keep: Any
    remove: Any

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.keep.bounds()

    def sd(self, b: _Block) -> np.ndarray:
        return np.maximum(self.keep.sd(b), -self.remove.sd(b))


@dataclasses.dataclass(frozen=True, eq=False)
class _Gate:
    """The part of ``shape`` where ``field`` exceeds ``threshold`` (cysts inside a tumour)."""

    shape: Any
    field: _Field
    threshold: float
    softness: float = 3.0

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.shape.bounds()

    def sd(self, b: _Block) -> np.ndarray:
        return np.maximum(self.shape.sd(b), (np.float32(self.threshold) - self.field(b)) * np.float32(self.softness))


# --------------------------------------------------------------------------------------------
# Subjects
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class _Layer:
    """A solid painted with one tissue.

    ``texture`` (a callable on a block: a field or fissure lines) modulates the tissue's
    intensity by ``1 + gain * texture``, with ``texture_gain`` = (ceT1 gain, hrT2 gain).
    """

    name: str
    shape: Any
    tissue: _Tissue
    texture: Any = None
    texture_gain: tuple[float, float] = (0.0, 0.0)


@dataclasses.dataclass(frozen=True, eq=False)
class _Subject:
    """One subject's anatomy (anatomy frame, mm) and its tissue-intensity jitter.

    Attributes:
        subject_id: the case id it is rendered for.
        layers: painted in order; later layers cover earlier ones.
        gains: (tissues, 2) multiplicative intensity jitter, columns ceT1, hrT2.
        vs: facts about the tumour (side, kind, nominal diameter in mm, cystic).
        landmarks: named points in anatomy mm (brainstem, cochleae, fundi, VS centre...).
    """

    subject_id: int
    layers: tuple[_Layer, ...]
    gains: np.ndarray
    vs: dict[str, Any]
    landmarks: dict[str, np.ndarray]


def _subject_rng(seed: int, subject_id: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(subject_id), int(stream)]))


def _cochlea_curve(base: np.ndarray, axis: np.ndarray, towards: np.ndarray, chirality: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Centre line (N, 3) and lumen radius (N,) of a cochlear spiral, base to apex, in mm.

    2.4-2.75 turns; the basal turn (radius about 3.5 mm to the lumen centre, lumen radius
    about 0.9 mm, so about 9 mm across) starts towards ``towards``; the spiral narrows and
    rises by about 3.6 mm along ``axis``. ``chirality`` +-1 mirrors it between the ears.
    """
    frame = _frame(axis, towards - base)
    u, v, w = frame[0], frame[1] * chirality, frame[2]
    theta_max = 2 * np.pi * rng.uniform(2.4, 2.75)
    rho0, rho1 = rng.uniform(3.3, 3.7), rng.uniform(0.9, 1.2)
    height = rng.uniform(3.2, 4.0)
    lumen0, lumen1 = rng.uniform(0.8, 0.95), rng.uniform(0.6, 0.7)
    theta = np.linspace(0.0, theta_max, int(rho0 * theta_max / 0.05))
    frac = theta / theta_max
    rho = rho0 * (rho1 / rho0) ** frac
    points = (base + np.outer(rho * np.cos(theta), u) + np.outer(rho * np.sin(theta), v)
              + np.outer(height * frac ** 0.85, w))
    return points, lumen0 + (lumen1 - lumen0) * frac


def _ring(centre: np.ndarray, normal: np.ndarray, radius: float, lumen: float) -> _Tube:
    frame = _frame(normal)
    t = np.linspace(0.0, 2 * np.pi, int(2 * np.pi * radius / 0.05))
    points = centre + np.outer(radius * np.cos(t), frame[0]) + np.outer(radius * np.sin(t), frame[1])
    return _Tube(points, np.full(len(t), lumen))


def _vessel(name: str, control: np.ndarray, radius: float) -> list[_Layer]:
    """A vessel along the polyline ``control`` (M, 3): one capsule layer per segment."""
    return [_Layer(name, _Capsule(a, b, radius), _Tissue.VESSEL) for a, b in zip(control[:-1], control[1:])]


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = b - a
    t = np.clip((points - a) @ d / (d @ d), 0.0, 1.0)
    return np.linalg.norm(points - (a + t[:, None] * d), axis=1)


def _depth_mm(shape: Any, points: np.ndarray) -> np.ndarray:
    """Approximate depth (mm, positive inside) of ``points`` (N, 3) in ``shape``."""
    return -shape.sd(_Block.of_points(points)).ravel()


def _build_ear(rng: np.random.Generator, e: float) -> dict[str, Any]:
    """Temporal bone, IAC, cochlea, vestibule and canals of one ear (``e`` +1 left, -1 right)."""
    U = rng.uniform
    petrous = np.deg2rad(U(35.0, 45.0))  # angle of the petrous ridge to the coronal plane
    pa = np.array([e * np.cos(petrous), np.sin(petrous), 0.0])  # apex -> mastoid direction
    fundus = np.array([e * U(32.5, 35.0), U(0.5, 2.5), U(-0.8, 0.8)])
    start = np.array([e * 19.0, fundus[1] + U(-1.0, 2.0), fundus[2] + U(-1.0, 1.0)])
    iac_r = U(1.9, 2.4)
    axis = _unit(fundus - start)
    vestibule = fundus + np.array([e * U(3.8, 4.6), U(2.6, 3.4), U(0.0, 0.8)])
    cochlea_axis = _unit(np.array([e * 0.5, -0.55, -0.65]) + rng.normal(0, 0.08, 3))
    base = fundus + 1.5 * cochlea_axis + np.array([e * 0.8, -1.2, 0.0])
    cochlea, lumen = _cochlea_curve(base, cochlea_axis, vestibule, e, rng)
    for _ in range(30):  # keep bone between the canal and the basal turn
        gap = _segment_distance(cochlea, start, fundus + axis * iac_r) - lumen - iac_r
        if gap.min() > 0.4:
            break
        shift = 0.25 * _unit(cochlea_axis + np.array([e * 0.3, -0.3, 0.0]))
        cochlea, base = cochlea + shift, base + shift
    canals = []
    lateral_normal = _unit([0.0, 0.35, 0.94])
    posterior_normal = _unit(np.cross(pa, [0.0, 0.0, 1.0]))
    for normal, direction in ((lateral_normal, [e * 0.8, 0.6, -0.2]),
                              (posterior_normal, pa * 0.8 + [0.0, 0.0, 0.3]),
                              (pa, posterior_normal * 0.3 + [0.0, 0.0, 0.9])):
        direction = _unit(direction - np.dot(direction, normal) * normal)
        radius = U(2.8, 3.3)
        canals.append(_ring(vestibule + direction * (radius + 0.6), normal, radius, U(0.42, 0.5)))
    vestibule_frame = _frame(pa)
    vestibule_a = np.array([2.6, 1.8, 2.2])
    # Points that must lie deep in bone: duct centre lines, and the vestibule's extremes pulled in by 1 mm.
    labyrinth = np.concatenate([cochlea, *[c.points for c in canals],
                                vestibule + np.concatenate([vestibule_frame, -vestibule_frame])
                                * np.tile(vestibule_a - 1.0, 2)[:, None]])

    # Temporal bone: otic capsule around the labyrinth, a tapering apex, a broad mastoid part.
    otic_c = labyrinth.mean(axis=0) + [0.0, 0.0, -0.5]
    otic_a = np.array([U(9.0, 11.0), U(7.0, 8.0), U(8.0, 9.5)])
    frame = _inplane_frame(pa)
    for _ in range(20):  # grow the otic capsule until about 0.6 mm of bone surrounds the labyrinth
        otic = _Ellipsoid(otic_c, otic_a, frame, power=2.5)
        if _depth_mm(otic, labyrinth).min() > 1.6:
            break
        otic_a = otic_a + 0.5
    apex = _Ellipsoid(otic_c - pa * U(10.0, 12.0) + [0.0, 0.0, -1.0], np.array([U(9.0, 11.0), U(5.0, 6.0), 7.0]),
                      frame)
    mastoid_c = otic_c + pa * U(8.0, 10.0) + [0.0, 0.0, -5.0]
    mastoid = _Ellipsoid(mastoid_c, np.array([U(9.0, 10.0), U(8.5, 10.0), U(11.0, 13.0)]), frame,
                         field=_Field.random(rng, (8.0, 16.0), 6), field_mm=0.8)
    bone = _Union((otic, apex, mastoid))
    air = _Ellipsoid(mastoid_c + pa * 2.5 + [0.0, 0.0, -1.0], np.array([5.5, 5.0, 7.0]), frame,
                     field=_Field.random(rng, (3.0, 6.0), 8), field_mm=1.0)
    # Porus: where the canal enters the bone.
    ts = np.linspace(0.0, 1.0, 201)
    length = float(np.linalg.norm(fundus - start))
    inside = _depth_mm(bone, start + np.outer(ts * length, axis)) > 0
    porus = start + axis * length * (ts[np.argmax(inside)] if inside.any() else 0.3)
    return dict(e=e, pa=pa, bone=bone, air=air, fundus=fundus, start=start, iac_r=iac_r, axis=axis, porus=porus,
                vestibule=_Ellipsoid(vestibule, vestibule_a, vestibule_frame), cochlea=(cochlea, lumen),
                canals=canals, mastoid_c=mastoid_c)


def _build_tumour(rng: np.random.Generator, ear: dict[str, Any]) -> tuple[Any, Any, dict[str, Any], np.ndarray]:
    """The VS in one ear's IAC: (shape, cyst shape or None, facts, centre in mm).

    About a third are small intrameatal ellipsoids (3-6.5 mm); the rest fill the canal and
    grow a lobulated extrameatal part (9-25 mm) into the cerebellopontine angle, stopped
    by the petrous bone.
    """
    U = rng.uniform
    e, axis, porus, iac_r = ear["e"], ear["axis"], ear["porus"], ear["iac_r"]
    canal_len = float(np.linalg.norm(ear["fundus"] - porus))
    if rng.random() < 0.35:
        kind = "intrameatal"
        diameter = U(3.0, 6.5)
        along = min(diameter / 2, 0.5 * (canal_len - 1.5))
        centre = porus + axis * U(along, max(along, canal_len - 1.5 - along))
        across = min(diameter / 2, iac_r * 1.05)
        shape: Any = _Ellipsoid(centre, np.array([across, across * U(0.85, 1.0), along]), _frame(axis))
    else:
        kind = "extrameatal"
        diameter = U(9.0, 25.0)
        canal = _Capsule(porus - axis * 1.5, porus + axis * U(0.5, 0.85) * canal_len, iac_r * 1.08)
        centre = (porus - axis * 0.36 * diameter
                  + np.array([0.0, U(0.0, 0.15) * diameter, U(-0.1, 0.1) * diameter]))
        semi = diameter / 2 * np.array([1.0, U(0.8, 1.0), U(0.75, 0.95)])
        lobes = [_Ellipsoid(centre, semi, _frame(rng.normal(0, 0.3, 3) + [0, 0, 1.0]),
                            field=_Field.random(rng, (6.0, 12.0), 6), field_mm=0.04 * diameter)]
        for _ in range(int(rng.integers(1, 3))):
            offset = _unit(rng.normal(size=3) * [1.0, 1.0, 0.6] - [e * 0.5, 0, 0]) * U(0.45, 0.6) * diameter / 2
            lobes.append(_Ellipsoid(centre + offset, diameter / 2 * U(0.35, 0.55, 3), _frame(rng.normal(size=3))))
        shape = _Union((canal, _Cut(_Union(tuple(lobes)), ear["bone"])))
    cyst = None
    if kind == "extrameatal" and diameter > 12 and rng.random() < 0.35:
        cyst = _Gate(shape, _Field.random(rng, (3.0, 7.0), 6), U(0.8, 1.2))
    facts = {"kind": kind, "diameter_mm": round(float(diameter), 2), "cystic": cyst is not None}
    return shape, cyst, facts, centre


def _build_subject(subject_id: int, seed: int) -> _Subject:
    """Draw one subject's anatomy, reproducibly from ``(seed, subject_id)``."""
    rng = _subject_rng(seed, subject_id, 0)
    U = rng.uniform
    scale = U(0.94, 1.06)  # head size
    ears = {"left": _build_ear(rng, 1.0), "right": _build_ear(rng, -1.0)}
    vs_side = "left" if rng.random() < 0.5 else "right"
    vs_shape, cyst, vs_facts, vs_centre = _build_tumour(rng, ears[vs_side])
    e_vs = ears[vs_side]["e"]
    # A large tumour pushes the brainstem towards the other side.
    medial_edge = abs(float(vs_centre[0])) - vs_facts["diameter_mm"] / 2
    push = -e_vs * max(0.0, 14.0 - medial_edge) * 0.5 if vs_facts["kind"] == "extrameatal" else 0.0

    L: list[_Layer] = []
    # Head: scalp, skull tables with diploe, CSF, folded cortex, white matter -----------------
    head = _Ellipsoid(np.array([0.0, 8.0, 6.0]) + rng.normal(0, 1.0, 3),
                      np.array([60.0, 74.0, 72.0]) * scale * U(0.97, 1.03, 3), _rot_z(U(-3, 3)),
                      field=_Field.random(rng, (20.0, 40.0), 4), field_mm=0.8)
    scalp = U(4.0, 6.0)
    L.append(_Layer("scalp", _Shell(head, 0.0), _Tissue.FAT))
    L.append(_Layer("outer table", _Shell(head, scalp), _Tissue.BONE))
    L.append(_Layer("diploe", _Shell(head, scalp + 1.4, _Field.random(rng, (10, 20), 4), 0.4), _Tissue.MARROW))
    L.append(_Layer("inner table", _Shell(head, scalp + 3.6), _Tissue.BONE))
    L.append(_Layer("subarachnoid CSF", _Shell(head, scalp + 5.0), _Tissue.CSF))
    folds = _Field.random(rng, (7.0, 16.0), 12)  # gyri: the pial surface and the white matter follow them
    L.append(_Layer("cortex", _Shell(head, scalp + 7.0, folds, 1.4), _Tissue.GREY, folds, (-0.02, 0.03)))
    L.append(_Layer("cerebral white matter", _Shell(head, scalp + 11.0, folds, 3.0), _Tissue.WHITE))

    # Posterior fossa -------------------------------------------------------------------------
    inside_skull = _Shell(head, scalp + 5.6)
    L.append(_Layer("cerebellopontine cisterns", _Ellipsoid(np.array([push * 0.5, 7.0, -5.0]),
                                                             np.array([27.0, 17.0, 24.0]) * scale), _Tissue.CSF))
    for e in (1.0, -1.0):
        c = np.array([e * 22.0, 36.0 * scale, -12.0]) + rng.normal(0, 0.8, 3)
        L.append(_Layer("cerebellar hemisphere", _Intersection((
                        _Ellipsoid(c, np.array([23.0, 26.0, 20.0]) * scale, _rot_z(e * U(-12, -4)),
                                   field=_Field.random(rng, (4.0, 8.0), 8), field_mm=0.5), inside_skull)),
                        _Tissue.GREY, _Fissures(c + [-e * 10.0, -22.0, 6.0], U(1.8, 2.4),
                                               _Field.random(rng, (10.0, 20.0), 8), 3.0), (-0.05, 0.4)))
        L.append(_Layer("cerebellar white matter",
                        _Ellipsoid(c + [-e * 5.0, -6.0, 3.0], np.array([9.0, 8.0, 7.0]) * scale, _rot_z(e * 25),
                                   field=_Field.random(rng, (3.0, 6.0), 8), field_mm=1.5), _Tissue.WHITE))
    vermis_c = np.array([push * 0.3, 38.0 * scale, -8.0])
    L.append(_Layer("vermis", _Intersection((_Ellipsoid(vermis_c, np.array([9.0, 17.0, 16.0]) * scale,
                                                        field=_Field.random(rng, (4.0, 8.0), 8), field_mm=0.5),
                                             inside_skull)), _Tissue.GREY,
                    _Fissures(vermis_c + [0.0, -22.0, 4.0], U(1.8, 2.4), _Field.random(rng, (10.0, 20.0), 8), 3.0),
                    (-0.05, 0.4)))
    pons_c = np.array([push, U(2.0, 4.0), 3.0])
    pons_a = np.array([U(13.5, 15.0), U(11.5, 13.0), 14.0])
    L.append(_Layer("ambient cistern", _Ellipsoid(pons_c + [0.0, 5.0, 19.0], np.array([13.0, 12.0, 22.0])),
                    _Tissue.CSF))
    L.append(_Layer("pons", _Ellipsoid(pons_c, pons_a), _Tissue.BRAINSTEM, _Field.random(rng, (4.0, 10.0), 4),
                    (0.03, 0.04)))
    L.append(_Layer("medulla and midbrain", _Ellipsoid(pons_c + [0.0, 5.0, -3.0], np.array([10.0, 9.0, 45.0])),
                    _Tissue.BRAINSTEM))
    ventricle_c = np.array([push * 0.6, pons_c[1] + pons_a[1] + 2.0, -3.0])
    L.append(_Layer("fourth ventricle", _Ellipsoid(ventricle_c, np.array([U(5.0, 7.0), 3.0, 9.0])), _Tissue.CSF))
    front = pons_c[1] - pons_a[1] - 1.8
    L += _vessel("basilar artery", np.array([[push + U(-2, 2), front, -35.0], [push + U(-2, 2), front, 0.0],
                                             [push + U(-2, 2), front - 1.0, 35.0]]), U(1.3, 1.7))
    clivus_rot = _frame(np.array([0.0, -np.sin(np.deg2rad(25)), np.cos(np.deg2rad(25))]), [1.0, 0.0, 0.0])
    clivus_c = np.array([0.0, front - 8.0, -10.0])
    L.append(_Layer("clivus", _Ellipsoid(clivus_c, np.array([11.0, 6.0, 24.0]), clivus_rot,
                                         field=_Field.random(rng, (6, 12), 6), field_mm=0.6), _Tissue.BONE))
    L.append(_Layer("clivus marrow", _Ellipsoid(clivus_c, np.array([8.0, 4.0, 22.0]), clivus_rot,
                                                field=_Field.random(rng, (4, 8), 6), field_mm=0.8), _Tissue.MARROW))
    L.append(_Layer("sphenoid sinus", _Ellipsoid(np.array([0.0, clivus_c[1] - 16.0, 8.0]), np.array([13.0, 9.0, 10.0]),
                                                 field=_Field.random(rng, (6, 12), 6), field_mm=1.0), _Tissue.AIR))

    # Ears --------------------------------------------------------------------------------------
    for ear in ears.values():
        e = ear["e"]
        L.append(_Layer("temporal bone", ear["bone"], _Tissue.BONE))
        L.append(_Layer("mastoid air cells", ear["air"], _Tissue.AIR))
        m = ear["mastoid_c"]
        L += _vessel("sigmoid sinus", np.array([m + [-e * 6.0, 20.0, 30.0], m + [-e * 4.0, 14.0, 8.0],
                                                m + [-e * 5.0, 10.0, -6.0], m + [-e * 10.0, 10.0, -30.0]]), U(2.2, 2.8))
        L.append(_Layer("internal auditory canal", _Capsule(ear["start"], ear["fundus"], ear["iac_r"]), _Tissue.CSF))
        stem = np.array([e * (pons_a[0] - 1.5) + push, ear["start"][1], ear["start"][2]])
        for off in (np.array([0.0, -0.7, 0.7]), np.array([0.0, 0.7, -0.5])):  # facial, vestibulocochlear
            L.append(_Layer("cranial nerve", _Capsule(stem + off * 1.5, ear["fundus"] - ear["axis"] * 0.8 + off, 0.5),
                            _Tissue.NERVE))
        p = ear["porus"]
        L += _vessel("AICA loop", np.array([p + [-e * 7.0, -3.0, -4.0], p + [-e * 1.0, U(-1.5, 1.5), U(-3.0, -1.5)],
                                            p + [-e * 4.0, 3.0, -3.0], p + [-e * 8.0, 5.0, -6.0]]), 0.55)
        points, lumen = ear["cochlea"]
        L.append(_Layer("cochlea", _Tube(points, lumen), _Tissue.COCHLEA))
        L.append(_Layer("vestibule", ear["vestibule"], _Tissue.LABYRINTH))
        for ring in ear["canals"]:
            L.append(_Layer("semicircular canal", ring, _Tissue.LABYRINTH))
        L.append(_Layer("choroid plexus", _Ellipsoid(np.array([e * 14.0 + push * 0.6, ventricle_c[1] - 2.0, -7.0]),
                                                     np.array([2.5, 2.0, 3.0])), _Tissue.CHOROID))

    L.append(_Layer("vestibular schwannoma", vs_shape, _Tissue.VS, _Field.random(rng, (2.5, 8.0), 24, per_group=2),
                    (0.10, 0.22)))
    if cyst is not None:
        L.append(_Layer("tumour cyst", cyst, _Tissue.VS_CYST))

    gains = np.exp(rng.normal(0.0, 0.06, (len(_Tissue), 2))) * U(0.85, 1.15, 2)
    landmarks = {"brainstem": pons_c, "fourth_ventricle": ventricle_c, "vs_centre": vs_centre}
    for side, ear in ears.items():
        landmarks[f"cochlea_{side}"] = ear["cochlea"][0].mean(axis=0)
        landmarks[f"fundus_{side}"] = ear["fundus"]
    return _Subject(int(subject_id), tuple(L), gains, {"side": vs_side, **vs_facts}, landmarks)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------
# Voxels per rendering slab: temporaries of about 1 MB stay in the CPU cache.
_SLAB_VOXELS = 1 << 18


def _index_box(grid: _Grid, pose: _Pose, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    index = (pose.to_physical(corners) - np.asarray(grid.origin)) / np.asarray(grid.spacing)
    start = np.maximum(np.floor(index.min(axis=0)).astype(int) - 1, 0)
    stop = np.minimum(np.ceil(index.max(axis=0)).astype(int) + 2, np.asarray(grid.size))
    if np.any(stop <= start):
        return None
    return (slice(start[2], stop[2]), slice(start[1], stop[1]), slice(start[0], stop[0]))


def _render(subject: _Subject, grid: _Grid, pose: _Pose,
           contrasts: tuple[str, ...]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Noise-free partial-volume images (float32 per contrast) and the tissue map (uint8) on ``grid``."""
    ox, oy, oz = grid.origin
    sx, sy, sz = grid.spacing
    nx, ny, nz = grid.size
    angle = np.deg2rad(pose.angle_deg)
    tx, ty, tz = pose.shift_mm
    px = (ox + sx * np.arange(nx) - tx)[None, :]
    py = (oy + sy * np.arange(ny) - ty)[:, None]
    qx_full = (np.cos(angle) * px + np.sin(angle) * py).astype(np.float32)[None]
    qy_full = (-np.sin(angle) * px + np.cos(angle) * py).astype(np.float32)[None]
    qz_full = (oz + sz * np.arange(nz) - tz).astype(np.float32)[:, None, None]
    images = {c: np.zeros(grid.shape, dtype=np.float32) for c in contrasts}
    tissue = np.zeros(grid.shape, dtype=np.uint8)
    s_xy = float(np.sqrt(sx * sy))
    boxes = [_index_box(grid, pose, *layer.shape.bounds()) for layer in subject.layers]
    # Work in slabs of a few slices so that the temporaries of a layer stay in the CPU cache.
    slab = max(1, _SLAB_VOXELS // (nx * ny))
    plane: dict = {}  # in-plane factors, shared by all slabs
    for z0 in range(0, nz, slab):
        z1 = min(nz, z0 + slab)
        blocks: dict[tuple, _Block] = {}  # layers over the same box share a block (and its cache)
        for layer, full_box in zip(subject.layers, boxes):
            if full_box is None or full_box[0].stop <= z0 or full_box[0].start >= z1:
                continue
            box = (slice(max(z0, full_box[0].start), min(z1, full_box[0].stop)), full_box[1], full_box[2])
            key = tuple((s.start, s.stop) for s in box)
            if key not in blocks:
                zs, ys, xs = box
                blocks[key] = _Block(qx_full[:, ys, xs], qy_full[:, ys, xs], qz_full[zs], s_xy, float(sz),
                                     plane=plane, xy_key=key[1:])
            _paint(layer, blocks[key], box, subject, images, tissue, contrasts)
    return images, tissue


def _paint(layer: _Layer, b: _Block, box: tuple[slice, slice, slice], subject: _Subject,
           images: dict[str, np.ndarray], tissue: np.ndarray, contrasts: tuple[str, ...]) -> None:
    """Blend one layer over ``box`` of the images (partial volume); set its tissue where it holds the voxel centre."""
    sd = layer.shape.sd(b)
    if sd.shape != b.shape:
        sd = np.broadcast_to(sd, b.shape)
    alpha = np.subtract(np.float32(0.5), sd, dtype=np.float32)
    np.clip(alpha, 0.0, 1.0, out=alpha)
    if not alpha.any():
        return
    texture = layer.texture(b) if layer.texture is not None else None
    for contrast, column in zip(contrasts, (CONTRASTS.index(c) for c in contrasts)):
        value = np.float32(_INTENSITY[layer.tissue, column] * subject.gains[layer.tissue, column])
        gain = layer.texture_gain[column]
        if texture is not None and gain:
            value = value * np.maximum(np.float32(1.0) + np.float32(gain) * texture, np.float32(0.0))
        view = images[contrast][box]
        step = np.subtract(value, view, dtype=np.float32)
        step *= alpha
        view += step
    np.putmask(tissue[box], sd < 0, np.uint8(layer.tissue))


def _bias_field(grid: _Grid, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative field exp(quadratic polynomial) over the grid, |log| <= about ``strength``."""
    nx, ny, nz = grid.size
    x = np.linspace(-1, 1, nx, dtype=np.float32)[None, None, :]
    y = np.linspace(-1, 1, ny, dtype=np.float32)[None, :, None]
    z = np.linspace(-1, 1, nz, dtype=np.float32)[:, None, None]
    c = rng.normal(0.0, 1.0, 9)
    c *= strength / np.sum(np.abs(c))
    c = [np.float32(v) for v in c]
    inplane = c[0] * x + c[1] * y + c[2] * x * x + c[3] * y * y + c[4] * x * y
    slope = c[5] * x + c[6] * y
    return np.exp(inplane + z * slope + (c[7] * z + c[8] * z * z))


def _acquire(clean: np.ndarray, grid: _Grid, contrast: str, config: PhantomConfig,
             rng: np.random.Generator) -> np.ndarray:
    """Apply a bias field and Rician noise (magnitude of complex Gaussian) to a clean image."""
    image = clean * _bias_field(grid, config.bias_strength, rng) if config.bias_strength else clean.copy()
    sigma = np.float32(config.noise_fraction * _INTENSITY[:, CONTRASTS.index(contrast)].max())
    if sigma > 0:
        real = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
        imag = sigma * rng.standard_normal(image.shape, dtype=np.float32)
        image = np.sqrt(real * real + imag * imag)
    return image.astype(np.float32, copy=False)


def _draw_pose(config: PhantomConfig, rng: np.random.Generator) -> _Pose:
    angle = float(rng.uniform(-1.0, 1.0) * config.pose_rotation_deg)
    shift = rng.normal(0.0, 1.0, 3) * config.pose_shift_mm
    return _Pose(round(angle, 4), tuple(float(v) for v in np.round(shift, 4)))


# Field-of-view centre in anatomy mm: between the ears, a little posterior to include the cerebellum.
_FOV_CENTRE = np.array([0.0, 10.0, -2.0])


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


def _grid_record(grid: _Grid) -> dict[str, Any]:
    return {"size": list(grid.size), "spacing": list(grid.spacing), "origin": list(grid.origin),
            "direction": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]}


def _write_case(out: Path, case: _Case, config: PhantomConfig) -> dict[str, Any]:
    """Render one subject for its split, write its files, return its metadata."""
    subject = _build_subject(case.case_id, config.seed)
    rng = _subject_rng(config.seed, case.case_id, 1)
    pose = _draw_pose(config, rng)
    protocols = site_protocols(case.site, config.resolution_scale)
    if case.split == "train_ceT1":
        folder, contrasts, grid_contrast, label_folder = "train", ("ceT1",), "ceT1", "train"
    elif case.split == "train_hrT2":
        folder, contrasts, grid_contrast = "train", ("hrT2",), "hrT2"
        label_folder = TARGET_LABELS if config.target_labels else None
    elif case.split == "test":
        folder, contrasts, grid_contrast, label_folder = "test", ("hrT2",), "hrT2", "test_labels"
    else:
        folder, contrasts, grid_contrast, label_folder = "paired", CONTRASTS, "ceT1", "paired"
    # The grid follows the scanner, not the head: it is centred on the nominal FOV centre.
    grid = _Grid.centred(protocols[grid_contrast], _FOV_CENTRE)
    clean, tissue = _render(subject, grid, pose, contrasts)
    files: dict[str, str] = {}
    for contrast in contrasts:
        image = _acquire(clean[contrast], grid, contrast, config, rng)
        path = write_nifti(grid.volume(image), out / folder / f"{case.stem}_{contrast}.nii.gz")
        files[contrast] = str(path.relative_to(out))
    label = _TISSUE_TO_LABEL[tissue]
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


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
            done(_write_case(out, case, config))
    else:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(min(workers, len(plan)), mp_context=context) as pool:
            futures = [pool.submit(_write_case, out, case, config) for case in plan]
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
        "protocols": {site: {c: dataclasses.asdict(p) for c, p in site_protocols(site, config.resolution_scale).items()}
                      for site in SITES},
        "counts": counts,
        "seconds": round(seconds, 2),
        "cases": ordered,
    }
    _write_json_atomic(out / MANIFEST, manifest)
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


# --------------------------------------------------------------------------------------------
# Overview figure
# --------------------------------------------------------------------------------------------
def save_overview_png(out_dir: str | Path, png_path: str | Path, max_cases: int = 3) -> Path:
    """Draw paired cases as a PNG: for each, an axial slice through the VS and one through a cochlea,
    as ceT1 | hrT2 | label over hrT2 | ceT1 zoom | hrT2 zoom (36 mm around the VS, 20 mm around
    the cochlea), for up to ``max_cases`` cases.

    Returns the path written.
    """
    # An Agg canvas of its own: no pyplot, so the caller's matplotlib backend is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    out = Path(out_dir)
    manifest = load_manifest(out)
    paired = [r for r in manifest["cases"] if r["split"] == "paired"][:max_cases]
    if not paired:
        raise InputError("the phantom has no paired cases to draw", path=out, fix="generate with paired_cases >= 2")
    overlay = ListedColormap([(0, 0, 0, 0), (1.0, 0.25, 0.1, 0.55), (0.1, 0.9, 1.0, 0.7)])
    rows = len(paired) * 2
    fig = Figure(figsize=(17, 3.5 * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 5, squeeze=False, gridspec_kw={"width_ratios": [1, 1, 1, 0.8, 0.8]})
    for n, record in enumerate(paired):
        ce = read_nifti(out / record["files"]["ceT1"])
        t2 = read_nifti(out / record["files"]["hrT2"])
        lab = read_nifti(out / record["files"]["Label"])
        limits = {k: np.percentile(v.array, [0.5, 99.7]) for k, v in (("ce", ce), ("t2", t2))}
        side = record["vs"]["side"]
        for row, (what, value) in enumerate(((f"VS ({side}, {record['vs']['kind']}, "
                                              f"{record['vs']['volume_mm3'] / 1000:.2f} ml)", VS),
                                             ("cochlea", COCHLEA))):
            ax_row = axes[2 * n + row]
            mask = lab.array == value
            if value == COCHLEA:  # the cochlea on the tumour side, else the left one
                x_mid = lab.physical_to_index(record["landmarks_mm"]["brainstem"])[2]
                xs = np.arange(mask.shape[2])[None, None, :]
                mask = mask & ((xs > x_mid) if side == "left" else (xs < x_mid))
            zyx = np.argwhere(mask)
            k = int(np.bincount(zyx[:, 0]).argmax()) if len(zyx) else mask.shape[0] // 2
            cy, cx = (zyx[zyx[:, 0] == k][:, 1:].mean(axis=0) if len(zyx) else np.asarray(mask.shape[1:]) / 2)
            half = int(round((18.0 if value == VS else 10.0) / ce.spacing[0]))  # zoom: 36 or 20 mm wide
            y0, x0 = int(max(0, cy - half)), int(max(0, cx - half))
            crop = (slice(y0, y0 + 2 * half), slice(x0, x0 + 2 * half))
            panels = [(ce.array[k], "ce", f"ceT1  {record['stem']}  z={k}"),
                      (t2.array[k], "t2", f"hrT2 (paired, same grid)  z={k}"),
                      (t2.array[k], "t2", f"label on hrT2: VS red, cochlea cyan ({what.split()[0]} slice)"),
                      (ce.array[k][crop], "ce", f"ceT1 zoom: {what}"),
                      (t2.array[k][crop], "t2", f"hrT2 zoom: {what}")]
            for col, (image, key, title) in enumerate(panels):
                ax = ax_row[col]
                ax.imshow(image, cmap="gray", vmin=limits[key][0], vmax=limits[key][1], interpolation="nearest")
                if col == 2:
                    ax.imshow(lab.array[k], cmap=overlay, vmin=0, vmax=2, interpolation="nearest")
                if col >= 3:
                    ax.contour(lab.array[k][crop] == value, levels=[0.5], colors=["orange" if value == VS else "cyan"],
                               linewidths=0.8)
                ax.set_title(title, fontsize=9)
                ax.set_axis_off()
    fig.suptitle(f"vstk phantom (seed {manifest['seed']}): the same anatomy as ceT1 and hrT2 on one grid (paired set); "
                 f"axial, radiological view (patient left on image right, anterior up)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    png = Path(png_path)
    png.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{png.name}.", suffix=".png", dir=png.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=90)
        os.replace(tmp, png)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return png
