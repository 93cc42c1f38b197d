"""Translation fidelity on paired cases: PSNR and SSIM of translated ceT1 against the truth.

The phantom's ``paired`` folder renders the same anatomy in both contrasts on one grid, so a
translated ceT1 can be scored against the true hrT2 voxel for voxel. Both images are
normalised to [-1, 1] by robust percentiles of their head voxels (data range 2). Scores
cover the head voxels of the true hrT2 that every compared method translated: translators
leave 0 outside their slice frames, so a voxel counts only where every output is above 0,
and every method is scored on the same voxels.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ..volume import Volume
from .metrics import psnr, ssim


def shared_coverage(outputs: Mapping[str, Volume]) -> np.ndarray:
    """Voxels that every output covers (value above 0)."""
    masks = [volume.array > 0 for volume in outputs.values()]
    covered = masks[0].copy()
    for mask in masks[1:]:
        covered &= mask
    return covered


def fidelity_scores(translated: Volume, truth: Volume, coverage: np.ndarray | None = None) -> dict[str, float]:
    """``{"psnr": dB, "ssim": [-1, 1]}`` of one translated volume against its true hrT2 (same grid)."""
    from ..translation.data import head_mask, robust_normalisation

    if translated.shape != truth.shape:
        raise ValueError(f"translated shape {translated.shape} differs from the truth's {truth.shape}")
    reference = robust_normalisation(truth).forward(truth.array)
    image = robust_normalisation(translated).forward(translated.array)
    mask = head_mask(truth.array)
    if coverage is not None:
        mask &= coverage
    return {"psnr": psnr(image, reference, 2.0, mask), "ssim": ssim(image, reference, 2.0, mask)}


def translation_fidelity(outputs: Mapping[str, Mapping[str, Volume]],
                         truths: Mapping[str, Volume]) -> dict[str, dict]:
    """Score every method's translations of every paired case.

    Args:
        outputs: ``{method: {case: translated volume}}``, every method with every case of ``truths``.
        truths: ``{case: true hrT2}`` on the grid of the translated volumes.

    Returns:
        ``{method: {"cases": {case: {"psnr", "ssim"}}, "psnr": {"mean", "std"}, "ssim": {"mean", "std"}}}``
        (PSNR in dB, std over cases with ddof 0).
    """
    results: dict[str, dict] = {method: {"cases": {}} for method in outputs}
    for case, truth in truths.items():
        per_method = {method: volumes[case] for method, volumes in outputs.items()}
        coverage = shared_coverage(per_method)
        for method, volume in per_method.items():
            results[method]["cases"][case] = fidelity_scores(volume, truth, coverage)
    for result in results.values():
        for metric in ("psnr", "ssim"):
            values = np.array([scores[metric] for scores in result["cases"].values()], dtype=np.float64)
            result[metric] = {"mean": float(values.mean()), "std": float(values.std())}
    return results
