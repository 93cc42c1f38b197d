"""Error messages print values as a person writes them (vstk.errors.format_value), not as numpy reprs."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from vstk.crossmoda import discover, load_case
from vstk.errors import InputError, PoolError, format_value
from vstk.labels import to_vstk_labels
from vstk.pool import schema


def _write(array: np.ndarray, origin: tuple[float, float, float], path) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.41, 0.41, 1.5))
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))


def test_a_label_off_its_image_grid_names_both_origins_in_millimetres(tmp_path):
    image = np.zeros((4, 6, 5), dtype=np.float32)
    image[1:3, 2:4, 1:4] = 100.0
    label = (image > 0).astype(np.uint8)
    _write(image, (-34.925, -24.925, 0.0), tmp_path / "crossmoda2022_ldn_1_ceT1.nii.gz")
    _write(label, (-34.525, -24.925, 0.0), tmp_path / "crossmoda2022_ldn_1_Label.nii.gz")
    _write(image, (-34.925, -24.925, 0.0), tmp_path / "crossmoda2022_ldn_2_hrT2.nii.gz")
    case = discover(tmp_path).source[0]
    with pytest.raises(InputError) as info:
        load_case(case, "ceT1")
    message = str(info.value)
    # NIfTI stores the origin as float32 (-34.92499923706055): shown rounded, as it was written
    assert ("label grid does not match its image crossmoda2022_ldn_1_ceT1.nii.gz: "
            "origin (-34.525, -24.925, 0.0) vs (-34.925, -24.925, 0.0)") in message
    assert "np." not in message and "float64" not in message


def test_a_label_of_another_size_names_both_sizes_in_x_y_z(tmp_path):
    image = np.zeros((4, 6, 5), dtype=np.float32)
    image[1:3, 2:4, 1:4] = 100.0
    _write(image, (0.0, 0.0, 0.0), tmp_path / "p_ceT1.nii.gz")
    _write(np.zeros((4, 6, 7), dtype=np.uint8), (0.0, 0.0, 0.0), tmp_path / "p_Label.nii.gz")
    _write(image, (0.0, 0.0, 0.0), tmp_path / "q_hrT2.nii.gz")
    with pytest.raises(InputError, match=r"label grid does not match its image p_ceT1\.nii\.gz: "
                                         r"size \(7, 6, 4\) vs \(5, 6, 4\) \(x, y, z\)"):
        load_case(discover(tmp_path).source[0], "ceT1")


def test_stored_pool_grids_differ_in_plain_numbers():
    a = {"spacing": np.array([0.41, 0.41, 1.5]), "origin": np.array([-34.925, -24.925, 0.0]),
         "direction": np.eye(3).ravel()}
    b = dict(a, origin=np.array([-34.92499923706055, -20.0, 0.0], dtype=np.float32))
    assert schema.grid_mismatch(a, (4, 6, 5), b, (4, 6, 5)) == "origin (-34.925, -24.925, 0.0) vs (-34.925, -20.0, 0.0)"
    assert schema.grid_mismatch(a, (4, 6, 5), a, (4, 6, 7)) == "size (5, 6, 4) vs (7, 6, 4) (x, y, z)"


def test_an_image_given_as_a_label_lists_a_few_of_its_values_and_how_many():
    with pytest.raises(InputError) as info:
        to_vstk_labels(np.arange(4096, dtype=np.int16).reshape(16, 16, 16))
    shown = "label values [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, ... 4093 in all] outside [0, 1, 2]"
    assert shown in str(info.value)


def test_numpy_values_in_pool_inputs_read_as_numbers():
    with pytest.raises(InputError, match=r"target spacing \[0.41, 0.0, 1.5\] is not three positive values"):
        schema.check_target_spacing(np.array([0.41, 0.0, 1.5]))
    with pytest.raises(InputError, match=r"confidence 1.25 of pseudo label round 1, case 'a' is not in \[0, 1\]"):
        schema.check_confidence(np.float32(1.25), case_id="a", round_index=1)


@pytest.mark.parametrize("value, text", [
    ((np.float64(-34.925), np.float64(-24.925), np.float64(0.0)), "(-34.925, -24.925, 0.0)"),
    (np.float32(0.41), "0.41"),
    (0.41000000000000003, "0.41"),
    (np.int64(7), "7"),
    (-0.00001, "-1e-05"),
    (-0.0, "0.0"),
    (float("nan"), "nan"),
    (np.array([[1.0, 0.0], [0.0, 1.0]]), "[[1.0, 0.0], [0.0, 1.0]]"),
    ([np.uint8(3)], "[3]"),
    ((5,), "(5,)"),
    ({"spacing": np.float64(1.5)}, "{spacing: 1.5}"),
    ({2, 1}, "{1, 2}"),
    ("ceT1", "ceT1"),
    (np.bool_(True), "True"),
])
def test_format_value_writes_numbers_as_a_person_would(value, text):
    assert format_value(value) == text


def test_pool_spacing_clash_reads_in_plain_numbers(tmp_path):
    from vstk.pool import PoolBuilder
    from vstk.volume import Volume

    path = tmp_path / "pool.h5"
    with PoolBuilder(path, target_spacing=(0.5, 0.5, 1.0)) as builder:
        builder.add_label("a", Volume(np.zeros((2, 4, 4), dtype=np.uint8)))
        builder.finalize()
    with pytest.raises(PoolError, match=r"target spacing \(0.41, 0.41, 1.5\) differs from the existing pool's "
                                        r"\(0.5, 0.5, 1.0\)"):
        PoolBuilder(path, target_spacing=np.array([0.41, 0.41, 1.5]))
