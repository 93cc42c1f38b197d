"""The subjects: head and inner-ear anatomy, tumour and cochlea, as painted layers of solids.

Every subject's anatomy is defined once, in continuous physical space, as an ordered list
of painted layers: implicit solids (ellipsoids, rounded boxes, tubes along curves such as
the cochlear spiral, see :mod:`vstk.phantom.solids`) that each carry a tissue class. The
anatomy frame is in mm with the axes of LPS space: x to the patient's left, y posterior,
z superior; its origin lies on the midline between the two internal auditory canals (IAC),
at their height.

Label values follow :mod:`vstk.labels`: 0 background, 1 vestibular schwannoma (VS),
2 cochlea (both ears). Vestibule and semicircular canals are fluid-bright but unlabelled.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import numpy as np

from ..labels import COCHLEA, VS
from .solids import (
    Capsule, Cut, Ellipsoid, Field, Fissures, Gate, Intersection, Shell, Tube, Union, depth_mm, frame_along,
    inplane_frame, rot_z, unit,
)


# --------------------------------------------------------------------------------------------
# Tissues
# --------------------------------------------------------------------------------------------
class Tissue(enum.IntEnum):
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


# The label value of each tissue class.
TISSUE_TO_LABEL = np.zeros(len(Tissue), dtype=np.uint8)
TISSUE_TO_LABEL[[Tissue.VS, Tissue.VS_CYST]] = VS
TISSUE_TO_LABEL[Tissue.COCHLEA] = COCHLEA


# --------------------------------------------------------------------------------------------
# Subjects
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class Layer:
    """A solid painted with one tissue.

    ``texture`` (a callable on a block: a field or fissure lines) modulates the tissue's
    intensity by ``1 + gain * texture``, with ``texture_gain`` = (ceT1 gain, hrT2 gain).
    """

    name: str
    shape: Any
    tissue: Tissue
    texture: Any = None
    texture_gain: tuple[float, float] = (0.0, 0.0)


@dataclasses.dataclass(frozen=True, eq=False)
class Subject:
    """One subject's anatomy (anatomy frame, mm) and its tissue-intensity jitter.

    Attributes:
        subject_id: the case id it is rendered for.
        layers: painted in order; later layers cover earlier ones.
        gains: (tissues, 2) multiplicative intensity jitter, columns ceT1, hrT2.
        vs: facts about the tumour (side, kind, nominal diameter in mm, cystic).
        landmarks: named points in anatomy mm (brainstem, cochleae, fundi, VS centre...).
    """

    subject_id: int
    layers: tuple[Layer, ...]
    gains: np.ndarray
    vs: dict[str, Any]
    landmarks: dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class AnatomyParameters:
    """The distributions subjects are drawn from; the defaults are the fixed phantom's.

    Attributes:
        intrameatal_fraction: share of tumours that stay inside the canal (the rest grow
            into the cerebellopontine angle).
        intrameatal_diameter_mm: (low, high) of an intrameatal tumour's nominal diameter (mm).
        extrameatal_diameter_mm: (low, high) of an extrameatal tumour's nominal diameter (mm).
        cochlea_scale: multiplies every length of the cochlear spiral (its turn radii, its
            height and its lumen radius).
        vs_texture_gain: (ceT1, hrT2) amplitude of the tumour's intensity texture.
    """

    intrameatal_fraction: float = 0.35
    intrameatal_diameter_mm: tuple[float, float] = (3.0, 6.5)
    extrameatal_diameter_mm: tuple[float, float] = (9.0, 25.0)
    cochlea_scale: float = 1.0
    vs_texture_gain: tuple[float, float] = (0.10, 0.22)


def subject_rng(seed: int, subject_id: int, stream: int) -> np.random.Generator:
    """The random stream ``stream`` of subject ``subject_id`` (0: anatomy, 1: pose and noise)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(subject_id), int(stream)]))


