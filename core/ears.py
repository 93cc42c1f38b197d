"""Finding the inner ears from image content: rigid registration to a labelled reference.

No fixed offset from the field of view fits real data: a whole-head ceT1 has the internal
auditory canals several centimetres below its centre, an hrT2 slab near its centre, and
heads sit anywhere in the scanner, turned a little. So the ears are found the same way on
every image (ceT1, a translation of it, hrT2), without labels:

1. A reference is built once from one labelled ceT1 (:func:`build_reference`): the whole
   image at ``MEDIUM_SPACING_MM``, a ``PATCH_MM`` cube around each ear at ``FINE_SPACING_MM``,
   its two cochlea centres (from the label) and the two ear-box centres, placed from each
   cochlea towards the canal and the cerebellopontine angle, where a schwannoma grows
   (``box_offset_mm``).
2. A new image is registered rigidly to it (:func:`locate`) with Mattes mutual information,
   which ties ceT1 (fluid dark) to hrT2 (fluid bright) as well as to ceT1: a coarse search
   over head positions along z and turns about z (the image may be a thin slab anywhere on
   the head) at ``COARSE_SPACING_MM``, the best starts optimised, the best distinct poses
   they reach refined at ``MEDIUM_SPACING_MM`` on the skull base and the best there kept,
   then each ear refined on its own at
   ``FINE_SPACING_MM`` within ``EAR_RADII_MM`` of it.
3. The reference's cochleae and box centres, mapped through the result, are the image's.

Registration maps physical points (mm), so spacing, origin and oblique direction matrices
are taken into account; the ears are returned in physical mm, ``-x`` side of the image first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import SimpleITK as sitk

from .atomic import write_json_atomic
from .errors import InputError, format_value
from .labels import COCHLEA
from .volume import Volume, read_nifti, write_nifti

log = logging.getLogger(__name__)

#: Voxel size (mm) of the coarse search over the whole image.
COARSE_SPACING_MM = 4.0
#: Voxel size (mm) at which the pose is then refined on the skull base (and the reference kept).
MEDIUM_SPACING_MM = 2.0
#: Starts (the best-scoring of the coarse search) registered at ``COARSE_SPACING_MM``.
COARSE_TRIES = 10
#: Coarse poses (the best after registration at 4 mm, one per distinct pose) whose skull base
#: is then registered at 2 mm; the best there wins. At 4 mm poses 10-20 mm apart, or turned
#: the other way, can score alike, and on a thin slab the best starts can all converge on one
#: wrong pose (the slab matched 20 mm too high), so several distinct poses go on.
COARSE_CANDIDATES = 6
#: A coarse pose is a candidate only when its metric reaches this share of the best pose's: a
#: pose that matches the reference much worse than the best (a brain-only crop slid down until
#: its lower edge holds the cochleae) is no candidate. Correct poses measured down to 0.85 of
#: the best (a thin slab whose best coarse poses were wrong), such slid poses near 0.45.
COARSE_SHARE = 0.7
#: Two coarse poses are one candidate when they put each reference cochlea within this many
#: mm of where the other puts it.
SAME_POSE_MM = 3.0
#: Radius (mm) of the sphere around the midpoint of the ears that the skull-base refinement
#: looks at: both inner ears, the canals and the posterior fossa, not the vault.
SKULL_BASE_RADIUS_MM = 50.0
#: Voxel size (mm) at which each ear is refined.
FINE_SPACING_MM = 1.0
#: Ear-box centre relative to its cochlea, in mm along the reference image's axes: towards the
#: midline (x), posterior (y), superior (z); the canal and the cerebellopontine angle lie there.
#: With the 44 mm box of vstk.roi the box ends 10 mm lateral of the cochlea centre (a cochlea is
#: about 10 mm across) and reaches 34 mm medial of it, where large schwannomas grow.
DEFAULT_BOX_OFFSET_MM = (12.0, 4.0, 2.0)
#: Radii (mm) of the spheres around each ear in which its position is refined on its own, in
#: turn: the inner ear with the canal and the petrous bone around it, the labyrinth, then the
#: cochlea itself (the middle step catches an ear the first one left 5-7 mm off).
EAR_RADII_MM = (24.0, 16.0, 10.0)
#: A refinement is local: one that moves the cochlea by more than this share of its sphere's
#: radius has slid onto something else (too little structure in the sphere), and is dropped.
MAX_REFINE_SHARE = 0.4
#: Edge (mm) of the cube around each reference ear kept at ``FINE_SPACING_MM``.
PATCH_MM = 72.0


@dataclasses.dataclass(frozen=True)
class Ears:
    """The two inner ears of one image, in physical mm; ``-x`` side of the image first.

    Attributes:
        cochleae: the two cochlea centres.
        box_centres: the centres of the two ear boxes.
        score: the registration's final metric (Mattes mutual information, negative: lower is
            a better match); a value near 0 means nothing matched.
    """

    cochleae: tuple[tuple[float, float, float], tuple[float, float, float]]
    box_centres: tuple[tuple[float, float, float], tuple[float, float, float]]
    score: float

    def as_dict(self) -> dict[str, Any]:
        return {"cochleae_mm": [list(p) for p in self.cochleae], "box_centres_mm": [list(p) for p in self.box_centres],
                "score": self.score}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Ears":
        points = lambda key: tuple(tuple(float(v) for v in p) for p in data[key])  # noqa: E731
        return cls(points("cochleae_mm"), points("box_centres_mm"), float(data["score"]))  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class EarReference:
    """A labelled ceT1 prepared for :func:`locate`: the whole image at ``MEDIUM_SPACING_MM``,
    a patch around each ear at ``FINE_SPACING_MM`` (``-x`` side first), and its ears."""

    coarse: Volume
    patches: tuple[Volume, Volume]
    ears: Ears

    @functools.cached_property
    def coarse_search(self) -> sitk.Image:
        """The whole reference at ``COARSE_SPACING_MM``, made once for every image located."""
        return _resampled(self.coarse.to_sitk(), COARSE_SPACING_MM)

    def save(self, folder: Path) -> Path:
        """Write ``folder/ear_reference_{coarse,ear0,ear1}.nii.gz`` and ``ear_reference.json``."""
        write_nifti(self.coarse, folder / "ear_reference_coarse.nii.gz")
        for n, patch in enumerate(self.patches):
            write_nifti(patch, folder / f"ear_reference_ear{n}.nii.gz")
        return write_json_atomic(folder / "ear_reference.json", self.ears.as_dict())

    @classmethod
    def load(cls, folder: Path) -> "EarReference":
        path = folder / "ear_reference.json"
        if not path.is_file():
            raise InputError("no ear reference here", path=path, fix="rerun the vstk run that made this folder")
        patches = tuple(read_nifti(folder / f"ear_reference_ear{n}.nii.gz") for n in range(2))
        return cls(read_nifti(folder / "ear_reference_coarse.nii.gz"), patches,  # type: ignore[arg-type]
                   Ears.from_dict(json.loads(path.read_text())))


def _normalised(image: sitk.Image) -> sitk.Image:
    """Intensities scaled to [0, 1] between the 1st and 99.5th percentiles (float32)."""
    array = sitk.GetArrayViewFromImage(image)
    low, high = np.percentile(array, [1.0, 99.5])
    if not np.isfinite([low, high]).all() or high - low <= 1e-6:
        raise InputError("the image is empty or constant: no ear can be found in it",
                         fix="pass a head MRI that holds both inner ears")
    return sitk.Cast(sitk.Clamp((image - float(low)) / float(high - low), sitk.sitkFloat32, 0.0, 1.0),
                     sitk.sitkFloat32)


def _resampled(image: sitk.Image, spacing: float, *, centre: np.ndarray | None = None,
               edge_mm: float | None = None) -> sitk.Image:
    """``image`` smoothed to ``spacing`` mm and resampled onto its own axes at that spacing:
    the whole field of view, or a cube of ``edge_mm`` around the physical point ``centre``."""
    spacings = np.asarray(image.GetSpacing())
    sigma = [max(0.0, spacing ** 2 - s ** 2) ** 0.5 / 2.355 for s in spacings]
    if centre is not None:  # smooth only the part that is resampled (with room for the kernel)
        image = _around(image, np.asarray(centre), edge_mm / 2.0 + 4.0 * max(max(sigma), spacing))
    if max(sigma) > 0.05 and min(image.GetSize()) >= 4:  # the recursive filter needs 4 voxels per axis
        image = sitk.SmoothingRecursiveGaussian(image, [max(v, 1e-3) for v in sigma])
    axes = np.asarray(image.GetDirection()).reshape(3, 3)
    if centre is None:
        size = [max(2, int(round(n * s / spacing))) for n, s in zip(image.GetSize(), spacings)]
        origin = np.asarray(image.GetOrigin())
    else:
        size = [max(2, int(round(edge_mm / spacing)))] * 3
        origin = np.asarray(centre) - axes @ (np.full(3, (size[0] - 1) / 2.0 * spacing))
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, [float(v) for v in origin],
                         [spacing] * 3, image.GetDirection(), 0.0, sitk.sitkFloat32)


def _around(image: sitk.Image, centre: np.ndarray, half_mm: float) -> sitk.Image:
    """The part of ``image`` within ``half_mm`` of ``centre`` along each of its axes (at least
    four voxels per axis where the image has them, the least the smoothing filter takes; kept
    inside the image, so a centre near or beyond an edge gets the voxels at that edge)."""
    axes = np.asarray(image.GetDirection()).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing())
    index = axes.T @ (centre - np.asarray(image.GetOrigin())) / spacing
    reach = half_mm / spacing
    size = np.asarray(image.GetSize())
    least = np.minimum(size, 4)
    low = np.clip(np.floor(index - reach), 0, size - least).astype(int)
    high = np.clip(np.ceil(index + reach) + 1, low + least, size).astype(int)
    return image[int(low[0]):int(high[0]), int(low[1]):int(high[1]), int(low[2]):int(high[2])]


def cochlea_centres(label: Volume) -> list[np.ndarray]:
    """Physical centres (mm) of the two cochleae of a label, ``-x`` side of the image first.

    The cochlea voxels are split into the two ears along their main axis (the ears lie far
    apart), so a cochlea drawn in several pieces still gives one centre.
    """
    points = np.argwhere(label.array == COCHLEA).astype(np.float64)
    if len(points) < 2:
        raise InputError("the label marks no cochlea", fix="build the reference from a ceT1 whose label marks both "
                                                            "cochleae")
    physical = np.asarray(label.origin) + (points[:, ::-1] * np.asarray(label.spacing)) @ label.direction_matrix.T
    centred = physical - physical.mean(axis=0)
    axis = np.linalg.svd(centred, full_matrices=False)[2][0]
    side = centred @ axis > 0
    if side.all() or not side.any() or np.ptp(centred @ axis) < 30.0:
        raise InputError("the label's cochlea voxels do not form two ears (less than 30 mm apart)",
                         fix="build the reference from a ceT1 whose label marks both cochleae")
    centres = [physical[~side].mean(axis=0), physical[side].mean(axis=0)]
    centres.sort(key=lambda p: label.physical_to_index(p)[2])  # image x index: the -x side first
    return centres


def build_reference(image: Volume, label: Volume,
                    box_offset_mm: Sequence[float] = DEFAULT_BOX_OFFSET_MM) -> EarReference:
    """The reference of :func:`locate` from one labelled ceT1 (label 2: both cochleae)."""
    cochleae = cochlea_centres(label)
    axes = image.direction_matrix
    boxes = []
    for cochlea, other in (cochleae, cochleae[::-1]):
        medial = np.sign(axes.T @ (other - cochlea))[0]  # +1 when the other ear lies towards +x
        boxes.append(cochlea + axes @ np.array([medial * box_offset_mm[0], box_offset_mm[1], box_offset_mm[2]]))
    source = _normalised(sitk.Cast(image.to_sitk(), sitk.sitkFloat32))
    coarse = Volume.from_sitk(_resampled(source, MEDIUM_SPACING_MM))
    patches = tuple(Volume.from_sitk(_resampled(source, FINE_SPACING_MM, centre=c, edge_mm=PATCH_MM))
                    for c in cochleae)
    ears = Ears(tuple(tuple(float(v) for v in p) for p in cochleae),  # type: ignore[arg-type]
                tuple(tuple(float(v) for v in p) for p in boxes), 0.0)  # type: ignore[arg-type]
    return EarReference(coarse, patches, ears)  # type: ignore[arg-type]


def _registration(fixed_mask: sitk.Image | None = None, *, iterations: int, sampling: float,
                  step: float = 2.0) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(sampling, seed=7)  # a fixed seed: the same image, the same ears
    if fixed_mask is not None:
        method.SetMetricFixedMask(fixed_mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=step, minStep=0.01, numberOfIterations=iterations,
                                                    relaxationFactor=0.6)
    method.SetOptimizerScalesFromPhysicalShift()
    return method


def _euler(angle_deg: float, translation: np.ndarray, centre: np.ndarray) -> sitk.Euler3DTransform:
    transform = sitk.Euler3DTransform()
    transform.SetCenter([float(v) for v in centre])
    transform.SetRotation(0.0, 0.0, float(np.deg2rad(angle_deg)))
    transform.SetTranslation([float(v) for v in translation])
    return transform


def _within(shape: Sequence[int], spacing: Sequence[float], centre_mm: Sequence[float], radius: float) -> np.ndarray:
    """Boolean array (z, y, x) of the voxels of a grid within ``radius`` mm of a point given in
    mm along the grid's own axes (x, y, z) from its first voxel: the squared distance adds up
    one axis at a time, so no coordinate array of the whole grid is made."""
    squared = [((np.arange(n) * s - c) ** 2) for n, s, c in zip(shape, spacing[::-1], centre_mm[::-1])]
    total = squared[0][:, None, None] + squared[1][None, :, None] + squared[2][None, None, :]
    return total <= radius ** 2


def _sphere_mask(image: sitk.Image, centre: np.ndarray, radius: float) -> sitk.Image:
    """A mask on ``image``'s grid of the voxels within ``radius`` mm of the physical ``centre``."""
    axes = np.asarray(image.GetDirection()).reshape(3, 3)  # orthonormal: distances along the axes are mm
    along = axes.T @ (np.asarray(centre, dtype=np.float64) - np.asarray(image.GetOrigin()))
    shape = sitk.GetArrayViewFromImage(image).shape
    mask = sitk.GetImageFromArray(_within(shape, image.GetSpacing(), along, radius).astype(np.uint8))
    mask.CopyInformation(image)
    return mask


