from __future__ import annotations

import numpy as np

from vstk.roi import DEFAULT_OFFSET_MM, Box, EarRule, box_around, crop, ear_boxes, labels_outside, paste
from vstk.volume import Volume

from conftest import make_image


def test_crop_keeps_physical_positions_and_paste_restores_the_voxels():
    image = make_image(shape=(20, 60, 80), spacing=(0.5, 0.5, 1.5), direction=(0, -1, 0, 1, 0, 0, 0, 0, 1))
    box = Box((3, 10, 20), (8, 30, 40))
    part = crop(image, box)
    assert part.shape == (8, 30, 40)
    np.testing.assert_allclose(part.index_to_physical((2, 5, 7)), image.index_to_physical((5, 15, 27)))
    restored = paste(part.array, box, image.shape)
    np.testing.assert_array_equal(restored[3:11, 10:40, 20:60], image.array[3:11, 10:40, 20:60])
    assert restored[0].sum() == 0


def test_box_leaving_the_grid_is_padded():
    image = make_image(shape=(6, 10, 10))
    box = Box((-2, -3, 5), (4, 6, 10))
    part = crop(image, box, fill=-1)
    assert part.shape == (4, 6, 10)
    assert (part.array[:2] == -1).all() and (part.array[:, :3] == -1).all()
    np.testing.assert_array_equal(part.array[2:, 3:, :5], image.array[:2, :3, 5:])


def test_ear_boxes_sit_left_and_right_of_the_centre():
    image = Volume(np.zeros((40, 288, 288), np.float32), (0.41, 0.41, 1.5), (-58.8, -58.8, -29.3))
    left, right = EarRule().centres(image)
    x, y, z = DEFAULT_OFFSET_MM
    np.testing.assert_allclose(left - image.centre, [-x, y, z], atol=1e-6)
    np.testing.assert_allclose(right - image.centre, [x, y, z], atol=1e-6)
    boxes = ear_boxes(image, EarRule(size_mm=(48, 48, 30)))
    assert boxes[0].size == (20, 117, 117)
    assert boxes[0].start[2] < 144 < boxes[1].start[2]


def test_box_around_is_centred():
    image = make_image(shape=(11, 21, 31), spacing=(1.0, 1.0, 1.0))
    box = box_around(image, image.centre, (11, 7, 5))
    assert box == Box((3, 7, 10), (5, 7, 11))


def test_labels_outside_counts_the_voxels_no_box_holds_and_how_far_they_lie():
    label = np.zeros((10, 10, 10), dtype=np.uint8)
    label[5, 5, 5] = 1  # inside the box
    label[5, 5, 9] = 1  # 3 voxels past the box's last x index (6): 3 * 0.5 mm
    label[1, 1, 1] = 2  # 3 voxels before its start on every axis: (3 * 2, 3 * 0.5, 3 * 0.5) mm
    volume = Volume(label, (0.5, 0.5, 2.0), (0.0, 0.0, 0.0))
    vs, cochlea = labels_outside(volume, [Box((4, 4, 4), (3, 3, 3))])
    assert (vs.value, vs.voxels, vs.total, vs.farthest_mm) == (1, 1, 2, 1.5)
    assert (cochlea.value, cochlea.voxels, cochlea.total) == (2, 1, 1)
    assert np.isclose(cochlea.farthest_mm, np.sqrt(6.0 ** 2 + 1.5 ** 2 + 1.5 ** 2))
    assert cochlea.describe() == "1 of 1 cochlea voxels lie outside the ear boxes, up to 6.4 mm"
    assert labels_outside(volume, [Box((0, 0, 0), (10, 10, 10))]) == []  # one box holding everything
