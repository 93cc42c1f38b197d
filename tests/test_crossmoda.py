from __future__ import annotations

import shutil

import numpy as np
import pytest

from vstk.crossmoda import discover, load_case, read_image, read_label
from vstk.errors import InputError
from vstk.labels import to_vstk_labels
from vstk.volume import Volume, write_nifti

from conftest import make_image, make_label


def test_crossmoda2022_folder_is_discovered(crossmoda_folder):
    data = discover(crossmoda_folder)
    assert data.layout == "crossmoda2022"
    assert [c.case_id for c in data.source] == ["crossmoda2022_etz_2", "crossmoda2022_ldn_1"]
    assert [c.site for c in data.source] == ["etz", "ldn"]
    assert all(c.label is not None for c in data.source)
    assert [c.case_id for c in data.target] == ["crossmoda2022_etz_4", "crossmoda2022_ldn_3"]
    image, label = load_case(data.source[0], "ceT1")
    assert image.array.dtype == np.float32 and label.array.dtype == np.uint8
    assert set(np.unique(label.array)) == {0, 1, 2}


def test_crossmoda2021_and_plain_layouts(tmp_path):
    image = make_image()
    write_nifti(image, tmp_path / "a" / "crossmoda_7_ceT1.nii.gz")
    write_nifti(make_label(image), tmp_path / "a" / "crossmoda_7_Label.nii.gz")
    assert discover(tmp_path / "a").layout == "crossmoda2021"
    for sub, name in (("ceT1", "p1.nii.gz"), ("labels", "p1.nii.gz"), ("hrT2", "p2.nii")):
        write_nifti(make_label(image) if sub == "labels" else image, tmp_path / "b" / sub / name)
    data = discover(tmp_path / "b")
    assert data.layout == "plain"
    assert [c.case_id for c in data.source] == ["p1"] and [c.case_id for c in data.target] == ["p2"]


def test_ceT1_without_label_is_an_error(crossmoda_folder):
    (crossmoda_folder / "crossmoda2022_ldn_1_Label.nii.gz").unlink()
    with pytest.raises(InputError, match=r"crossmoda2022_ldn_1_ceT1\.nii\.gz: ceT1 of case .* has no label"):
        discover(crossmoda_folder)


def test_required_contrasts_are_checked(tmp_path, crossmoda_folder):
    for path in crossmoda_folder.glob("*hrT2*"):
        path.unlink()
    with pytest.raises(InputError, match=r"no hrT2 image"):
        discover(crossmoda_folder, require_target=True)


def test_label_grid_must_match_image(crossmoda_folder):
    image = make_image(seed=1)
    shifted = Volume(make_label(image).array, image.spacing, (0.0, 0.0, 0.0), image.direction)
    write_nifti(shifted, crossmoda_folder / "crossmoda2022_ldn_1_Label.nii.gz")
    case = [c for c in discover(crossmoda_folder).source if c.case_id.endswith("ldn_1")][0]
    with pytest.raises(InputError, match=r"_Label\.nii\.gz: label grid does not match its image .*origin"):
        load_case(case, "ceT1")


def test_label_values_outside_scheme_are_rejected_with_the_2023_hint(tmp_path):
    label = make_label(make_image())
    array = label.array.copy()
    array[0, 0, 0] = 3
    path = write_nifti(label.with_array(array), tmp_path / "x_Label.nii.gz")
    with pytest.raises(InputError, match=r"x_Label\.nii\.gz: label values \[3\].*crossmoda2023"):
        read_label(path)
    mapped = read_label(path, scheme="crossmoda2023").array
    assert mapped[0, 0, 0] == 2 and set(np.unique(mapped)) <= {0, 1, 2}


def test_crossmoda2023_scheme_maps_both_tumour_parts_to_vs():
    raw = np.array([0, 1, 2, 3], dtype=np.int16).reshape(1, 1, 4)
    np.testing.assert_array_equal(to_vstk_labels(raw, scheme="crossmoda2023").ravel(), [0, 1, 1, 2])


def test_non_integer_label_is_rejected(tmp_path):
    image = make_image()
    path = write_nifti(image, tmp_path / "y_Label.nii.gz")  # an image saved as a label
    with pytest.raises(InputError, match="non-integer"):
        read_label(path)


def test_nan_and_empty_images_are_rejected(tmp_path):
    image = make_image()
    array = image.array.copy()
    array[2, 3, 4] = np.nan
    nan_path = write_nifti(image.with_array(array), tmp_path / "nan_hrT2.nii.gz")
    with pytest.raises(InputError, match=r"nan_hrT2\.nii\.gz: image contains 1 NaN/Inf"):
        read_image(nan_path)
    empty_path = write_nifti(image.with_array(np.zeros_like(array)), tmp_path / "empty_hrT2.nii.gz")
    with pytest.raises(InputError, match=r"empty_hrT2\.nii\.gz: image is empty"):
        read_image(empty_path)


def test_test_labels_must_match_test_images(tmp_path_factory, crossmoda_folder):
    labels = tmp_path_factory.mktemp("test_labels")
    image = make_image(shape=(16, 36, 36), spacing=(0.6, 0.6, 1.0), seed=3)
    write_nifti(make_label(image), labels / "crossmoda2022_ldn_3_Label.nii.gz")
    data = discover(crossmoda_folder, labels=labels)
    assert [c.label is not None for c in data.target] == [False, True]
    write_nifti(make_label(image), labels / "crossmoda2022_ldn_99_Label.nii.gz")
    with pytest.raises(InputError, match=r"ldn_99_Label\.nii\.gz: label .* has no hrT2 image"):
        discover(crossmoda_folder, labels=labels)


def test_label_without_image_is_an_error(crossmoda_folder):
    shutil.copy(crossmoda_folder / "crossmoda2022_ldn_1_Label.nii.gz",
                crossmoda_folder / "crossmoda2022_ldn_5_Label.nii.gz")
    with pytest.raises(InputError, match="has no ceT1 or hrT2 image"):
        discover(crossmoda_folder)