def _mapped(transform: sitk.Transform, point: Sequence[float]) -> tuple[float, float, float]:
    """Where a reference point lies in the image, under ``transform`` (image -> reference)."""
    return tuple(float(v) for v in transform.GetInverse().TransformPoint([float(v) for v in point]))  # type: ignore


def _euler_of(transform: sitk.Transform) -> sitk.Euler3DTransform:
    """The rigid transform a registration returned (SimpleITK hands back a generic one)."""
    transform = transform.Downcast()
    if isinstance(transform, sitk.CompositeTransform):
        transform = transform.GetNthTransform(transform.GetNumberOfTransforms() - 1).Downcast()
    return sitk.Euler3DTransform(transform)


def _head_centre(image: sitk.Image) -> np.ndarray:
    """Physical centre of mass of the brighter half of the voxels (the head, not the air)."""
    array = sitk.GetArrayViewFromImage(image)
    index = np.argwhere(array > np.percentile(array, 50.0)).mean(axis=0)[::-1]  # x, y, z
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in index]))


def _starts(fixed: sitk.Image, reference: EarReference) -> list[sitk.Euler3DTransform]:
    """Rigid starting points (fixed -> reference): the reference's ear midpoint placed, off the
    fixed head's in-plane centre as in the reference, at every 8 mm along the fixed image's z
    extent, turned by -12, 0 or 12 degrees about z."""
    ref_mid = np.mean(reference.ears.cochleae, axis=0)
    offset = (ref_mid - _head_centre(reference.coarse.to_sitk())) * np.array([1.0, 1.0, 0.0])
    head = _head_centre(fixed)
    axes = np.asarray(fixed.GetDirection()).reshape(3, 3)
    base = np.asarray(fixed.GetOrigin())
    inplane = axes.T @ (head - base)
    depth = (fixed.GetSize()[2] - 1) * fixed.GetSpacing()[2]
    starts = []
    for along in np.arange(0.0, depth + 1e-6, 8.0):
        target = base + axes @ np.array([inplane[0], inplane[1], along]) + offset
        for angle in (-12.0, 0.0, 12.0):
            starts.append(_euler(angle, ref_mid - target, target))
    return starts


