"""Implicit solids in continuous space (mm), evaluated on blocks of sample points.

A solid answers ``bounds()`` (a box in mm) and ``sd(block)``: its signed distance at the
block's points in voxel units (negative inside), which the renderer turns into partial-volume
coverage. Smooth random fields displace surfaces (folds, irregular bone) and texture tissues.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np
from scipy.spatial import cKDTree


# --------------------------------------------------------------------------------------------
# Blocks of sample points
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class Block:
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
    def of_points(cls, points: np.ndarray) -> "Block":
        """A block of scattered points (N, 3), shaped (1, 1, N); distances come out in mm."""
        p = np.asarray(points, dtype=np.float32).reshape(1, 1, -1, 3)
        return cls(p[..., 0], p[..., 1], p[..., 2], 1.0, 1.0)


# --------------------------------------------------------------------------------------------
# Smooth random fields and textures
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class Field:
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
               per_group: int = 4) -> "Field":
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

    def __call__(self, b: Block) -> np.ndarray:
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
class Fissures:
    """Thin lines in [0, 1] on warped shells every ``spacing_mm`` around ``centre`` (cerebellar folia)."""

    centre: np.ndarray
    spacing_mm: float
    warp: Field
    warp_mm: float

    def __call__(self, b: Block) -> np.ndarray:
        c = [float(v) for v in self.centre]
        dx, dy, dz = b.qx - c[0], b.qy - c[1], b.qz - c[2]
        r = np.sqrt((dx * dx + dy * dy) + dz * dz) + np.float32(self.warp_mm) * self.warp(b)
        wave = np.float32(0.5) + np.float32(0.5) * np.cos(r * np.float32(2 * np.pi / self.spacing_mm))
        wave *= wave
        wave *= wave
        return wave * wave


# --------------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------------
def frame_along(axis: np.ndarray, hint: np.ndarray | None = None) -> np.ndarray:
    """Rotation whose rows are an orthonormal frame (u, v, w) with w along ``axis``."""
    w = unit(axis)
    hint = np.array([0.0, 0.0, 1.0]) if hint is None else np.asarray(hint, dtype=np.float64)
    if abs(np.dot(unit(hint), w)) > 0.95:
        hint = np.array([1.0, 0.0, 0.0]) if abs(w[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = hint - np.dot(hint, w) * w
    u /= np.linalg.norm(u)
    return np.stack([u, np.cross(w, u), w])


def inplane_frame(axis_xy: np.ndarray) -> np.ndarray:
    """Rows: ``axis_xy`` (in the axial plane), its in-plane normal, and z."""
    a = unit([axis_xy[0], axis_xy[1], 0.0])
    return np.stack([a, np.cross([0.0, 0.0, 1.0], a), [0.0, 0.0, 1.0]])


def rot_z(angle_deg: float) -> np.ndarray:
    """Rows are the local axes of a frame turned by ``angle_deg`` about z."""
    a = np.deg2rad(angle_deg)
    return np.array([[np.cos(a), np.sin(a), 0.0], [-np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])


def unit(v) -> np.ndarray:
    """``v`` scaled to length 1 (float64)."""
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


# --------------------------------------------------------------------------------------------
# Solids
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class Ellipsoid:
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
    field: Field | None = None
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

    def _parts(self, b: Block):
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

    def sd(self, b: Block) -> np.ndarray:
        g, gxy2, gz2, rho = self._parts(b)
        # |grad rho| = |grad rho^p| / (p rho^(p-1))
        scale = self.power * (rho if self.power == 2 else rho ** (self.power - 1))
        return g * scale / np.sqrt(np.maximum(b.s_xy ** 2 * gxy2 + b.s_z ** 2 * gz2, 1e-12))

    def distance_mm(self, b: Block) -> tuple[np.ndarray, np.ndarray]:
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
class Shell:
    """The solid ``inset_mm`` inside the surface of ``base`` (skull tables, cortex...), optionally
    displaced by ``field`` (``field_mm`` per unit, outwards where positive).

    Shells of one base share its evaluation (the block's cache), so the layered head costs
    little more than one ellipsoid.
    """

    base: Ellipsoid
    inset_mm: float
    field: Field | None = None
    field_mm: float = 0.0

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.base.bounds()  # same box as the base, so the cached evaluation is reused

    def sd(self, b: Block) -> np.ndarray:
        distance, width = self.base.distance_mm(b)
        d = distance + np.float32(self.inset_mm)
        if self.field is not None and self.field_mm:
            d = d - np.float32(self.field_mm) * self.field(b)
        return d / width


@dataclasses.dataclass(frozen=True, eq=False)
class Capsule:
    """Solid of all points within ``radius`` mm of the segment from ``a`` to ``b`` (exact distance)."""

    a: np.ndarray
    b: np.ndarray
    radius: float

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.minimum(self.a, self.b) - self.radius, np.maximum(self.a, self.b) + self.radius

    def sd(self, blk: Block) -> np.ndarray:
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
class Tube:
    """Solid of points within ``radii[i]`` mm of a densely sampled curve ``points`` (N, 3).

    The curve is sampled finely (about 0.05 mm) so that the nearest sample stands in for the
    nearest curve point; a k-d tree answers the queries. For small curved structures
    (cochlea, semicircular canals); straight pieces use :class:`Capsule`.
    """

    points: np.ndarray
    radii: np.ndarray
    _tree: cKDTree = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_tree", cKDTree(self.points))

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        r = float(self.radii.max())
        return self.points.min(axis=0) - r, self.points.max(axis=0) + r

    def sd(self, b: Block) -> np.ndarray:
        shape = b.shape
        q = np.stack([np.broadcast_to(v, shape).ravel() for v in (b.qx, b.qy, b.qz)], axis=1).astype(np.float64)
        reach = float(self.radii.max()) + 2.0 * max(b.s_xy, b.s_z)
        dist, idx = self._tree.query(q, distance_upper_bound=reach)
        far = ~np.isfinite(dist)
        idx[far] = 0
        dist = np.where(far, reach, dist)
        # far points (set to 1e3 below) get nz 0: their clamped distance would give |nz| > 1
        nz = np.where(far, 0.0, (q[:, 2] - self.points[idx, 2]) / np.maximum(dist, 1e-9))
        width = np.sqrt(b.s_xy ** 2 + (b.s_z ** 2 - b.s_xy ** 2) * nz * nz)
        out = ((dist - self.radii[idx]) / width).astype(np.float32)
        out[far] = 1e3
        return out.reshape(shape)


@dataclasses.dataclass(frozen=True, eq=False)
class Union:
    """Points inside any part."""

    parts: tuple

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        boxes = [p.bounds() for p in self.parts]
        return np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0)

    def sd(self, b: Block) -> np.ndarray:
        out = None
        for part in self.parts:
            d = part.sd(b)
            out = d if out is None else np.minimum(out, d)
        return out


@dataclasses.dataclass(frozen=True, eq=False)
class Intersection:
    """Points inside every part; the box is that of the first part."""

    parts: tuple

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.parts[0].bounds()

    def sd(self, b: Block) -> np.ndarray:
        out = None
        for part in self.parts:
            d = part.sd(b)
            out = d if out is None else np.maximum(out, d)
        return out


@dataclasses.dataclass(frozen=True, eq=False)
class Cut:
    """``keep`` minus ``remove``."""

    keep: Any
    remove: Any

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.keep.bounds()

    def sd(self, b: Block) -> np.ndarray:
        return np.maximum(self.keep.sd(b), -self.remove.sd(b))


@dataclasses.dataclass(frozen=True, eq=False)
class Gate:
    """The part of ``shape`` where ``field`` exceeds ``threshold`` (cysts inside a tumour)."""

    shape: Any
    field: Field
    threshold: float
    softness: float = 3.0

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.shape.bounds()

    def sd(self, b: Block) -> np.ndarray:
        return np.maximum(self.shape.sd(b), (np.float32(self.threshold) - self.field(b)) * np.float32(self.softness))


def depth_mm(shape: Any, points: np.ndarray) -> np.ndarray:
    """Approximate depth (mm, positive inside) of ``points`` (N, 3) in ``shape``."""
    return -shape.sd(Block.of_points(points)).ravel()
