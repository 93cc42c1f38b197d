"""Export to an nnU-Net v2 raw dataset, checked by nnU-Net's own integrity check."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pool_helpers import CASES, TARGETS, VIEWS, build_pool, view_image
from vstk.errors import InputError, PoolError
from vstk.pool import Pool, export_nnunet
from vstk.volume import read_nifti


@pytest.fixture(scope="module")
def pool_path(tmp_path_factory):
    return build_pool(tmp_path_factory.mktemp("pool") / "pool.h5", shape=(8, 40, 48))


def test_export_is_a_valid_nnunet_raw_dataset(tmp_path, pool_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    folder = export_nnunet(pool_path, tmp_path / "nnUNet_raw", 501, name="vstkPool", pseudo_round=1)
    assert folder == tmp_path / "nnUNet_raw" / "Dataset501_vstkPool"
    spec = json.loads((folder / "dataset.json").read_text())
    assert spec["channel_names"] == {"0": "hrT2"}
    assert spec["labels"] == {"background": 0, "VS": 1, "cochlea": 2}
    assert spec["file_ending"] == ".nii.gz"
    assert spec["numTraining"] == len(VIEWS) * len(CASES) + len(TARGETS)
    images = sorted(p.name for p in (folder / "imagesTr").iterdir())
    labels = sorted(p.name for p in (folder / "labelsTr").iterdir())
    assert len(images) == len(labels) == spec["numTraining"]
    assert f"cyclegan__{CASES[0]}_0000.nii.gz" in images and f"qsattn__{CASES[0]}.nii.gz" in labels
    assert f"pseudo_r1__{TARGETS[0]}_0000.nii.gz" in images
    verify_dataset_integrity(str(folder), num_processes=1)  # raises on any problem

    image = read_nifti(folder / "imagesTr" / f"qsattn__{CASES[1]}_0000.nii.gz")
    label = read_nifti(folder / "labelsTr" / f"qsattn__{CASES[1]}.nii.gz")
    expected = view_image("qsattn", CASES[1], (8, 40, 48))
    np.testing.assert_array_equal(image.array, expected.array)
    assert image.same_grid(expected) and label.same_grid(expected)
    assert label.array.dtype == np.uint8
    with Pool(pool_path) as pool:
        np.testing.assert_array_equal(label.array, pool.read_label(CASES[1]).array)


def test_export_selected_views_only_and_refuses_to_clobber(tmp_path, pool_path):
    raw = tmp_path / "raw"
    folder = export_nnunet(pool_path, raw, 7, name="onlyCycle", views="cyclegan")
    assert folder.name == "Dataset007_onlyCycle"
    spec = json.loads((folder / "dataset.json").read_text())
    assert spec["numTraining"] == len(CASES)
    assert all(p.name.startswith("cyclegan__") for p in (folder / "labelsTr").iterdir())
    with pytest.raises(InputError, match="already exists"):
        export_nnunet(pool_path, raw, 7, name="onlyCycle")
    with pytest.raises(InputError, match="dataset id 7 is already used by Dataset007_onlyCycle"):
        export_nnunet(pool_path, raw, 7, name="other")
    again = export_nnunet(pool_path, raw, 7, name="onlyCycle", views=["qsattn"], overwrite=True)
    assert all(p.name.startswith("qsattn__") for p in (again / "labelsTr").iterdir())
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset007_onlyCycle"]  # no temporaries left
    with pytest.raises(PoolError, match="view\\(s\\) cut not in the pool"):
        export_nnunet(pool_path, raw, 8, views="cut")