_HOLD_BOTH_EARS = ("pass an image that holds both inner ears (a whole head or a slab through the internal "
                   "auditory canals)")


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """ITK filters and registrations made inside run on one thread: the metric's partial sums
    then add up in one order, so the same image gives the same ears to the last digit (two
    threads made them differ by up to 0.1 mm from run to run). Images are located side by
    side in processes instead (vstk.pipeline.regions)."""
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


def locate(image: Volume, reference: EarReference) -> Ears:
    """The ears of ``image`` (any contrast, any field of view that holds both inner ears).

    Raises:
        InputError: the image is empty or constant, or nothing in it matches the reference's
            ears (mutual information near zero).
    """
    with _one_thread():
        return _locate(image, reference)


def _locate(image: Volume, reference: EarReference) -> Ears:
    source = _normalised(sitk.Cast(image.to_sitk(), sitk.sitkFloat32))
    fixed = _resampled(source, COARSE_SPACING_MM)
    moving = reference.coarse_search
    probe = _registration(iterations=0, sampling=0.2)
    scored = []
    for start in _starts(fixed, reference):
        probe.SetInitialTransform(start, inPlace=False)
        try:
            scored.append((probe.MetricEvaluate(fixed, moving), start))
        except RuntimeError:  # too little overlap with the reference at this start
            continue
    scored.sort(key=lambda item: item[0])
    registered = []  # (metric, transform) of the best starts registered at the coarse grid
    for _, start in scored[:COARSE_TRIES]:
        method = _registration(iterations=60, sampling=0.3)
        method.SetInitialTransform(sitk.Euler3DTransform(start), inPlace=False)
        try:
            found = _euler_of(method.Execute(fixed, moving))
        except RuntimeError:
            continue
        registered.append((method.GetMetricValue(), found))
    registered.sort(key=lambda item: item[0])
    coarse = []  # the best distinct poses among them that match nearly as well as the best
    for value, found in registered:
        if len(coarse) == COARSE_CANDIDATES or value > COARSE_SHARE * registered[0][0]:
            break
        if not any(_same_pose(found, other, reference) for _, other in coarse):
            coarse.append((value, found))
    best_value = min((value for value, _ in coarse), default=np.inf)
    best = None
    if coarse:  # each candidate's skull base at a finer grid: its turn decides where each ear lands,
        # and at 4 mm several poses of the whole head match almost equally well
        medium = _resampled(source, MEDIUM_SPACING_MM)
        best_base = np.inf
        for _, candidate in coarse:
            refined, value = _skull_base(medium, reference, candidate)
            if value < best_base and _holds_ears(image, refined, reference):
                best_base, best = value, refined
    if best_value > -0.1:
        information = 0.0 if not coarse else -best_value
        raise InputError(f"no inner ear found: the image matches the ear reference nowhere (mutual information "
                         f"{information:.3f})",
                         fix="pass a head MRI that holds both inner ears (not noise, not a brain-only crop)")
    if best is None:
        raise InputError(f"no inner ear in the image: each of the {len(coarse)} best matches with the ear reference "
                         "puts a cochlea outside its field of view", fix=_HOLD_BOTH_EARS)
    cochleae, boxes = [], []
    for cochlea, box, patch in zip(reference.ears.cochleae, reference.ears.box_centres, reference.patches):
        transforms = [best]
        for radius in EAR_RADII_MM:
            refined = _refine(source, patch, transforms[-1], np.asarray(cochlea), radius)
            moved = np.linalg.norm(np.subtract(_mapped(refined, cochlea), _mapped(transforms[-1], cochlea)))
            transforms.append(refined if moved <= MAX_REFINE_SHARE * radius else transforms[-1])
        # the cochlea from the last, smallest sphere; the box, which reaches 10-20 mm beyond
        # it, turned as the one before, whose larger sphere pins the turn down
        cochleae.append(_mapped(transforms[-1], cochlea))
        boxes.append(tuple(np.asarray(_mapped(transforms[-2], box)) + np.asarray(cochleae[-1])
                           - np.asarray(_mapped(transforms[-2], cochlea))))
    for cochlea in cochleae:  # a refinement may still slide an ear out of a thin slab
        if not _inside(image, cochlea):
            index = image.physical_to_index(cochlea)
            raise InputError("no inner ear in the image: the best match with the ear reference puts a cochlea "
                             f"outside its field of view (at voxel {format_value(np.round(index[::-1], 1))}, x y z)",
                             fix=_HOLD_BOTH_EARS)
    order = np.argsort([image.physical_to_index(c)[2] for c in cochleae])  # -x side of this image first
    return Ears(tuple(cochleae[i] for i in order), tuple(boxes[i] for i in order),  # type: ignore[arg-type]
                float(best_value))


