from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from vstk.errors import InputError
from vstk.volume import Volume, read_nifti, write_nifti

from conftest import make_image


def test_nifti_round_trip_keeps_voxels_and_geometry(tmp_path):
    direction = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    volume = make_image(direction=direction)
    path = write_nifti(volume, tmp_path / "a.nii.gz")
    back = read_nifti(path)
    np.testing.assert_array_equal(back.array, volume.array)
    assert back.same_grid(volume)
    assert back.direction == pytest.approx(direction)
    assert not list(tmp_path.glob(".a.nii.gz*")), "temporary file left behind"


def test_array_is_z_y_x_and_geometry_is_x_y_z():
    image = sitk.Image(30, 20, 10, sitk.sitkFloat32)  # x, y, z
    image.SetSpacing((0.4, 0.5, 1.5))
    volume = Volume.from_sitk(image)
    assert volume.shape == (10, 20, 30)
    assert volume.size_xyz == (30, 20, 10)
    assert volume.spacing == (0.4, 0.5, 1.5)


def test_index_and_physical_points_are_inverse():
    volume = make_image(direction=(0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    index = np.array([3.0, 7.5, 11.25])
    np.testing.assert_allclose(volume.physical_to_index(volume.index_to_physical(index)), index, atol=1e-9)
    sitk_point = volume.to_sitk().TransformContinuousIndexToPhysicalPoint(tuple(index[::-1]))
    np.testing.assert_allclose(volume.index_to_physical(index), sitk_point, atol=1e-9)


def test_truncated_gzip_is_reported_with_the_file_name(tmp_path):
    path = write_nifti(make_image(), tmp_path / "full.nii.gz")
    data = path.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.nii\.gz.*truncated"):
        read_nifti(cut)


def test_garbage_file_is_not_a_readable_nifti(tmp_path):
    bad = tmp_path / "bad.nii"
    bad.write_bytes(b"this is not an image" * 20)
    with pytest.raises(InputError, match=r"bad\.nii: not a readable NIfTI"):
        read_nifti(bad)


def test_2d_image_is_rejected(tmp_path):
    path = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkFloat32), str(path))
    with pytest.raises(InputError, match="expected a 3D single-channel image"):
        read_nifti(path)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_nifti(tmp_path / "nope.nii.gz")


def test_gzip_helper_sees_a_complete_file_as_complete(tmp_path):
    path = write_nifti(make_image(), tmp_path / "ok.nii.gz")
    with gzip.open(path) as handle:
        assert len(handle.read()) > 352  # NIfTI header plus voxels
