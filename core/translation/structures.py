"""Label-guided edits of a labelled ceT1 before it is translated.

The VS enhances on ceT1 (bright) and is grey on hrT2, darker than the fluid around it. An
unpaired translator has nothing that tells it a bright blob in the cerebellopontine angle
is a tumour and not a vessel, and at a CPU budget it keeps it bright. The ceT1 labels are
known, so the pool can be translated from a ceT1 whose tumour has been brought down to the
level of the head's soft tissue first: the translator then renders it as it renders brain
tissue, grey next to bright fluid, with the tumour's own texture kept. The label itself is
not changed; only the image handed to the translator is.
"""

from __future__ import annotations

import numpy as np

from ..labels import VS
from ..volume import Volume
from .data import head_mask

#: The tumour is scaled down at most to this share of its intensity.
MIN_SCALE = 0.2
#: Width (mm, Gaussian sigma, cut at two sigma) of the soft edge around the label: the voxels
#: just outside the contour carry part of the enhancement (partial volume) and are scaled in
#: proportion.
EDGE_SIGMA_MM = 0.5


def tumour_scale(image: np.ndarray, tumour: np.ndarray) -> float:
    """The factor that brings the median of the tumour to the median of the other head voxels
    (those above 10% of their 99th percentile, as :func:`vstk.translation.data.head_mask`;
    1 where the tumour is not brighter; at least :data:`MIN_SCALE`)."""
    rest = image[~tumour]
    head = rest[head_mask(rest)]
    level = float(np.median(head)) if head.size else 0.0
    inside = float(np.median(image[tumour]))
    if inside <= level or inside <= 0:
        return 1.0
    return max(MIN_SCALE, level / inside)


def grey_tumour(image: Volume, label: Volume, *, scale: float | None = None) -> Volume:
    """``image`` (a ceT1) with its VS (``label == VS``) scaled to the head's median intensity
    (or by ``scale``), its texture kept and its edge softened over :data:`EDGE_SIGMA_MM`;
    ``image`` itself when the label holds no VS. ``label`` must lie on ``image``'s grid."""
    from scipy import ndimage

    if label.shape != image.shape:
        raise ValueError(f"label shape {label.shape} differs from the image's {image.shape}")
    tumour = label.array == VS
    if not tumour.any():
        return image
    array = image.array.astype(np.float32, copy=False)
    factor = tumour_scale(array, tumour) if scale is None else float(scale)
    if factor >= 1.0:
        return image
    sigma = [EDGE_SIGMA_MM / s for s in image.spacing[::-1]]  # spacing is x, y, z; arrays z, y, x
    weight = np.maximum(ndimage.gaussian_filter(tumour.astype(np.float32), sigma, truncate=2.0), tumour)
    return image.with_array(array * (1.0 - weight * (1.0 - factor)))
