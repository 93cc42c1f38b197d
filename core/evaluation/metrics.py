"""Segmentation and image-fidelity metrics, with physical spacing.

Segmentation (per structure, as in CrossMoDA and Kang et al. Table 1):

* Dice = 2 |P & T| / (|P| + |T|).
* ASSD (mm) = mean over the surface voxels of both masks of the distance to the other
  mask's surface, using the voxel spacing.

Empty masks (the convention used for every table in vstk): both empty -> Dice 1, ASSD 0
(nothing to find, nothing found); exactly one empty -> Dice 0 and ASSD = the length of the
image diagonal in mm, a finite worst case so that means and t-tests stay defined instead of
silently dropping the failure.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice overlap of two boolean masks, in [0, 1] (1 when both are empty)."""
    p, t = prediction.astype(bool), truth.astype(bool)
    total = int(p.sum()) + int(t.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, t).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels of a mask (mask minus its 6-connected erosion)."""
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1), border_value=0)
    return mask & ~eroded


def assd(prediction: np.ndarray, truth: np.ndarray, spacing_zyx: Sequence[float]) -> float:
    """Average symmetric surface distance in mm of two masks ``[z, y, x]``.

    ``spacing_zyx`` is the voxel size in mm in array order (z, y, x); see the module
    docstring for empty masks.
    """
    p, t = prediction.astype(bool), truth.astype(bool)
    if not p.any() and not t.any():
        return 0.0
    if not p.any() or not t.any():
        return float(np.linalg.norm(np.asarray(p.shape) * np.asarray(spacing_zyx)))
    # Crop to the union's bounding box (plus a margin) so the distance transforms stay small.
    idx = np.argwhere(p | t)
    lo = np.maximum(idx.min(axis=0) - 2, 0)
    hi = np.minimum(idx.max(axis=0) + 3, p.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    p, t = p[box], t[box]
    sp, st = _surface(p), _surface(t)
    dist_to_t = ndimage.distance_transform_edt(~st, sampling=spacing_zyx)
    dist_to_p = ndimage.distance_transform_edt(~sp, sampling=spacing_zyx)
    distances = np.concatenate([dist_to_t[sp], dist_to_p[st]])
    return float(distances.mean())


def psnr(image: np.ndarray, reference: np.ndarray, data_range: float, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB over ``mask`` (all voxels when None)."""
    diff = (image.astype(np.float64) - reference.astype(np.float64))
    if mask is not None:
        diff = diff[mask.astype(bool)]
    mse = float(np.mean(diff**2))
    if mse == 0:
        return float("inf")
    return 10.0 * np.log10(data_range**2 / mse)


def ssim(image: np.ndarray, reference: np.ndarray, data_range: float, mask: np.ndarray | None = None,
         sigma: float = 1.5) -> float:
    """Mean structural similarity (Wang et al. 2004) of 2D axial slices, over ``mask``.

    Local statistics use a Gaussian window (sigma 1.5 pixels) within each slice
    ``[z, y, x] -> [y, x]``; K1 = 0.01, K2 = 0.03.
    """
    x = image.astype(np.float64)
    y = reference.astype(np.float64)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    blur = (lambda a: ndimage.gaussian_filter(a, sigma=(0, sigma, sigma), truncate=3.5)) if x.ndim == 3 else \
        (lambda a: ndimage.gaussian_filter(a, sigma=sigma, truncate=3.5))
    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    if mask is not None:
        s = s[mask.astype(bool)]
    return float(np.mean(s))


def segmentation_scores(prediction: np.ndarray, truth: np.ndarray, spacing_zyx: Sequence[float],
                        structures: dict[int, str]) -> dict[str, float]:
    """Dice and ASSD per structure, and the predicted and true volumes in ml (VS volumetry is
    what the segmentation is for clinically; a volume ratio far from 1 on every case shows a
    systematic over- or under-segmentation that Dice alone hides):
    ``{"VS_dice": ..., "VS_assd": ..., "VS_ml": ..., "VS_true_ml": ..., ...}``."""
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    scores = {}
    for value, name in structures.items():
        p, t = prediction == value, truth == value
        scores[f"{name}_dice"] = dice(p, t)
        scores[f"{name}_assd"] = assd(p, t, spacing_zyx)
        scores[f"{name}_ml"] = int(p.sum()) * voxel_ml
        scores[f"{name}_true_ml"] = int(t.sum()) * voxel_ml
    return scores
