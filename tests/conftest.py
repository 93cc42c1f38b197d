"""Shared fixtures: small real NIfTI volumes written through SimpleITK."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vstk.volume import Volume, write_nifti


def make_image(shape=(12, 40, 48), spacing=(0.5, 0.5, 1.5), origin=(-10.0, 5.0, 3.0), seed=0,
               direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> Volume:
    """A smooth non-constant float32 image [z, y, x] with a bright ball in the middle."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    array = 100 + 400 * np.exp(-(x**2 + y**2 + z**2) * 3) + rng.normal(0, 1, shape)
    return Volume(array.astype(np.float32), spacing, origin, direction)


def make_label(image: Volume) -> Volume:
    """A label on ``image``'s grid: a VS blob (1) and two small cochlea blobs (2)."""
    z, y, x = np.indices(image.shape)
    cz, cy, cx = (np.asarray(image.shape) - 1) / 2
    label = np.zeros(image.shape, dtype=np.uint8)
    label[((x - cx) ** 2 + (y - cy) ** 2) < 25] = 1
    label[(np.abs(x - 5) <= 1) & (np.abs(y - 5) <= 1) & (np.abs(z - cz) <= 1)] = 2
    label[(np.abs(x - image.shape[2] + 6) <= 1) & (np.abs(y - 5) <= 1) & (np.abs(z - cz) <= 1)] = 2
    return image.with_array(label)


@pytest.fixture
def crossmoda_folder(tmp_path: Path) -> Path:
    """A CrossMoDA 2022 training folder: two labelled ceT1 cases, two hrT2 cases."""
    for i, site in ((1, "ldn"), (2, "etz")):
        image = make_image(seed=i)
        write_nifti(image, tmp_path / f"crossmoda2022_{site}_{i}_ceT1.nii.gz")
        write_nifti(make_label(image), tmp_path / f"crossmoda2022_{site}_{i}_Label.nii.gz")
    for i, site in ((3, "ldn"), (4, "etz")):
        write_nifti(make_image(shape=(16, 36, 36), spacing=(0.6, 0.6, 1.0), seed=i),
                    tmp_path / f"crossmoda2022_{site}_{i}_hrT2.nii.gz")
    return tmp_path
