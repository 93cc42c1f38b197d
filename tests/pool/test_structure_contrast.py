from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pool_helpers import label_for, mr_image, provenance
from vstk.evaluation.contrast import (REAL_HRT2, contrast_summary, contrast_table, pool_contrasts,
                                      structure_contrast)
from vstk.pool import PoolBuilder
from vstk.translation.data import robust_normalisation
from vstk.volume import Volume, write_nifti

SPACING = (0.5, 0.5, 3.0)  # x, y, z: thick slices, as ceT1 and hrT2 have


def head_with_structure(inside: float, near: float, far: float, spacing=SPACING) -> tuple[Volume, Volume]:
    """A box-shaped head (air around it) holding a small cochlea (label 2) next to a VS (label
    1); the tissue within 2 mm of the cochlea is ``near``, the rest of the head ``far``."""
    label = np.zeros((12, 60, 60), np.uint8)
    label[5:7, 28:33, 28:33] = 2
    label[5:7, 28:33, 33:40] = 1
    distance = ndimage.distance_transform_edt(label != 2, sampling=tuple(reversed(spacing)))
    image = np.zeros(label.shape, np.float32)
    image[1:11, 5:55, 5:55] = far
    image[(distance <= 2.0) & (image > 0)] = near
    image[label == 2] = inside
    image[label == 1] = 900.0
    return Volume(image, spacing), Volume(label, spacing)


def test_the_contrast_is_the_structure_against_its_ring_in_mm_over_the_robust_range():
    image, label = head_with_structure(inside=600.0, near=100.0, far=300.0)
    norm = robust_normalisation(image)
    # the ring is the unlabelled tissue within 2 mm: the 3 mm slices above and below are not in it,
    # and the VS beside the cochlea is not its surroundings either
    assert structure_contrast(image, label, 2) == pytest.approx((600.0 - 100.0) / (norm.high - norm.low))
    wider = structure_contrast(image, label, 2, ring_mm=3.5)  # now the next slices (300) count too
    assert (600.0 - 300.0) / (norm.high - norm.low) < wider < (600.0 - 100.0) / (norm.high - norm.low)


def test_the_contrast_has_the_structures_sign_and_no_scanner_scale():
    bright, label = head_with_structure(inside=600.0, near=100.0, far=300.0)
    dark, _ = head_with_structure(inside=50.0, near=100.0, far=300.0)
    assert structure_contrast(bright, label, 2) > 0 > structure_contrast(dark, label, 2)
    scaled = bright.with_array(bright.array * 7.0)
    assert structure_contrast(scaled, label, 2) == pytest.approx(structure_contrast(bright, label, 2))


def test_voxels_coarser_than_the_ring_still_have_their_neighbours_as_surroundings():
    image, label = head_with_structure(inside=600.0, near=100.0, far=300.0, spacing=(2.5, 2.5, 3.0))
    norm = robust_normalisation(image)
    assert structure_contrast(image, label, 2) == pytest.approx((600.0 - 300.0) / (norm.high - norm.low))


def test_an_absent_structure_has_no_contrast():
    image, label = head_with_structure(inside=600.0, near=100.0, far=300.0)
    assert structure_contrast(image, label.with_array(np.where(label.array == 2, 0, label.array)), 2) is None


def test_the_pool_contrasts_read_every_view_beside_the_ceT1_and_the_real_hrT2(tmp_path):
    cases = ("crossmoda2022_etz_2", "crossmoda2022_ldn_3")
    sources = {}
    with PoolBuilder(tmp_path / "pool.h5", target_spacing=(0.41, 0.41, 1.5)) as builder:
        for n, case in enumerate(cases):
            image = mr_image(seed=n)
            label = label_for(image, seed=n)
            builder.add_label(case, label)
            sources[case] = write_nifti(image, tmp_path / f"{case}_ceT1.nii.gz")
            bright = image.with_array(np.where(label.array == 2, 2000.0, image.array).astype(np.float32))
            builder.add_view("drawn", case, bright, provenance("drawn"))
            builder.add_view("kept", case, image, provenance("kept"))
        builder.finalize()
    real_image = mr_image(seed=5)
    real_label = label_for(real_image, seed=5)
    real = [(write_nifti(real_image, tmp_path / "real_hrT2.nii.gz"), write_nifti(real_label, tmp_path / "real.nii.gz"))]

    columns = pool_contrasts(tmp_path / "pool.h5", sources, real)
    assert set(columns) == {"ceT1", "drawn", "kept", REAL_HRT2}
    assert len(columns["drawn"]["cochlea"]) == 2 and len(columns[REAL_HRT2]["VS"]) == 1
    assert columns["kept"] == columns["ceT1"]  # the same images on the same labels
    assert min(columns["drawn"]["cochlea"]) > max(columns["kept"]["cochlea"])

    summary = contrast_summary(columns)
    assert summary["drawn"]["cochlea"]["median"] == pytest.approx(float(np.median(columns["drawn"]["cochlea"])))
    table = contrast_table(summary).splitlines()
    assert table[0] == f"| structure | ceT1 | drawn | kept | {REAL_HRT2} |"
    cochlea = summary["drawn"]["cochlea"]
    assert f"{cochlea['median']:+.2f} ({cochlea['min']:+.2f}..{cochlea['max']:+.2f})" in table[3]
    assert table[3].startswith("| cochlea |")
