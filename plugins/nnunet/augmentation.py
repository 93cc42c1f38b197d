"""Label-guided structure intensity augmentation for nnU-Net's training pipeline.

Translators at small budgets get the target structures' intensity wrong: on the phantom the
translated VS keeps ceT1's bright enhancement (real hrT2 shows it grey) and the cochlea stays
as dark as the bone around it (real hrT2 shows it bright); see
``benchmarks/translation_quality.py``. A segmenter trained on such views learns "VS = bright
blob" and never learns the cochlea. CrossMoDA 2022 entries met the same gap with label-guided
appearance changes of the translated images: random reduction of the tumour signal
(arXiv:2211.14986) and local contrast alteration of the tumour (generative blending
augmentation, Sallé et al., arXiv:2304.01705). This transform is the plain version of that idea for every labelled
structure: with probability ``probability`` per structure and patch, the structure (its mask
softened by one voxel) is given a random mean intensity between the patch's 1st and 99th
percentile and its inner contrast is scaled by a random factor, so the segmenter has to find
it by shape and context rather than by the translated brightness.

The probability can differ per training case (e.g. 0 for the pseudo-labelled real hrT2 of
the self-training rounds, whose structures already look as on the test images): nnU-Net's
data loader loads one case and transforms its patch right away, so a :class:`LoadedCase` note,
set by the training dataset (:class:`NotingDataset`) and read by the transform, tells which
case a patch comes from.

Imports torch and batchgeneratorsv2: import only inside
:func:`vstk_nnunet.environment.nnunet_environment`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from scipy import ndimage
from torch.nn import functional as F

_QUANTILE_SAMPLE = 4096  # voxels the patch quantiles are taken from (a 96 x 112 patch has 10752)


class LoadedCase:
    """The identifier of the case nnU-Net's training data loader loaded last.

    The loader loads a case, crops its patch and transforms it before it loads the next one,
    within one process (each augmentation worker has its own copy of loader, dataset and note),
    so during a transform the note names the case of the patch.
    """

    def __init__(self) -> None:
        self.identifier: str | None = None


class NotingDataset:
    """An nnU-Net dataset that writes the identifier of each case it loads into a :class:`LoadedCase`.

    Everything else is the wrapped dataset's (``identifiers``, ``load_case`` itself, ...).
    """

    def __init__(self, dataset, note: LoadedCase) -> None:
        self._dataset = dataset
        self._note = note

    def load_case(self, identifier: str):
        self._note.identifier = identifier
        return self._dataset.load_case(identifier)

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("_dataset", "_note"):  # unpickling: not set yet
            raise AttributeError(name)
        return getattr(self._dataset, name)


class _CaseProbabilityTransform(BasicTransform):
    """A transform applied with a probability that may differ per training case: ``probability``
    by default, ``case_probability[identifier]`` for the cases it names, the case of each patch
    read from the ``loaded`` note (needed when ``case_probability`` is given)."""

    def __init__(self, probability: float, case_probability: Mapping[str, float] | None,
                 loaded: LoadedCase | None) -> None:
        super().__init__()
        self.case_probability = {str(k): float(v) for k, v in (case_probability or {}).items()}
        for value in (probability, *self.case_probability.values()):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"probability must be in [0, 1], got {value}")
        if self.case_probability and loaded is None:
            raise ValueError("case_probability needs the LoadedCase note that names each patch's case")
        self.probability, self.loaded = float(probability), loaded

    def _patch_probability(self) -> float:
        """The probability of the case whose patch is being transformed."""
        if self.loaded is None:
            return self.probability
        return self.case_probability.get(self.loaded.identifier, self.probability)


class StructureIntensityTransform(_CaseProbabilityTransform):
    """Give labelled structures a random intensity and inner contrast (see the module docstring).

    Works on one sample: ``image`` ``(C, *spatial)`` float, ``segmentation`` ``(1, *spatial)``
    with 2 or 3 spatial axes, before nnU-Net's label cleanup (``-1`` padding is ignored).
    Draws its random numbers from numpy's global generator, as nnU-Net's other transforms do,
    so a seeded training run is repeatable.

    Args:
        labels: the label values to alter (e.g. 1 VS, 2 cochlea), each independently.
        probability: chance that a given structure present in the patch is altered.
        contrast: range of the factor on the structure's deviations from its own mean.
        quantiles: patch intensity quantiles that bound the new mean.
        upper_quantiles: a lower upper bound for some labels, e.g. ``{1: 0.75}`` keeps the VS
            below the brightest quarter of the patch (fluid on hrT2), as the tumour is there.
        lower_quantiles: a higher lower bound for some labels, e.g. ``{2: 0.75}`` draws the
            cochlea's mean from the brightest quarter of the patch, where its fluid is on hrT2.
        case_probability: another probability for some cases, by identifier; needs ``loaded``.
        loaded: the note that names the case of the patch being transformed.
        invert: chance that the inner contrast factor is negated: a cyst is dark inside an
            enhancing tumour on ceT1 and bright inside a grey one on hrT2.
        texture: upper bound of the amplitude (a fraction of the patch's quantile range) of a
            smooth random field added inside the structure; the amplitude is drawn uniformly
            from [0, texture]. Translated tumours come out smoother than real heterogeneous ones.
        texture_cell: range of the field's feature size in voxels (noise on a coarse grid of
            cells of that size, interpolated).
    """

    def __init__(self, labels: Sequence[int], probability: float, contrast: tuple[float, float] = (0.5, 1.5),
                 quantiles: tuple[float, float] = (0.01, 0.99),
                 upper_quantiles: Mapping[int, float] | None = None,
                 lower_quantiles: Mapping[int, float] | None = None,
                 case_probability: Mapping[str, float] | None = None, loaded: LoadedCase | None = None,
                 invert: float = 0.0, texture: float = 0.0, texture_cell: tuple[float, float] = (2.0, 6.0)) -> None:
        super().__init__(probability, case_probability, loaded)
        if not 0.0 <= invert <= 1.0:
            raise ValueError(f"invert must be in [0, 1], got {invert}")
        if texture < 0.0 or not 1.0 <= texture_cell[0] <= texture_cell[1]:
            raise ValueError(f"texture must be >= 0 and texture_cell an increasing range >= 1 voxel, "
                             f"got {texture} and {texture_cell}")
        self.invert, self.texture = float(invert), float(texture)
        self.texture_cell = (float(texture_cell[0]), float(texture_cell[1]))
        self.labels = tuple(int(v) for v in labels)
        self.contrast = (float(contrast[0]), float(contrast[1]))
        self.quantiles = (float(quantiles[0]), float(quantiles[1]))
        self.upper = {int(k): float(v) for k, v in (upper_quantiles or {}).items()}
        for label, upper in self.upper.items():
            if not self.quantiles[0] < upper <= self.quantiles[1]:
                raise ValueError(f"upper quantile {upper} of label {label} must be in "
                                 f"({self.quantiles[0]}, {self.quantiles[1]}]")
        self.lower = {int(k): float(v) for k, v in (lower_quantiles or {}).items()}
        for label, lower in self.lower.items():
            if not self.quantiles[0] <= lower < self.upper.get(label, self.quantiles[1]):
                raise ValueError(f"lower quantile {lower} of label {label} must be in "
                                 f"[{self.quantiles[0]}, {self.upper.get(label, self.quantiles[1])})")
        # every quantile any label needs, taken in one pass over the patch
        self._levels = sorted({*self.quantiles, *self.upper.values(), *self.lower.values()})

    def apply(self, data_dict: dict, **params) -> dict:
        image, segmentation = data_dict.get("image"), data_dict.get("segmentation")
        probability = self._patch_probability()
        if image is None or segmentation is None or probability == 0.0:
            return data_dict
        levels: list[dict[float, float]] | None = None  # per channel, computed once when needed
        for label in self.labels:
            if np.random.uniform() >= probability:
                continue
            mask = segmentation[0] == label
            box = _bounding_box(mask)
            if box is None:
                continue
            if levels is None:
                levels = [dict(zip(self._levels, _patch_quantiles(image[c], self._levels)))
                          for c in range(image.shape[0])]
            inner, weight = mask[box], _soften(mask[box])
            lower, upper = self.lower.get(label, self.quantiles[0]), self.upper.get(label, self.quantiles[1])
            for channel, level in enumerate(levels):
                low, high = level[lower], level[upper]
                region = image[channel][box]
                mean, scale = np.random.uniform(low, high), np.random.uniform(*self.contrast)
                if self.invert > 0.0 and np.random.uniform() < self.invert:
                    scale = -scale
                recoloured = mean + scale * (region - region[inner].mean())
                if self.texture > 0.0:
                    amplitude = np.random.uniform(0.0, self.texture) * (high - low)
                    recoloured = recoloured + amplitude * _smooth_noise(region.shape, self.texture_cell)
                image[channel][box] = region + weight.to(region.dtype) * (recoloured - region)
        return data_dict


class IntensityRemapTransform(_CaseProbabilityTransform):
    """Pass the whole patch through a random, possibly non-monotonic intensity curve.

    Translated views get more than the target structures' intensity wrong: at small budgets a
    translator can swap whole tissue classes (on the phantom, CycleGAN and QS-Attn turn some
    dark ceT1 CSF grey and some grey tissue bright, where real hrT2 shows the CSF bright). A
    segmenter trained on such views learns their intensity order. Random intensity curves make
    it rely on shapes and edges instead, as in the domain generalisation augmentations for
    unseen MR contrasts (e.g. the Bezier-curve remapping of Models Genesis, Zhou et al. 2019,
    and the random-network intensity shifts of GIN, Ouyang et al. 2021).

    With probability ``probability`` (per patch; another one per case via ``case_probability``
    and the ``loaded`` note, as in :class:`StructureIntensityTransform`), each channel's values
    between its ``quantiles`` are mapped through a piecewise linear curve with ``points``
    control points at evenly spaced inputs and uniformly random outputs in the same range;
    values outside the range take the curve's end values.
    """

    def __init__(self, probability: float, points: int = 4, quantiles: tuple[float, float] = (0.01, 0.99),
                 case_probability: Mapping[str, float] | None = None, loaded: LoadedCase | None = None) -> None:
        super().__init__(probability, case_probability, loaded)
        if int(points) < 2:
            raise ValueError(f"an intensity curve needs at least 2 control points, got {points}")
        self.points = int(points)
        self.quantiles = (float(quantiles[0]), float(quantiles[1]))

    def apply(self, data_dict: dict, **params) -> dict:
        image = data_dict.get("image")
        probability = self._patch_probability()
        if image is None or probability == 0.0 or np.random.uniform() >= probability:
            return data_dict
        for channel in range(image.shape[0]):
            values = image[channel]
            low, high = _patch_quantiles(values, self.quantiles)
            if not high > low:  # a flat patch: nothing to remap
                continue
            curve = torch.from_numpy(np.random.uniform(size=self.points).astype(np.float32))
            position = ((values.float() - low) / (high - low)).clamp(0.0, 1.0) * (self.points - 1)
            left = position.floor().clamp(max=self.points - 2).long()
            fraction = position - left
            mapped = curve[left] * (1.0 - fraction) + curve[left + 1] * fraction
            image[channel] = (low + mapped * (high - low)).to(values.dtype)
        return data_dict


class FluidRimTransform(_CaseProbabilityTransform):
    """Draw a rim of bright fluid around a structure, as hrT2 shows the tumour.

    On hrT2 a vestibular schwannoma is a grey mass outlined by bright cerebrospinal fluid: a
    plug inside the fluid of the internal auditory canal, a ball in the cistern of the
    cerebellopontine angle. A translator at a small budget leaves that fluid as dark as ceT1
    shows it (docs/results.md, issue #20: the views' canal stays dark), so a segmenter trained
    on the views has never seen a tumour against bright fluid and, on real hrT2, misses the
    small intrameatal ones or takes the bright canal for tumour. The ceT1 labels say where
    the tumour is but not where its fluid is; this transform paints a plausible one: with
    probability ``probability`` per patch holding the structure, the unlabelled voxels within
    a random distance (``width``, voxels) of the structure, on a random share of its outline
    (``coverage``, a smooth random field chooses where, as tumours touch brainstem and bone on
    part of their surface), get a random mean among the patch's brightest voxels
    (``quantiles``) above the structure's own mean by at least ``margin`` of the patch's
    range, with their texture damped (fluid is homogeneous). The structure and the other
    labels keep their voxels; the rim's outer edge is soft, its inner edge the label's own.

    With chance ``erase`` (given a rim is drawn) the structure itself is filled with the
    fluid too (its mean at least the patch's 95th percentile) and its label set to
    background: a canal or cistern with no tumour in it, as the other ear and most of the
    canal show on hrT2. Without it the views never show bright fluid where a tumour could
    be, and the segmenter takes the bright canal for tumour.

    Never meant for the real target images (their fluid is real): give them probability 0
    through ``case_probability`` and the ``loaded`` note (see :class:`StructureIntensityTransform`).
    """

    def __init__(self, label: int, probability: float, width: tuple[float, float] = (1.0, 4.0),
                 coverage: tuple[float, float] = (0.3, 1.0), quantiles: tuple[float, float] = (0.85, 0.99),
                 margin: float = 0.2, erase: float = 0.0, case_probability: Mapping[str, float] | None = None,
                 loaded: LoadedCase | None = None) -> None:
        super().__init__(probability, case_probability, loaded)
        if not 0.5 <= width[0] <= width[1]:
            raise ValueError(f"width must be an increasing range of at least 0.5 voxel, got {width}")
        if not 0.0 < coverage[0] <= coverage[1] <= 1.0:
            raise ValueError(f"coverage must be an increasing range in (0, 1], got {coverage}")
        if not 0.0 <= quantiles[0] < quantiles[1] <= 1.0:
            raise ValueError(f"quantiles must be an increasing range in [0, 1], got {quantiles}")
        if not 0.0 <= margin < 1.0:
            raise ValueError(f"margin must be in [0, 1), got {margin}")
        if not 0.0 <= erase <= 1.0:
            raise ValueError(f"erase must be in [0, 1], got {erase}")
        self.erase = float(erase)
        self.label, self.margin = int(label), float(margin)
        self.width = (float(width[0]), float(width[1]))
        self.coverage = (float(coverage[0]), float(coverage[1]))
        self.quantiles = (float(quantiles[0]), float(quantiles[1]))

    def apply(self, data_dict: dict, **params) -> dict:
        image, segmentation = data_dict.get("image"), data_dict.get("segmentation")
        probability = self._patch_probability()
        if image is None or segmentation is None or probability == 0.0 or np.random.uniform() >= probability:
            return data_dict
        mask = segmentation[0] == self.label
        width = np.random.uniform(*self.width)
        box = _bounding_box(mask, margin=int(np.ceil(width)) + 2)
        if box is None:
            return data_dict
        inner = mask[box]
        unlabelled = (segmentation[0][box] == 0).numpy()
        rim = (ndimage.distance_transform_edt(~inner.numpy()) <= width) & unlabelled
        coverage = np.random.uniform(*self.coverage)
        if rim.any() and coverage < 1.0:
            field = _smooth_noise(rim.shape, (2.0, 6.0)).numpy()
            rim &= field >= np.quantile(field[rim], 1.0 - coverage)
        if not rim.any():
            return data_dict
        erased = self.erase > 0.0 and np.random.uniform() < self.erase
        fluid, paintable = torch.from_numpy(rim), torch.from_numpy(unlabelled)
        if erased:
            fluid, paintable = fluid | inner, paintable | inner
        # full weight on the fluid, soft only outwards (the soft edge spills into no label)
        weight = (torch.maximum(_soften(fluid), fluid.float()) * paintable).to(image.dtype)
        for channel in range(image.shape[0]):
            q_low, q_high, low, high, q_erase = _patch_quantiles(image[channel], (*self.quantiles, 0.01, 0.99, 0.95))
            region = image[channel][box]
            # an erased tumour's place is filled from the patch's brightest twentieth at least:
            # there is no tumour to stand out from, and a grey fill would teach grey = background
            floor = (max(q_low, min(q_erase, q_high)) if erased
                     else max(q_low, float(region[inner].mean()) + self.margin * (high - low)))
            if floor >= q_high and not erased:  # the structure is as bright as the fluid: no rim would show
                continue
            mean, damping = np.random.uniform(floor, q_high), np.random.uniform(0.2, 0.6)
            recoloured = mean + damping * (region - region[fluid].mean())
            image[channel][box] = region + weight * (recoloured - region)
        if erased:
            segmentation[0][box][inner] = 0
        return data_dict


def _patch_quantiles(values: torch.Tensor, levels: Sequence[float]) -> list[float]:
    """The patch's intensity quantiles at ``levels`` (fractions), from a strided sample of at
    most about ``_QUANTILE_SAMPLE`` voxels: bounds of random draws need no exact quantiles."""
    sample = values.reshape(-1).float()
    if sample.numel() > _QUANTILE_SAMPLE:
        sample = sample[:: sample.numel() // _QUANTILE_SAMPLE + 1]
    return torch.quantile(sample, torch.tensor(list(levels), dtype=sample.dtype)).tolist()


def _bounding_box(mask: torch.Tensor, margin: int = 2) -> tuple[slice, ...] | None:
    """The mask's bounding box grown by ``margin`` voxels, clipped to the patch (None for an
    empty mask): by default two, as the softened edge reaches one voxel out, and a second one
    keeps the averaging at that edge as on the whole patch."""
    where = torch.nonzero(mask)
    if len(where) == 0:
        return None
    low, high = where.min(dim=0).values.tolist(), where.max(dim=0).values.tolist()
    return tuple(slice(max(a - margin, 0), min(b + margin + 1, n)) for a, b, n in zip(low, high, mask.shape))


def _smooth_noise(shape: Sequence[int], cell: tuple[float, float]) -> torch.Tensor:
    """A smooth random field of unit standard deviation on ``shape`` (2 or 3 axes): normal
    noise on a grid of cells of a random size in ``cell`` voxels, interpolated linearly."""
    size = np.random.uniform(*cell)
    coarse = [max(2, int(np.ceil(n / size)) + 1) for n in shape]
    noise = torch.from_numpy(np.random.standard_normal(coarse).astype(np.float32))[None, None]
    field = F.interpolate(noise, size=tuple(shape), mode="bilinear" if len(shape) == 2 else "trilinear",
                          align_corners=False)[0, 0]
    return (field - field.mean()) / (field.std() + 1e-6)


def _soften(mask: torch.Tensor) -> torch.Tensor:
    """The mask as float weights, averaged over each voxel's 3^d neighbourhood (soft edges)."""
    weight = mask.float()[None, None]
    pool = F.avg_pool2d if mask.ndim == 2 else F.avg_pool3d
    return pool(weight, kernel_size=3, stride=1, padding=1, count_include_pad=False)[0, 0]


def with_structure_intensity(transforms, labels: Sequence[int], probability: float,
                             upper_quantiles: Mapping[int, float] | None = None,
                             lower_quantiles: Mapping[int, float] | None = None,
                             case_probability: Mapping[str, float] | None = None, loaded: LoadedCase | None = None,
                             **options):
    """Insert :class:`StructureIntensityTransform` into nnU-Net's composed training transforms,
    right after the spatial transform (so the mask matches the patch) and before the intensity
    transforms (noise, blur, brightness, contrast, gamma still act on top of it). Nothing is
    inserted when every probability is 0. ``options`` go to the transform (``invert``,
    ``texture``, ``texture_cell``).
    """
    if _never(probability, case_probability):
        return transforms
    return _insert_after_spatial(transforms, StructureIntensityTransform(
        labels, probability, upper_quantiles=upper_quantiles, lower_quantiles=lower_quantiles,
        case_probability=case_probability, loaded=loaded,
        **options), "structure_intensity", after=("Convert2DTo3DTransform",))


def with_intensity_remap(transforms, probability: float, points: int = 4,
                         case_probability: Mapping[str, float] | None = None, loaded: LoadedCase | None = None):
    """Insert :class:`IntensityRemapTransform` into nnU-Net's composed training transforms after
    the spatial transform and the structure intensity augmentation (which it then remaps too)
    and before nnU-Net's intensity transforms. Nothing is inserted when every probability is 0."""
    if _never(probability, case_probability):
        return transforms
    return _insert_after_spatial(
        transforms, IntensityRemapTransform(probability, points, case_probability=case_probability, loaded=loaded),
        "intensity_remap", after=("Convert2DTo3DTransform", "StructureIntensityTransform", "FluidRimTransform"))


def with_fluid_rim(transforms, label: int, probability: float,
                   case_probability: Mapping[str, float] | None = None, loaded: LoadedCase | None = None,
                   **options):
    """Insert :class:`FluidRimTransform` for ``label`` into nnU-Net's composed training transforms
    after the spatial transform and the structure intensity augmentation (the rim is drawn
    above the structure's new mean) and before the intensity remap and nnU-Net's intensity
    transforms. Nothing is inserted when every probability is 0. ``options`` go to the
    transform (``width``, ``coverage``, ``quantiles``, ``margin``, ``erase``)."""
    if _never(probability, case_probability):
        return transforms
    return _insert_after_spatial(
        transforms, FluidRimTransform(label, probability, case_probability=case_probability, loaded=loaded, **options),
        "fluid_rim", after=("Convert2DTo3DTransform", "StructureIntensityTransform"))


def _never(probability: float, case_probability: Mapping[str, float] | None) -> bool:
    """True when neither the probability nor any case's own probability is above 0."""
    return probability <= 0.0 and not any(p > 0.0 for p in (case_probability or {}).values())


def _insert_after_spatial(transforms, transform: BasicTransform, setting: str, after: Sequence[str]):
    """Insert ``transform`` into nnU-Net's composed transforms right after its SpatialTransform
    and the steps named in ``after`` that directly follow it."""
    steps = transforms.transforms
    names = [type(t).__name__ for t in steps]
    if "SpatialTransform" not in names:
        raise RuntimeError(f"nnU-Net's training transforms have no SpatialTransform ({names}): "
                           f"this nnU-Net version is not supported by {setting}")
    at = names.index("SpatialTransform") + 1
    while at < len(names) and names[at] in after:
        at += 1
    steps.insert(at, transform)
    return transforms
