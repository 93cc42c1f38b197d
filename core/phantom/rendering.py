"""Rendering: a subject seen by a site's scanner, as ceT1 and hrT2 images and a tissue map.

A subject is rendered onto an acquisition grid (the site's ceT1 or hrT2 protocol) seen
through a per-acquisition head pose (rotation about z, translation), so two acquisitions
of a data set are not aligned. Rendering is anti-aliased: a layer's signed distance in
voxel units gives a coverage ``alpha`` (a one-voxel box filter across its surface) that
blends the layer's intensity over what was painted before (partial volume). The tissue map,
and from it the label, takes the class of the last layer that contains the voxel centre,
so labels are crisp nearest-neighbour samples of the same continuous anatomy. After
rendering, a smooth multiplicative bias field and Rician noise are applied per acquisition.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import ConfigError
from ..volume import Volume
from .anatomy import Layer, Subject, Tissue
from .solids import Block

CONTRASTS: tuple[str, str] = ("ceT1", "hrT2")
SITES: tuple[str, str] = ("ldn", "etz")


# --------------------------------------------------------------------------------------------
# Acquisition protocols, grids and poses
# --------------------------------------------------------------------------------------------
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


#: Acquisition geometries of :func:`vstk.phantom.generate_phantom`: ``slab`` (both contrasts
#: on small fields of view around the ears, the grid centred on them) and ``crossmoda``
#: (whole-head ceT1, hrT2 slabs around the canals, as the CrossMoDA data: :func:`crossmoda_protocols`).
GEOMETRIES: tuple[str, str] = ("slab", "crossmoda")
#: The geometry of ``vstk phantom`` and of the built-in data of ``vstk run`` / ``vstk bench``.
DEFAULT_GEOMETRY = "crossmoda"


def crossmoda_protocols(site: str, rng: np.random.Generator, scale: float = 1.0) -> dict[str, AcquisitionProtocol]:
    """One subject's ceT1 and hrT2 grids as a CrossMoDA site acquires them (drawn from ``rng``).

    ceT1 covers the whole head (about 205 mm in-plane, 165 mm in z): London 512 x 512 at
    0.4 mm with 1.0 or 1.5 mm slices, Tilburg 256 x 256 at 0.8 mm with 1.5 mm slices. hrT2 is
    a slab 40-70 mm thick: London 384 or 448 at 0.5 mm with 1.0 or 1.5 mm slices, Tilburg
    512 x 512 at 0.4 mm with 1.0 mm slices.
    """
    if site == "ldn":
        ce_z, t2_z, t2_n = float(rng.choice([1.0, 1.5])), float(rng.choice([1.0, 1.5])), int(rng.choice([384, 448]))
        ce, t2 = ((0.4, 0.4, ce_z), (512, 512)), ((0.5, 0.5, t2_z), (t2_n, t2_n))
    elif site == "etz":
        ce, t2 = ((0.8, 0.8, 1.5), (256, 256)), ((0.4, 0.4, 1.0), (512, 512))
    else:
        raise ConfigError(f"unknown phantom site {site!r}", fix=f"use one of {', '.join(SITES)}")
    slab_mm = float(rng.uniform(40.0, 70.0))
    protocols = {"ceT1": AcquisitionProtocol(ce[0], (*ce[1], int(round(165.0 / ce[0][2])))),
                 "hrT2": AcquisitionProtocol(t2[0], (*t2[1], int(round(slab_mm / t2[0][2]))))}
    return {c: p.scaled(scale) if scale != 1.0 else p for c, p in protocols.items()}


@dataclasses.dataclass(frozen=True)
class Grid:
    """An acquisition grid; sizes and mm in (x, y, z). ``angle_deg`` rotates its axes about z
    (an oblique acquisition: the direction matrix of the written image)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    angle_deg: float = 0.0

    @classmethod
    def centred(cls, protocol: AcquisitionProtocol, centre: np.ndarray, angle_deg: float = 0.0) -> "Grid":
        size = np.asarray(protocol.size)
        spacing = np.asarray(protocol.spacing)
        origin = np.asarray(centre) - rot_z_matrix(angle_deg) @ ((size - 1) / 2.0 * spacing)
        return cls(protocol.size, protocol.spacing, tuple(float(v) for v in np.round(origin, 4)), angle_deg)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(z, y, x)``."""
        return (self.size[2], self.size[1], self.size[0])

    @property
    def direction(self) -> tuple[float, ...]:
        """The direction matrix, row-major (SimpleITK's order)."""
        return tuple(float(v) + 0.0 for v in np.round(rot_z_matrix(self.angle_deg), 12).ravel())  # no -0.0

    def volume(self, array: np.ndarray) -> Volume:
        return Volume(array, self.spacing, self.origin, self.direction)


def rot_z_matrix(angle_deg: float) -> np.ndarray:
    """Rotation by ``angle_deg`` about z (counter-clockwise seen from +z)."""
    a = np.deg2rad(angle_deg)
    return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])