def _same_pose(one: sitk.Transform, other: sitk.Transform, reference: EarReference) -> bool:
    """Whether two poses put each of the reference's cochleae within ``SAME_POSE_MM`` of each other."""
    return all(np.linalg.norm(np.subtract(_mapped(one, c), _mapped(other, c))) <= SAME_POSE_MM
               for c in reference.ears.cochleae)


def _holds_ears(image: Volume, transform: sitk.Transform, reference: EarReference) -> bool:
    """Whether ``transform`` puts both reference cochleae inside ``image``'s field of view. Mutual
    information can score a pose higher where the images overlap less (a thin hrT2 slab slid
    onto the reference's vault, its ears above the slab), so such poses are not candidates."""
    return all(_inside(image, _mapped(transform, cochlea)) for cochlea in reference.ears.cochleae)


def _inside(image: Volume, point: Sequence[float]) -> bool:
    """Whether the physical ``point`` lies in ``image``'s field of view."""
    index = image.physical_to_index(point)
    return bool(np.all(index >= -0.5) and np.all(index <= np.asarray(image.shape) - 0.5))


def _skull_base(medium: sitk.Image, reference: EarReference,
                transform: sitk.Euler3DTransform) -> tuple[sitk.Euler3DTransform, float]:
    """``transform`` refined at ``MEDIUM_SPACING_MM`` on the skull base (a sphere of
    ``SKULL_BASE_RADIUS_MM`` around the midpoint of the ears it maps), with the metric value
    there; unchanged (metric +inf) when the registration fails."""
    midpoint = np.mean([_mapped(transform, c) for c in reference.ears.cochleae], axis=0)
    method = _registration(_sphere_mask(medium, midpoint, SKULL_BASE_RADIUS_MM), iterations=60, sampling=0.2,
                           step=1.0)
    method.SetInitialTransform(sitk.Euler3DTransform(transform), inPlace=False)
    try:
        return _euler_of(method.Execute(medium, reference.coarse.to_sitk())), float(method.GetMetricValue())
    except RuntimeError:
        return transform, np.inf


