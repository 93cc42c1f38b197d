"""Unpaired 2D slice sets for translator training, and intensity normalisation.

A :class:`SliceSet` holds the normalised N x N axial slices of several volumes (ceT1 or
hrT2) cut by the core geometry (:mod:`vstk.geometry`). Intensities are mapped to [-1, 1]
per volume by robust percentiles of the head voxels, so scanner scale does not matter.
Sampling is unpaired: source and target slices are drawn independently, as in CycleGAN's
unaligned dataset.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np

from ..errors import InputError
from ..geometry import SliceFrame, SliceGeometry, slice_frame, to_slices
from ..roi import EarRule
from ..volume import Volume

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Normalisation:
    """Linear map of raw intensities to [-1, 1]: ``low`` -> -1, ``high`` -> +1 (clipped)."""

    low: float
    high: float

    def forward(self, array: np.ndarray) -> np.ndarray:
        scaled = (array.astype(np.float32) - self.low) / max(self.high - self.low, 1e-6) * 2.0 - 1.0
        return np.clip(scaled, -1.0, 1.0, out=scaled)

    def inverse(self, array: np.ndarray) -> np.ndarray:
        return ((array.astype(np.float32) + 1.0) / 2.0 * (self.high - self.low) + self.low).astype(np.float32)


def head_mask(array: np.ndarray) -> np.ndarray:
    """Voxels above 10% of the 99th intensity percentile: the head, without air."""
    threshold = 0.1 * float(np.percentile(array, 99.0))
    return array > threshold


def robust_normalisation(volume: Volume, percentiles: tuple[float, float] = (0.5, 99.5)) -> Normalisation:
    """Normalisation from the ``percentiles`` of the head voxels; the low end is 0 (air)
    when the image has an air background, so background maps to -1."""
    array = volume.array
    # Percentiles of a strided sample: the same robust range without copying a large volume.
    step = max(1, int(round((array.size / 4_000_000) ** (1 / 3))))
    if step > 1:
        array = array[::step, ::step, ::step]
    mask = head_mask(array)
    values = array[mask] if mask.sum() > 100 else array.ravel()
    low, high = np.percentile(values, percentiles)
    low = min(float(low), float(np.percentile(array, 1.0)))
    if high <= low:
        raise InputError(f"image has no usable intensity range ({low:g}..{high:g})",
                         fix="check the image is not constant inside the head")
    return Normalisation(float(low), float(high))


def head_centre(volume: Volume) -> np.ndarray:
    """Physical point (x, y, z) in mm at the centroid of the head mask (the volume centre in z).

    A simple, label-free rule that works the same on ceT1 and hrT2: the inner ears lie
    near the in-plane centre of the head in axial MR of the internal auditory canals.
    """
    mask = head_mask(volume.array)
    projection = mask.sum(axis=0, dtype=np.int64)  # [y, x]: no per-voxel index arrays
    total = int(projection.sum())
    if total == 0:
        return volume.centre
    ys = float((projection.sum(axis=1) * np.arange(projection.shape[0])).sum()) / total
    xs = float((projection.sum(axis=0) * np.arange(projection.shape[1])).sum()) / total
    centre_index = ((volume.shape[0] - 1) / 2.0, ys, xs)
    return volume.index_to_physical(centre_index)


@dataclasses.dataclass(frozen=True)
class SliceOptions:
    """How slices are cut and normalised for translation.

    Attributes:
        geometry: in-plane spacing, crop and output size (see :class:`SliceGeometry`).
        centre: where slices are centred: ``"volume"`` (the grid centre), ``"head"`` (the
            head mask's centroid), or ``"ears"`` (two frames, one per ear, by ``ears``).
        ears: the ear rule used with ``centre="ears"``.
        percentiles: robust intensity range mapped to [-1, 1].
        min_content: slices whose fraction of non-background pixels is below this are not
            used for training (air above and below the head).
        focus_mm: the slices within this distance (mm, along the slice normal) of an ear-box
            centre (``ears``) are the focus of :meth:`SliceSet.sample`; 0: none.
    """

    geometry: SliceGeometry = SliceGeometry()
    centre: str = "head"
    ears: EarRule = EarRule()
    percentiles: tuple[float, float] = (0.5, 99.5)
    min_content: float = 0.05
    focus_mm: float = 0.0

    def regions(self, volume: Volume) -> list[tuple[slice, SliceFrame]]:
        """Where ``volume`` is sliced: ``(z range, frame)`` pairs, the frame laid on the
        sub-volume ``volume.array[z range]`` (see :func:`sub_volume`).

        One region over every slice, or with ``centre="ears"`` one per ear, limited in z to
        the ear box (``ears.size_mm``) so no time goes to slices far from the ears.
        """
        everything = slice(0, volume.shape[0])
        if self.centre == "head":
            return [(everything, slice_frame(volume, self.geometry, head_centre(volume)))]
        if self.centre == "volume":
            return [(everything, slice_frame(volume, self.geometry))]
        if self.centre != "ears":
            raise ValueError(f"centre must be 'head', 'volume' or 'ears', got {self.centre!r}")
        out = []
        half = self.ears.size_mm[2] / 2.0 / volume.spacing[2]
        for point, kz in zip(self.ears.centres(volume), self._ear_slices(volume)):
            z0 = int(np.clip(np.floor(kz - half), 0, volume.shape[0] - 1))
            z1 = int(np.clip(np.ceil(kz + half) + 1, z0 + 1, volume.shape[0]))
            zs = slice(z0, z1)
            out.append((zs, slice_frame(sub_volume(volume, zs), self.geometry, point)))
        return out

    def _ear_slices(self, volume: Volume) -> list[float]:
        """The (fractional) slice index of each ear-box centre of ``volume``."""
        return [float(volume.physical_to_index(point)[0]) for point in self.ears.centres(volume)]

    def focus(self, volume: Volume, regions: Sequence[tuple[slice, SliceFrame]] | None = None
              ) -> list[np.ndarray] | None:
        """Per region of :meth:`regions` (pass them when computed already), which of its slices
        lie within ``focus_mm`` of an ear-box centre (with ``centre="ears"``, of the region's
        own ear); None without a focus."""
        if self.focus_mm <= 0:
            return None
        ears = self._ear_slices(volume)
        regions = self.regions(volume) if regions is None else regions
        masks = []
        for n, (zs, _) in enumerate(regions):
            ks = np.arange(zs.start, zs.stop)[:, None]
            near = [ears[n]] if self.centre == "ears" else ears
            masks.append((np.abs(ks - np.asarray(near)[None]) * volume.spacing[2] <= self.focus_mm).any(axis=1))
        return masks

    def frames(self, volume: Volume) -> list[SliceFrame]:
        """The frames of :meth:`regions` (each relative to its own z range)."""
        return [frame for _, frame in self.regions(volume)]


def sub_volume(volume: Volume, zs: slice) -> Volume:
    """Slices ``zs`` of ``volume`` as a volume with the matching origin (a view, no copy)."""
    if zs.start in (0, None) and zs.stop in (None, volume.shape[0]):
        return volume
    origin = volume.index_to_physical((zs.start or 0, 0, 0))
    return Volume(volume.array[zs], volume.spacing, tuple(origin), volume.direction)


def normalised_slices(volume: Volume, options: SliceOptions, start: int = 0, stop: int | None = None,
                      *, frame: SliceFrame | None = None, norm: Normalisation | None = None) -> np.ndarray:
    """Slices ``start:stop`` of ``volume`` on ``frame`` (default: its first frame) as float32
    ``[k, N, N]`` in [-1, 1]."""
    frame = frame or options.frames(volume)[0]
    norm = norm or robust_normalisation(volume, options.percentiles)
    raw = to_slices(volume, frame, start=start, stop=stop, fill=norm.low)
    return norm.forward(raw)


class SliceSet:
    """Normalised training slices of several volumes, ``[n, N, N]`` float32 in [-1, 1].

    With ``focus`` (one flag per slice) and ``focus_share``, :meth:`sample` draws that share of
    its slices from the flagged ones and the rest from the others (when both kinds exist);
    without, every slice is equally likely.
    """

    def __init__(self, slices: np.ndarray, volume_index: np.ndarray, names: Sequence[str],
                 focus: np.ndarray | None = None, focus_share: float = 0.5) -> None:
        if slices.ndim != 3 or slices.shape[1] != slices.shape[2]:
            raise ValueError(f"slices must be [n, N, N], got {slices.shape}")
        if len(slices) == 0:
            raise InputError("no slice with content: the slice frames miss the head",
                             fix="check the volumes, or the slice settings centre / ear_offset_mm / crop")
        if focus is not None and focus.shape != (len(slices),):
            raise ValueError(f"focus needs one flag per slice ({len(slices)}), got shape {focus.shape}")
        self.slices = slices
        self.volume_index = volume_index
        self.names = list(names)
        self.focus = focus
        self.focus_share = focus_share
        self._groups = None
        if focus is not None and focus.any() and not focus.all():
            self._groups = (np.flatnonzero(focus), np.flatnonzero(~focus))

    @classmethod
    def from_volumes(cls, volumes: Sequence[Volume], options: SliceOptions,
                     names: Sequence[str] | None = None, focus_share: float = 0.5) -> "SliceSet":
        """Cut, normalise and keep the slices with content of every volume (flagging those
        near the ears when ``options.focus_mm`` is set)."""
        names = list(names) if names is not None else [f"volume{i}" for i in range(len(volumes))]
        chunks, owners, flags = [], [], []
        for i, volume in enumerate(volumes):
            norm = robust_normalisation(volume, options.percentiles)
            regions = options.regions(volume)
            focus = options.focus(volume, regions) or [None] * len(regions)
            for (zs, frame), near in zip(regions, focus):
                slices = normalised_slices(sub_volume(volume, zs), options, frame=frame, norm=norm)
                content = (slices > -0.9).mean(axis=(1, 2))
                keep = content >= options.min_content
                chunks.append(slices[keep])
                owners.append(np.full(int(keep.sum()), i, dtype=np.int32))
                flags.append(near[keep] if near is not None else np.zeros(int(keep.sum()), bool))
                log.debug("%s: %d of %d slices kept", names[i], int(keep.sum()), len(slices))
        if not chunks:
            raise InputError("no volumes given for translation", fix="check the data folder")
        focus = np.concatenate(flags) if options.focus_mm > 0 else None
        result = cls(np.concatenate(chunks), np.concatenate(owners), names, focus, focus_share)
        if focus is not None:
            log.info("%d of %d training slices lie within %g mm of the ears: %s of the draws%s", int(focus.sum()),
                     len(focus), options.focus_mm, f"{focus_share:.0%}",
                     "" if result._groups is not None else " (all alike: uniform draws)")
        return result

    def __len__(self) -> int:
        return len(self.slices)

    @property
    def size(self) -> int:
        return int(self.slices.shape[1])

    def shard(self, rank: int, world_size: int, seed: int = 0) -> "SliceSet":
        """This rank's share of the slices for data-parallel training (the whole set for one rank).

        As torch's ``DistributedSampler``: the slices are shuffled with ``seed`` (the same order
        on every rank) and rank ``r`` keeps positions ``r, r + world_size, ...``, so the shares
        are disjoint, cover every slice and differ in size by at most one.
        """
        if world_size == 1:
            return self
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        if len(self) < world_size:
            raise InputError(f"{len(self)} training slices cannot be shared by {world_size} processes",
                             fix=f"use at most {len(self)} processes, or more volumes")
        order = np.random.default_rng(seed).permutation(len(self))[rank::world_size]
        order.sort()
        focus = self.focus[order] if self.focus is not None else None
        return SliceSet(self.slices[order], self.volume_index[order], self.names, focus, self.focus_share)

    def sample(self, rng: np.random.Generator, batch_size: int, *, flip: bool = True,
               crop: int | None = None) -> np.ndarray:
        """A random batch ``[B, 1, N, N]`` (with random left-right flips when ``flip``); with
        ``crop``, each slice is cut to a random ``crop`` x ``crop`` window first (``[B, 1, crop, crop]``)."""
        if self._groups is None:
            index = rng.integers(0, len(self.slices), size=batch_size)
        else:
            near, far = self._groups
            chosen = rng.random(batch_size) < self.focus_share
            index = np.where(chosen, near[rng.integers(0, len(near), size=batch_size)],
                             far[rng.integers(0, len(far), size=batch_size)])
        if crop is None or crop >= self.size:
            batch = self.slices[index][:, None].copy()
        else:
            corners = rng.integers(0, self.size - crop + 1, size=(batch_size, 2))
            batch = np.stack([self.slices[i, y:y + crop, x:x + crop] for i, (y, x) in zip(index, corners)])[:, None]
        if flip:
            flips = rng.random(batch_size) < 0.5
            batch[flips] = batch[flips][..., ::-1]
        return batch