@dataclasses.dataclass(frozen=True)
class Pose:
    """Where the head sits in the scanner: physical p = R_z(angle) q + shift, q in anatomy mm."""

    angle_deg: float = 0.0
    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def to_physical(self, q: np.ndarray) -> np.ndarray:
        """Anatomy points (..., 3) in mm to physical (scanner) points in mm."""
        return np.asarray(q) @ rot_z_matrix(self.angle_deg).T + np.asarray(self.shift_mm)


def grid_frame(grid: Grid, pose: Pose) -> tuple[Grid, Pose]:
    """The same acquisition seen in the grid's own frame: an axis-aligned grid at the origin
    and the head pose relative to it (what :func:`render` draws; the written image takes the
    grid's origin and direction back)."""
    if grid.angle_deg == 0.0:
        return grid, pose
    # physical p = origin + R_grid v and p = R_pose q + t give q = R_(pose - grid)^-1 (v - t'),
    # t' = R_grid^-1 (t - origin)
    shift = rot_z_matrix(grid.angle_deg).T @ (np.asarray(pose.shift_mm) - np.asarray(grid.origin))
    return (Grid(grid.size, grid.spacing, (0.0, 0.0, 0.0)),
            Pose(pose.angle_deg - grid.angle_deg, tuple(float(v) for v in shift)))


# Field-of-view centre in anatomy mm: between the ears, a little posterior to include the cerebellum.
FOV_CENTRE = np.array([0.0, 10.0, -2.0])
# Whole-head field-of-view centre in scanner mm (crossmoda geometry): the canals of a head at
# the scanner's centre lie 30 mm below it, as on a ceT1 from the skull base to the vertex.
HEAD_FOV_CENTRE = np.array([0.0, 10.0, 28.0])


# --------------------------------------------------------------------------------------------
# Tissue appearance
# --------------------------------------------------------------------------------------------
# Mean intensity (arbitrary MR units) per tissue: column 0 ceT1, column 1 hrT2 (CISS-like).
# ceT1: fluid dark, fat/marrow bright, white > grey, VS and vessels enhancing.
# hrT2: fluid bright, brain grey with grey > white, bone/air/flowing blood dark, VS grey.
_MEAN_INTENSITY: dict[Tissue, tuple[float, float]] = {
    Tissue.AIR: (0, 0), Tissue.FAT: (720, 430), Tissue.BONE: (40, 35), Tissue.MARROW: (560, 260),
    Tissue.CSF: (95, 920), Tissue.GREY: (360, 330), Tissue.WHITE: (470, 250),
    Tissue.BRAINSTEM: (440, 275), Tissue.NERVE: (400, 210), Tissue.VESSEL: (780, 60),
    Tissue.CHOROID: (650, 420), Tissue.LABYRINTH: (150, 860), Tissue.COCHLEA: (150, 860),
    Tissue.VS: (820, 430), Tissue.VS_CYST: (230, 780),
}
_INTENSITY = np.array([_MEAN_INTENSITY[t] for t in Tissue], dtype=np.float64)  # (tissues, contrasts)


def mean_intensity() -> np.ndarray:
    """The fixed phantom's mean intensity per tissue: a (tissues, 2) copy, columns ceT1, hrT2."""
    return _INTENSITY.copy()


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------
# Voxels per rendering slab: temporaries of about 1 MB stay in the CPU cache.
_SLAB_VOXELS = 1 << 18


