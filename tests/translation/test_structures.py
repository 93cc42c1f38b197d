"""The grey-tumour edit of a labelled ceT1 before translation (vstk.translation.structures)."""

from __future__ import annotations

import numpy as np
import pytest

from vstk.labels import COCHLEA, VS
from vstk.translation.data import head_mask
from vstk.translation.structures import MIN_SCALE, grey_tumour, tumour_scale
from vstk.volume import Volume


def head_with_tumour(tumour_level: float = 300.0, spacing=(0.5, 0.5, 1.0)) -> tuple[Volume, Volume]:
    """A noisy soft-tissue head (about 100) in air, an enhancing textured tumour and a cochlea."""
    rng = np.random.default_rng(3)
    z, y, x = np.indices((12, 64, 64))
    image = np.where((y - 32) ** 2 + (x - 32) ** 2 < 28 ** 2, 100.0, 2.0) + rng.normal(0, 3, z.shape)
    label = np.zeros(z.shape, np.uint8)
    tumour = ((y - 30) ** 2 + (x - 40) ** 2 < 36) & (np.abs(z - 6) <= 2)
    label[tumour] = VS
    label[(np.abs(y - 30) <= 1) & (np.abs(x - 20) <= 1) & (np.abs(z - 6) <= 1)] = COCHLEA
    image[tumour] = tumour_level * rng.uniform(0.8, 1.2, int(tumour.sum()))
    volume = Volume(np.abs(image).astype(np.float32), spacing, (0.0, 0.0, 0.0))
    return volume, volume.with_array(label)


def test_the_tumour_is_brought_to_the_soft_tissue_level_with_its_texture_kept():
    image, label = head_with_tumour()
    tumour = label.array == VS
    out = grey_tumour(image, label)
    rest = image.array[~tumour]
    level = float(np.median(rest[head_mask(rest)]))
    assert abs(float(np.median(out.array[tumour])) - level) < 0.02 * level  # was 3 times brighter
    ratio = out.array[tumour] / image.array[tumour]
    assert np.allclose(ratio, ratio[0], rtol=1e-5)  # one factor for every voxel: the texture stays
    assert 0.3 < ratio[0] < 0.37
    # the soft edge reaches a millimetre (2 voxels in-plane, 1 across); beyond it, and on the
    # cochlea, nothing changes
    from scipy import ndimage

    near = ndimage.binary_dilation(tumour, structure=np.ones((3, 5, 5), bool))
    assert np.array_equal(out.array[~near], image.array[~near])
    assert np.array_equal(out.array[label.array == COCHLEA], image.array[label.array == COCHLEA])
    edge = near & ~tumour
    assert (out.array[edge] <= image.array[edge]).all() and (out.array[edge] < image.array[edge]).any()
    assert out.spacing == image.spacing and out.origin == image.origin


def test_a_tumour_no_brighter_than_the_head_and_a_label_without_one_are_left_alone():
    image, label = head_with_tumour(tumour_level=80.0)
    assert tumour_scale(image.array, label.array == VS) == 1.0
    assert grey_tumour(image, label) is image
    no_tumour = label.with_array(np.where(label.array == VS, 0, label.array).astype(np.uint8))
    assert grey_tumour(image, no_tumour) is image


def test_the_scale_has_a_floor_and_can_be_given():
    image, label = head_with_tumour(tumour_level=5000.0)
    assert tumour_scale(image.array, label.array == VS) == MIN_SCALE
    out = grey_tumour(image, label, scale=0.5)
    tumour = label.array == VS
    assert np.allclose(out.array[tumour], 0.5 * image.array[tumour])


def test_a_label_off_the_image_grid_is_refused():
    image, label = head_with_tumour()
    with pytest.raises(ValueError, match="label shape"):
        grey_tumour(image, Volume(label.array[:, :32].copy(), label.spacing, label.origin))
