from __future__ import annotations

import numpy as np
import pytest

from vstk.evaluation.metrics import assd, dice, psnr, segmentation_scores, ssim


def ball(shape, centre, radius):
    z, y, x = np.indices(shape)
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2


def test_dice_of_identical_disjoint_and_half_overlapping_masks():
    a = np.zeros((4, 4, 4), bool)
    a[:2] = True
    b = np.zeros_like(a)
    b[1:3] = True
    assert dice(a, a) == 1.0
    assert dice(a, ~a) == 0.0
    assert dice(a, b) == pytest.approx(0.5)


def test_assd_uses_spacing_in_mm():
    a = np.zeros((10, 10, 10), bool)
    a[2:8, 2:8, 2:8] = True
    b = np.roll(a, 1, axis=0)  # shifted one slice along z
    # the z faces move by one slice; the side faces stay: the mean lies between 0 and the spacing
    d_iso = assd(a, b, (1.0, 1.0, 1.0))
    d_thick = assd(a, b, (3.0, 1.0, 1.0))
    assert 0 < d_iso < 1.0
    assert d_thick == pytest.approx(3 * d_iso, rel=0.35)
    assert assd(a, a, (1.0, 0.5, 0.5)) == 0.0


def test_assd_of_concentric_balls_is_their_radius_difference():
    outer, inner = ball((41, 41, 41), (20, 20, 20), 12), ball((41, 41, 41), (20, 20, 20), 8)
    assert assd(outer, inner, (1.0, 1.0, 1.0)) == pytest.approx(4.0, abs=0.6)


def test_empty_masks_follow_the_documented_convention():
    empty = np.zeros((5, 6, 7), bool)
    full = np.ones_like(empty)
    assert dice(empty, empty) == 1.0 and assd(empty, empty, (1, 1, 1)) == 0.0
    assert dice(full, empty) == 0.0
    assert assd(empty, full, (2.0, 1.0, 1.0)) == pytest.approx(np.sqrt(10**2 + 6**2 + 7**2))


def test_psnr_and_ssim_prefer_the_closer_image():
    rng = np.random.default_rng(0)
    reference = np.clip(rng.normal(0, 0.3, (4, 32, 32)), -1, 1)
    reference = np.cumsum(reference, axis=2) / 10
    close = reference + rng.normal(0, 0.02, reference.shape)
    far = reference + rng.normal(0, 0.3, reference.shape)
    assert psnr(close, reference, 2.0) > psnr(far, reference, 2.0) + 10
    assert ssim(reference, reference, 2.0) == pytest.approx(1.0)
    assert ssim(close, reference, 2.0) > ssim(far, reference, 2.0) + 0.2
    assert psnr(reference, reference, 2.0) == float("inf")


def test_segmentation_scores_per_structure():
    truth = np.zeros((8, 8, 8), np.uint8)
    truth[1:4, 1:4, 1:4] = 1
    truth[5:7, 5:7, 5:7] = 2
    scores = segmentation_scores(truth, truth, (1.5, 0.4, 0.4), {1: "VS", 2: "cochlea"})
    voxel_ml = 1.5 * 0.4 * 0.4 / 1000
    assert scores == pytest.approx({"VS_dice": 1.0, "VS_assd": 0.0, "cochlea_dice": 1.0, "cochlea_assd": 0.0,
                                    "VS_ml": 27 * voxel_ml, "VS_true_ml": 27 * voxel_ml,
                                    "cochlea_ml": 8 * voxel_ml, "cochlea_true_ml": 8 * voxel_ml})
