from __future__ import annotations

import numpy as np
import pytest

from vstk.geometry import SliceGeometry, from_slices, resample, slice_frame, to_slices, volume_from_slices
from vstk.volume import Volume

from conftest import make_image, make_label

OBLIQUE = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # in-plane rotation by 90 degrees


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), OBLIQUE])
def test_label_through_slices_and_back_is_identical(direction):
    image = make_image(shape=(10, 50, 60), spacing=(0.5, 0.5, 1.5), direction=direction)
    label = make_label(image)
    geometry = SliceGeometry(size=64, spacing=(0.41, 0.41), crop=80)  # pixels 0.5125 mm... no coarser than
    geometry = SliceGeometry(size=64, spacing=(0.41, 0.41), crop=76)  # source: 0.487 mm < 0.5 mm
    frame = slice_frame(image, geometry)
    slices = to_slices(label, frame, is_label=True)
    assert slices.shape == (10, 64, 64) and slices.dtype == np.uint8
    back = volume_from_slices(slices, frame, is_label=True)
    assert back.same_grid(label)
    np.testing.assert_array_equal(back.array, label.array)
    for value in (1, 2):
        assert dice(back.array == value, label.array == value) == 1.0


def test_image_through_slices_and_back_is_within_interpolation_error():
    image = make_image(shape=(8, 64, 64), spacing=(0.5, 0.5, 1.5))
    frame = slice_frame(image, SliceGeometry(size=96, spacing=(0.41, 0.41), crop=96))
    back = volume_from_slices(to_slices(image, frame), frame)
    interior = (slice(None), slice(4, -4), slice(4, -4))
    error = np.abs(back.array[interior] - image.array[interior])
    # smooth 100..500 image with unit noise: linear interpolation twice smooths the noise only
    assert error.mean() < 1.0 and error.max() < 6.0


def test_slices_are_centred_on_the_requested_point():
    image = make_image(shape=(6, 40, 40), spacing=(1.0, 1.0, 2.0))
    array = np.zeros(image.shape, dtype=np.uint8)
    array[:, 10, 30] = 1  # a line along z at x=30, y=10
    marker = image.with_array(array)
    centre = marker.index_to_physical((0, 10, 30))
    frame = slice_frame(marker, SliceGeometry(size=9, spacing=(1.0, 1.0)), centre=centre)
    slices = to_slices(marker, frame, is_label=True)
    assert slices[:, 4, 4].tolist() == [1] * 6 and slices.sum() == 6


def test_slabs_match_the_whole_stack():
    image = make_image(shape=(9, 32, 32))
    frame = slice_frame(image, SliceGeometry(size=24, spacing=(0.6, 0.6), crop=30))
    whole = to_slices(image, frame)
    parts = np.concatenate([to_slices(image, frame, start=s, stop=min(s + 4, 9)) for s in range(0, 9, 4)])
    np.testing.assert_allclose(parts, whole, atol=1e-4)
    back_whole = from_slices(whole, frame)
    back_parts = np.concatenate([from_slices(whole[s:s + 4], frame, start=s) for s in range(0, 9, 4)])
    np.testing.assert_allclose(back_parts, back_whole, atol=1e-4)


def test_resample_keeps_extent_centre_and_label_values():
    image = make_image(shape=(20, 41, 50), spacing=(0.5, 0.5, 1.0))
    out = resample(image, (0.41, 0.41, 1.5))
    assert out.spacing == pytest.approx((0.41, 0.41, 1.5))
    assert out.size_xyz == (61, 50, 13)
    np.testing.assert_allclose(out.centre, image.centre, atol=1e-6)
    label = resample(make_label(image), (0.41, 0.41, 1.5), is_label=True)
    assert label.array.dtype == np.uint8 and set(np.unique(label.array)) == {0, 1, 2}


def test_slice_geometry_rejects_bad_values():
    with pytest.raises(ValueError, match="spacing"):
        SliceGeometry(spacing=(0.0, 0.4))
    with pytest.raises(ValueError, match="size"):
        SliceGeometry(size=2)


def test_pixel_spacing_reflects_crop_and_resize():
    assert SliceGeometry(size=256, spacing=(0.41, 0.41), crop=512).pixel_spacing == pytest.approx((0.82, 0.82))
    assert isinstance(Volume, type)