def _index_box(grid: Grid, pose: Pose, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    index = (pose.to_physical(corners) - np.asarray(grid.origin)) / np.asarray(grid.spacing)
    start = np.maximum(np.floor(index.min(axis=0)).astype(int) - 1, 0)
    stop = np.minimum(np.ceil(index.max(axis=0)).astype(int) + 2, np.asarray(grid.size))
    if np.any(stop <= start):
        return None
    return (slice(start[2], stop[2]), slice(start[1], stop[1]), slice(start[0], stop[0]))


def render(subject: Subject, grid: Grid, pose: Pose, contrasts: tuple[str, ...],
           intensity: np.ndarray = _INTENSITY) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Noise-free partial-volume images (float32 per contrast) and the tissue map (uint8) on ``grid``.

    ``intensity`` is the mean intensity per tissue, (tissues, 2) with columns ceT1, hrT2
    (default: the fixed table, :func:`mean_intensity`).
    """
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
        blocks: dict[tuple, Block] = {}  # layers over the same box share a block (and its cache)
        for layer, full_box in zip(subject.layers, boxes):
            if full_box is None or full_box[0].stop <= z0 or full_box[0].start >= z1:
                continue
            box = (slice(max(z0, full_box[0].start), min(z1, full_box[0].stop)), full_box[1], full_box[2])
            key = tuple((s.start, s.stop) for s in box)
            if key not in blocks:
                zs, ys, xs = box
                blocks[key] = Block(qx_full[:, ys, xs], qy_full[:, ys, xs], qz_full[zs], s_xy, float(sz),
                                    plane=plane, xy_key=key[1:])
            _paint(layer, blocks[key], box, subject, images, tissue, contrasts, intensity)
    return images, tissue


def _paint(layer: Layer, b: Block, box: tuple[slice, slice, slice], subject: Subject,
           images: dict[str, np.ndarray], tissue: np.ndarray, contrasts: tuple[str, ...],
           intensity: np.ndarray) -> None:
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
        value = np.float32(intensity[layer.tissue, column] * subject.gains[layer.tissue, column])
        gain = layer.texture_gain[column]
        if texture is not None and gain:
            value = value * np.maximum(np.float32(1.0) + np.float32(gain) * texture, np.float32(0.0))
        view = images[contrast][box]
        step = np.subtract(value, view, dtype=np.float32)
        step *= alpha
        view += step
    np.putmask(tissue[box], sd < 0, np.uint8(layer.tissue))


def _bias_field(grid: Grid, strength: float, rng: np.random.Generator) -> np.ndarray:
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


def acquire(clean: np.ndarray, grid: Grid, contrast: str, rng: np.random.Generator, *, bias_strength: float,
            noise_fraction: float, intensity: np.ndarray = _INTENSITY) -> np.ndarray:
    """Apply a bias field and Rician noise (magnitude of complex Gaussian) to a clean image.

    ``bias_strength`` is the peak amplitude of the log bias field, ``noise_fraction`` the noise
    sigma as a fraction of the contrast's brightest tissue in ``intensity`` (the table the
    image was rendered with); 0 switches either off.
    """
    image = clean * _bias_field(grid, bias_strength, rng) if bias_strength else clean.copy()
    sigma = np.float32(noise_fraction * intensity[:, CONTRASTS.index(contrast)].max())
    if sigma > 0:
        real = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
        imag = sigma * rng.standard_normal(image.shape, dtype=np.float32)
        image = np.sqrt(real * real + imag * imag)
    return image.astype(np.float32, copy=False)


def draw_pose(rng: np.random.Generator, *, rotation_deg: float, shift_mm: float) -> Pose:
    """A head pose: rotation about z uniform in +-``rotation_deg``, shift normal with std ``shift_mm`` per axis."""
    angle = float(rng.uniform(-1.0, 1.0) * rotation_deg)
    shift = rng.normal(0.0, 1.0, 3) * shift_mm
    return Pose(round(angle, 4), tuple(float(v) for v in np.round(shift, 4)))