def _cochlea_curve(base: np.ndarray, axis: np.ndarray, towards: np.ndarray, chirality: float,
                   rng: np.random.Generator, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Centre line (N, 3) and lumen radius (N,) of a cochlear spiral, base to apex, in mm.

    2.4-2.75 turns; the basal turn (radius about 3.5 mm to the lumen centre, lumen radius
    about 0.9 mm, so about 9 mm across) starts towards ``towards``; the spiral narrows and
    rises by about 3.6 mm along ``axis``. ``chirality`` +-1 mirrors it between the ears.
    ``scale`` multiplies every one of these lengths (the number of turns stays).
    """
    frame = frame_along(axis, towards - base)
    u, v, w = frame[0], frame[1] * chirality, frame[2]
    theta_max = 2 * np.pi * rng.uniform(2.4, 2.75)
    rho0, rho1 = rng.uniform(3.3, 3.7) * scale, rng.uniform(0.9, 1.2) * scale
    height = rng.uniform(3.2, 4.0) * scale
    lumen0, lumen1 = rng.uniform(0.8, 0.95) * scale, rng.uniform(0.6, 0.7) * scale
    theta = np.linspace(0.0, theta_max, int(rho0 * theta_max / 0.05))
    frac = theta / theta_max
    rho = rho0 * (rho1 / rho0) ** frac
    points = (base + np.outer(rho * np.cos(theta), u) + np.outer(rho * np.sin(theta), v)
              + np.outer(height * frac ** 0.85, w))
    return points, lumen0 + (lumen1 - lumen0) * frac


def _ring(centre: np.ndarray, normal: np.ndarray, radius: float, lumen: float) -> Tube:
    frame = frame_along(normal)
    t = np.linspace(0.0, 2 * np.pi, int(2 * np.pi * radius / 0.05))
    points = centre + np.outer(radius * np.cos(t), frame[0]) + np.outer(radius * np.sin(t), frame[1])
    return Tube(points, np.full(len(t), lumen))


def _vessel(name: str, control: np.ndarray, radius: float) -> list[Layer]:
    """A vessel along the polyline ``control`` (M, 3): one capsule layer per segment."""
    return [Layer(name, Capsule(a, b, radius), Tissue.VESSEL) for a, b in zip(control[:-1], control[1:])]


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = b - a
    t = np.clip((points - a) @ d / (d @ d), 0.0, 1.0)
    return np.linalg.norm(points - (a + t[:, None] * d), axis=1)


def _build_ear(rng: np.random.Generator, e: float, cochlea_scale: float = 1.0) -> dict[str, Any]:
    """Temporal bone, IAC, cochlea, vestibule and canals of one ear (``e`` +1 left, -1 right)."""
    U = rng.uniform
    petrous = np.deg2rad(U(35.0, 45.0))  # angle of the petrous ridge to the coronal plane
    pa = np.array([e * np.cos(petrous), np.sin(petrous), 0.0])  # apex -> mastoid direction
    fundus = np.array([e * U(32.5, 35.0), U(0.5, 2.5), U(-0.8, 0.8)])
    start = np.array([e * 19.0, fundus[1] + U(-1.0, 2.0), fundus[2] + U(-1.0, 1.0)])
    iac_r = U(1.9, 2.4)
    axis = unit(fundus - start)
    vestibule = fundus + np.array([e * U(3.8, 4.6), U(2.6, 3.4), U(0.0, 0.8)])
    cochlea_axis = unit(np.array([e * 0.5, -0.55, -0.65]) + rng.normal(0, 0.08, 3))
    base = fundus + 1.5 * cochlea_axis + np.array([e * 0.8, -1.2, 0.0])
    cochlea, lumen = _cochlea_curve(base, cochlea_axis, vestibule, e, rng, cochlea_scale)
    for _ in range(30):  # keep bone between the canal and the basal turn
        gap = _segment_distance(cochlea, start, fundus + axis * iac_r) - lumen - iac_r
        if gap.min() > 0.4:
            break
        shift = 0.25 * unit(cochlea_axis + np.array([e * 0.3, -0.3, 0.0]))
        cochlea, base = cochlea + shift, base + shift
    canals = []
    lateral_normal = unit([0.0, 0.35, 0.94])
    posterior_normal = unit(np.cross(pa, [0.0, 0.0, 1.0]))
    for normal, direction in ((lateral_normal, [e * 0.8, 0.6, -0.2]),
                              (posterior_normal, pa * 0.8 + [0.0, 0.0, 0.3]),
                              (pa, posterior_normal * 0.3 + [0.0, 0.0, 0.9])):
        direction = unit(direction - np.dot(direction, normal) * normal)
        radius = U(2.8, 3.3)
        canals.append(_ring(vestibule + direction * (radius + 0.6), normal, radius, U(0.42, 0.5)))
    vestibule_frame = frame_along(pa)
    vestibule_a = np.array([2.6, 1.8, 2.2])
    # Points that must lie deep in bone: duct centre lines, and the vestibule's extremes pulled in by 1 mm.
    labyrinth = np.concatenate([cochlea, *[c.points for c in canals],
                                vestibule + np.concatenate([vestibule_frame, -vestibule_frame])
                                * np.tile(vestibule_a - 1.0, 2)[:, None]])

    # Temporal bone: otic capsule around the labyrinth, a tapering apex, a broad mastoid part.
    otic_c = labyrinth.mean(axis=0) + [0.0, 0.0, -0.5]
    otic_a = np.array([U(9.0, 11.0), U(7.0, 8.0), U(8.0, 9.5)])
    frame = inplane_frame(pa)
    for _ in range(20):  # grow the otic capsule until about 0.6 mm of bone surrounds the labyrinth
        otic = Ellipsoid(otic_c, otic_a, frame, power=2.5)
        if depth_mm(otic, labyrinth).min() > 1.6:
            break
        otic_a = otic_a + 0.5
    apex = Ellipsoid(otic_c - pa * U(10.0, 12.0) + [0.0, 0.0, -1.0], np.array([U(9.0, 11.0), U(5.0, 6.0), 7.0]),
                      frame)
    mastoid_c = otic_c + pa * U(8.0, 10.0) + [0.0, 0.0, -5.0]
    mastoid = Ellipsoid(mastoid_c, np.array([U(9.0, 10.0), U(8.5, 10.0), U(11.0, 13.0)]), frame,
                         field=Field.random(rng, (8.0, 16.0), 6), field_mm=0.8)
    bone = Union((otic, apex, mastoid))
    air = Ellipsoid(mastoid_c + pa * 2.5 + [0.0, 0.0, -1.0], np.array([5.5, 5.0, 7.0]), frame,
                     field=Field.random(rng, (3.0, 6.0), 8), field_mm=1.0)
    # Porus: where the canal enters the bone.
    ts = np.linspace(0.0, 1.0, 201)
    length = float(np.linalg.norm(fundus - start))
    inside = depth_mm(bone, start + np.outer(ts * length, axis)) > 0
    porus = start + axis * length * (ts[np.argmax(inside)] if inside.any() else 0.3)
    return dict(e=e, pa=pa, bone=bone, air=air, fundus=fundus, start=start, iac_r=iac_r, axis=axis, porus=porus,
                vestibule=Ellipsoid(vestibule, vestibule_a, vestibule_frame), cochlea=(cochlea, lumen),
                canals=canals, mastoid_c=mastoid_c)


def _build_tumour(rng: np.random.Generator, ear: dict[str, Any],
                  parameters: AnatomyParameters) -> tuple[Any, Any, dict[str, Any], np.ndarray]:
    """The VS in one ear's IAC: (shape, cyst shape or None, facts, centre in mm).

    By default about a third are small intrameatal ellipsoids (3-6.5 mm); the rest fill the
    canal and grow a lobulated extrameatal part (9-25 mm) into the cerebellopontine angle,
    stopped by the petrous bone (``parameters`` sets the share and the diameters).
    """
    U = rng.uniform
    e, axis, porus, iac_r = ear["e"], ear["axis"], ear["porus"], ear["iac_r"]
    canal_len = float(np.linalg.norm(ear["fundus"] - porus))
    if rng.random() < parameters.intrameatal_fraction:
        kind = "intrameatal"
        diameter = U(*parameters.intrameatal_diameter_mm)
        along = min(diameter / 2, 0.5 * (canal_len - 1.5))
        centre = porus + axis * U(along, max(along, canal_len - 1.5 - along))
        across = min(diameter / 2, iac_r * 1.05)
        shape: Any = Ellipsoid(centre, np.array([across, across * U(0.85, 1.0), along]), frame_along(axis))
    else:
        kind = "extrameatal"
        diameter = U(*parameters.extrameatal_diameter_mm)
        canal = Capsule(porus - axis * 1.5, porus + axis * U(0.5, 0.85) * canal_len, iac_r * 1.08)
        centre = (porus - axis * 0.36 * diameter
                  + np.array([0.0, U(0.0, 0.15) * diameter, U(-0.1, 0.1) * diameter]))
        semi = diameter / 2 * np.array([1.0, U(0.8, 1.0), U(0.75, 0.95)])
        lobes = [Ellipsoid(centre, semi, frame_along(rng.normal(0, 0.3, 3) + [0, 0, 1.0]),
                            field=Field.random(rng, (6.0, 12.0), 6), field_mm=0.04 * diameter)]
        for _ in range(int(rng.integers(1, 3))):
            offset = unit(rng.normal(size=3) * [1.0, 1.0, 0.6] - [e * 0.5, 0, 0]) * U(0.45, 0.6) * diameter / 2
            lobes.append(Ellipsoid(centre + offset, diameter / 2 * U(0.35, 0.55, 3), frame_along(rng.normal(size=3))))
        shape = Union((canal, Cut(Union(tuple(lobes)), ear["bone"])))
    cyst = None
    if kind == "extrameatal" and diameter > 12 and rng.random() < 0.35:
        cyst = Gate(shape, Field.random(rng, (3.0, 7.0), 6), U(0.8, 1.2))
    facts = {"kind": kind, "diameter_mm": round(float(diameter), 2), "cystic": cyst is not None}
    return shape, cyst, facts, centre


def build_subject(subject_id: int, seed: int, parameters: AnatomyParameters = AnatomyParameters()) -> Subject:
    """Draw one subject's anatomy, reproducibly from ``(seed, subject_id)``, from the
    distributions of ``parameters``."""
    rng = subject_rng(seed, subject_id, 0)
    U = rng.uniform
    scale = U(0.94, 1.06)  # head size
    ears = {"left": _build_ear(rng, 1.0, parameters.cochlea_scale),
            "right": _build_ear(rng, -1.0, parameters.cochlea_scale)}
    vs_side = "left" if rng.random() < 0.5 else "right"
    vs_shape, cyst, vs_facts, vs_centre = _build_tumour(rng, ears[vs_side], parameters)
    e_vs = ears[vs_side]["e"]
    # A large tumour pushes the brainstem towards the other side.
    medial_edge = abs(float(vs_centre[0])) - vs_facts["diameter_mm"] / 2
    push = -e_vs * max(0.0, 14.0 - medial_edge) * 0.5 if vs_facts["kind"] == "extrameatal" else 0.0

    L: list[Layer] = []
    # Head: scalp, skull tables with diploe, CSF, folded cortex, white matter -----------------
    head = Ellipsoid(np.array([0.0, 8.0, 6.0]) + rng.normal(0, 1.0, 3),
                      np.array([60.0, 74.0, 72.0]) * scale * U(0.97, 1.03, 3), rot_z(U(-3, 3)),
                      field=Field.random(rng, (20.0, 40.0), 4), field_mm=0.8)
    scalp = U(4.0, 6.0)
    L.append(Layer("scalp", Shell(head, 0.0), Tissue.FAT))
    L.append(Layer("outer table", Shell(head, scalp), Tissue.BONE))
    L.append(Layer("diploe", Shell(head, scalp + 1.4, Field.random(rng, (10, 20), 4), 0.4), Tissue.MARROW))
    L.append(Layer("inner table", Shell(head, scalp + 3.6), Tissue.BONE))
    L.append(Layer("subarachnoid CSF", Shell(head, scalp + 5.0), Tissue.CSF))
    folds = Field.random(rng, (7.0, 16.0), 12)  # gyri: the pial surface and the white matter follow them
    L.append(Layer("cortex", Shell(head, scalp + 7.0, folds, 1.4), Tissue.GREY, folds, (-0.02, 0.03)))
    L.append(Layer("cerebral white matter", Shell(head, scalp + 11.0, folds, 3.0), Tissue.WHITE))

    # Posterior fossa -------------------------------------------------------------------------
    inside_skull = Shell(head, scalp + 5.6)
    L.append(Layer("cerebellopontine cisterns", Ellipsoid(np.array([push * 0.5, 7.0, -5.0]),
                                                             np.array([27.0, 17.0, 24.0]) * scale), Tissue.CSF))
    for e in (1.0, -1.0):
        c = np.array([e * 22.0, 36.0 * scale, -12.0]) + rng.normal(0, 0.8, 3)
        L.append(Layer("cerebellar hemisphere", Intersection((
                        Ellipsoid(c, np.array([23.0, 26.0, 20.0]) * scale, rot_z(e * U(-12, -4)),
                                   field=Field.random(rng, (4.0, 8.0), 8), field_mm=0.5), inside_skull)),
                        Tissue.GREY, Fissures(c + [-e * 10.0, -22.0, 6.0], U(1.8, 2.4),
                                               Field.random(rng, (10.0, 20.0), 8), 3.0), (-0.05, 0.4)))
        L.append(Layer("cerebellar white matter",
                        Ellipsoid(c + [-e * 5.0, -6.0, 3.0], np.array([9.0, 8.0, 7.0]) * scale, rot_z(e * 25),
                                   field=Field.random(rng, (3.0, 6.0), 8), field_mm=1.5), Tissue.WHITE))
    vermis_c = np.array([push * 0.3, 38.0 * scale, -8.0])
    L.append(Layer("vermis", Intersection((Ellipsoid(vermis_c, np.array([9.0, 17.0, 16.0]) * scale,
                                                        field=Field.random(rng, (4.0, 8.0), 8), field_mm=0.5),
                                             inside_skull)), Tissue.GREY,
                    Fissures(vermis_c + [0.0, -22.0, 4.0], U(1.8, 2.4), Field.random(rng, (10.0, 20.0), 8), 3.0),
                    (-0.05, 0.4)))
    pons_c = np.array([push, U(2.0, 4.0), 3.0])
    pons_a = np.array([U(13.5, 15.0), U(11.5, 13.0), 14.0])
    L.append(Layer("ambient cistern", Ellipsoid(pons_c + [0.0, 5.0, 19.0], np.array([13.0, 12.0, 22.0])),
                    Tissue.CSF))
    L.append(Layer("pons", Ellipsoid(pons_c, pons_a), Tissue.BRAINSTEM, Field.random(rng, (4.0, 10.0), 4),
                    (0.03, 0.04)))
    L.append(Layer("medulla and midbrain", Ellipsoid(pons_c + [0.0, 5.0, -3.0], np.array([10.0, 9.0, 45.0])),
                    Tissue.BRAINSTEM))
    ventricle_c = np.array([push * 0.6, pons_c[1] + pons_a[1] + 2.0, -3.0])
    L.append(Layer("fourth ventricle", Ellipsoid(ventricle_c, np.array([U(5.0, 7.0), 3.0, 9.0])), Tissue.CSF))
    front = pons_c[1] - pons_a[1] - 1.8
    L += _vessel("basilar artery", np.array([[push + U(-2, 2), front, -35.0], [push + U(-2, 2), front, 0.0],
                                             [push + U(-2, 2), front - 1.0, 35.0]]), U(1.3, 1.7))
    clivus_rot = frame_along(np.array([0.0, -np.sin(np.deg2rad(25)), np.cos(np.deg2rad(25))]), [1.0, 0.0, 0.0])
    clivus_c = np.array([0.0, front - 8.0, -10.0])
    L.append(Layer("clivus", Ellipsoid(clivus_c, np.array([11.0, 6.0, 24.0]), clivus_rot,
                                         field=Field.random(rng, (6, 12), 6), field_mm=0.6), Tissue.BONE))
    L.append(Layer("clivus marrow", Ellipsoid(clivus_c, np.array([8.0, 4.0, 22.0]), clivus_rot,
                                                field=Field.random(rng, (4, 8), 6), field_mm=0.8), Tissue.MARROW))
    L.append(Layer("sphenoid sinus", Ellipsoid(np.array([0.0, clivus_c[1] - 16.0, 8.0]), np.array([13.0, 9.0, 10.0]),
                                                 field=Field.random(rng, (6, 12), 6), field_mm=1.0), Tissue.AIR))

    # Ears --------------------------------------------------------------------------------------
    for ear in ears.values():
        e = ear["e"]
        L.append(Layer("temporal bone", ear["bone"], Tissue.BONE))
        L.append(Layer("mastoid air cells", ear["air"], Tissue.AIR))
        m = ear["mastoid_c"]
        L += _vessel("sigmoid sinus", np.array([m + [-e * 6.0, 20.0, 30.0], m + [-e * 4.0, 14.0, 8.0],
                                                m + [-e * 5.0, 10.0, -6.0], m + [-e * 10.0, 10.0, -30.0]]), U(2.2, 2.8))
        L.append(Layer("internal auditory canal", Capsule(ear["start"], ear["fundus"], ear["iac_r"]), Tissue.CSF))
        stem = np.array([e * (pons_a[0] - 1.5) + push, ear["start"][1], ear["start"][2]])
        for off in (np.array([0.0, -0.7, 0.7]), np.array([0.0, 0.7, -0.5])):  # facial, vestibulocochlear
            L.append(Layer("cranial nerve", Capsule(stem + off * 1.5, ear["fundus"] - ear["axis"] * 0.8 + off, 0.5),
                            Tissue.NERVE))
        p = ear["porus"]
        L += _vessel("AICA loop", np.array([p + [-e * 7.0, -3.0, -4.0], p + [-e * 1.0, U(-1.5, 1.5), U(-3.0, -1.5)],
                                            p + [-e * 4.0, 3.0, -3.0], p + [-e * 8.0, 5.0, -6.0]]), 0.55)
        points, lumen = ear["cochlea"]
        L.append(Layer("cochlea", Tube(points, lumen), Tissue.COCHLEA))
        L.append(Layer("vestibule", ear["vestibule"], Tissue.LABYRINTH))
        for ring in ear["canals"]:
            L.append(Layer("semicircular canal", ring, Tissue.LABYRINTH))
        L.append(Layer("choroid plexus", Ellipsoid(np.array([e * 14.0 + push * 0.6, ventricle_c[1] - 2.0, -7.0]),
                                                     np.array([2.5, 2.0, 3.0])), Tissue.CHOROID))

    L.append(Layer("vestibular schwannoma", vs_shape, Tissue.VS, Field.random(rng, (2.5, 8.0), 24, per_group=2),
                    parameters.vs_texture_gain))
    if cyst is not None:
        L.append(Layer("tumour cyst", cyst, Tissue.VS_CYST))

    gains = np.exp(rng.normal(0.0, 0.06, (len(Tissue), 2))) * U(0.85, 1.15, 2)
    landmarks = {"brainstem": pons_c, "fourth_ventricle": ventricle_c, "vs_centre": vs_centre}
    for side, ear in ears.items():
        landmarks[f"cochlea_{side}"] = ear["cochlea"][0].mean(axis=0)
        landmarks[f"fundus_{side}"] = ear["fundus"]
    return Subject(int(subject_id), tuple(L), gains, {"side": vs_side, **vs_facts}, landmarks)