def _refine(source: sitk.Image, patch: Volume, transform: sitk.Euler3DTransform, cochlea: np.ndarray,
            radius: float) -> sitk.Euler3DTransform:
    """``transform`` refined rigidly at ``FINE_SPACING_MM`` on the image within ``radius`` mm of
    where it puts the reference's ``cochlea``; unchanged when too little of that lies in the image."""
    centre = np.asarray(transform.GetInverse().TransformPoint([float(v) for v in cochlea]))
    fixed = _resampled(source, FINE_SPACING_MM, centre=centre, edge_mm=2 * radius + 8.0)
    array = sitk.GetArrayViewFromImage(fixed)
    half_mm = (np.asarray(array.shape[::-1]) - 1) / 2.0 * FINE_SPACING_MM  # x, y, z
    inside = _within(array.shape, [FINE_SPACING_MM] * 3, half_mm, radius)
    inside &= array > 0.0  # outside the image the resampled values are 0
    if inside.sum() < 0.3 * np.pi * 4 / 3 * radius ** 3 / FINE_SPACING_MM ** 3:
        return transform
    mask = sitk.GetImageFromArray(inside.astype(np.uint8))
    mask.CopyInformation(fixed)
    method = _registration(mask, iterations=60, sampling=0.25, step=1.0)
    method.SetInitialTransform(sitk.Euler3DTransform(transform), inPlace=False)
    try:
        return _euler_of(method.Execute(fixed, patch.to_sitk()))
    except RuntimeError:
        return transform


