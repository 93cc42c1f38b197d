"""Small synthetic hrT2-like cases for the nnU-Net tests and their SIGKILL training driver."""

from __future__ import annotations

import numpy as np

from vstk.protocols import TrainingCase
from vstk.volume import Volume

SHAPE = (24, 64, 64)  # voxels, [z, y, x]
SPACING = (0.6, 0.6, 1.5)  # mm, (x, y, z)


def synthetic_case(seed: int, shape: tuple[int, int, int] = SHAPE,
                   spacing: tuple[float, float, float] = SPACING,
                   origin: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> tuple[Volume, Volume]:
    """An hrT2-like float32 image ``[z, y, x]`` and its uint8 label on the same grid.

    A smooth background (about 100) with Gaussian noise (sd 25), a bright ellipsoidal "VS"
    (label 1, semi-axes 4-6 mm, +180) at a random place, and two small bright "cochleae"
    (label 2, 1.6 x 1.6 x 2 mm, +260) near the left and right borders. Shapes are drawn in
    mm, so the same seed gives the same anatomy on any grid covering it.
    """
    rng = np.random.default_rng(seed)
    extent = np.asarray(shape[::-1]) * np.asarray(spacing)  # mm, (x, y, z)
    # voxel centres in mm along each array axis
    z, y, x = (np.indices(shape, dtype=np.float32) * np.asarray(spacing[::-1], np.float32)[:, None, None, None])
    image = 100.0 + 20.0 * np.sin(x / 7.0) + rng.normal(0.0, 25.0, shape)
    label = np.zeros(shape, np.uint8)
    centre = rng.uniform(0.3, 0.7, 3) * extent
    radii = rng.uniform(4.0, 6.0, 3)
    vs = (((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2
          + ((z - centre[2]) / radii[2]) ** 2) <= 1.0
    image[vs] += 180.0
    label[vs] = 1
    for side in (0.1, 0.9):
        c = np.array([side * extent[0] + rng.uniform(-1.0, 1.0), rng.uniform(0.1, 0.9) * extent[1],
                      rng.uniform(0.35, 0.65) * extent[2]])
        cochlea = (((x - c[0]) / 1.6) ** 2 + ((y - c[1]) / 1.6) ** 2 + ((z - c[2]) / 2.0) ** 2 <= 1.0) & (label == 0)
        image[cochlea] += 260.0
        label[cochlea] = 2
    image_volume = Volume(image.astype(np.float32), spacing, origin)
    return image_volume, image_volume.with_array(label)


def training_cases(seeds, prefix: str = "case") -> list[TrainingCase]:
    """``TrainingCase`` objects ``{prefix}{seed}`` from :func:`synthetic_case`."""
    return [TrainingCase(f"{prefix}{seed}", *synthetic_case(seed)) for seed in seeds]


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice overlap of two boolean masks (1.0 when both are empty)."""
    total = int(prediction.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((prediction & truth).sum()) / total