#: The field of view (mm along the image axes) every image is cropped to around its ears by
#: :func:`ear_region`: what the slab geometry acquires, so the cpu profile's slice frames and
#: ear boxes (vstk.roi.EarRule) apply inside it unchanged.
REGION_MM = (120.0, 120.0, 60.0)
#: Where the midpoint of the two ear boxes lies in that region, from its centre (mm, image axes).
REGION_EAR_OFFSET_MM = (0.0, -6.0, 2.0)


def ear_region(image: Volume, ears: Ears, size_mm: Sequence[float] = REGION_MM) -> tuple[tuple[int, int, int],
                                                                                         tuple[int, int, int]]:
    """The voxel box ``(start, size)`` (z, y, x) of ``size_mm`` around ``image``'s ears, kept
    inside the image (a thin slab gives a thinner region, never padding)."""
    midpoint = np.mean(np.asarray(ears.box_centres), axis=0)
    centre = midpoint - image.direction_matrix @ np.asarray(REGION_EAR_OFFSET_MM)
    size = np.maximum(1, np.round(np.asarray(size_mm)[::-1] / np.asarray(image.spacing)[::-1])).astype(int)
    start = np.round(image.physical_to_index(centre) - (size - 1) / 2.0).astype(int)
    stop = np.minimum(start + size, image.shape)
    start = np.maximum(start, 0)
    if np.any(stop <= start):
        raise InputError("the ears found lie outside the image", fix="check that the image holds both inner ears")
    return tuple(int(v) for v in start), tuple(int(v) for v in stop - start)  # type: ignore[return-value]
