"""A phantom population: what every subject of one data set shares, drawn per seed.

The fixed phantom (``PhantomConfig.vary`` False) renders every seed with one tissue contrast
table, one pair of grids per site and one set of anatomy distributions; only the subjects
differ. A drawn population changes those too, once per data set, so that settings chosen on
the phantoms of some seeds can be judged on phantoms that differ from them the way another
hospital's data differ.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .anatomy import AnatomyParameters, Tissue
from .rendering import CONTRASTS, SITES, AcquisitionProtocol, mean_intensity, site_protocols

#: The third entry of the population's seed sequence ``[seed, 0, POPULATION_STREAM]``; subject
#: ids start at 1, so it is no subject's stream.
POPULATION_STREAM = 99

# Ranges of a drawn population; the Population docstring says why.
_CONTRAST_LOG_SIGMA = 0.12
_CONTRAST_FACTOR = (0.8, 1.25)
_HRT2_COCHLEA_OF_CSF = (0.88, 1.05)
_HRT2_VS_OF_CSF = (0.3, 0.6)
_HRT2_CYST_OF_CSF = (0.65, 0.85)
_CET1_VS_OF_BRAIN = (1.35, 2.0)
_VS_TEXTURE_GAIN = ((0.06, 0.15), (0.14, 0.32))  # ceT1, hrT2
_NOISE_FACTOR = (0.6, 1.6)
_BIAS_FACTOR = (0.5, 1.5)
_INPLANE_MM = {"ceT1": (0.4, 0.6), "hrT2": (0.4, 0.7)}
_SLICE_MM = {"ceT1": (1.0, 1.5), "hrT2": (0.5, 1.0)}
_FOV_INPLANE_MM = (100.0, 140.0)
_FOV_Z_MM = (45.0, 70.0)
_INTRAMEATAL_FRACTION = (0.2, 0.5)
_INTRAMEATAL_SCALE = (0.85, 1.15)
_EXTRAMEATAL_LOW_MM = (8.0, 12.0)
_EXTRAMEATAL_HIGH_MM = (18.0, 22.0)
_COCHLEA_SCALE = (0.85, 1.15)


@dataclasses.dataclass(frozen=True)
class Population:
    """Tissue contrasts, slab protocols and anatomy distributions shared by one data set.

    :meth:`fixed` is the phantom as it always was; :meth:`draw` draws one population per seed
    within what real ceT1 and hrT2 (CISS/FIESTA-like) data show between scanners:

    - contrasts: each tissue's mean intensity per contrast is multiplied by a log-normal
      factor (sigma 0.12, kept within 0.8-1.25), as sequence parameters and coils move
      tissue contrasts by some 10-25 %. What defines the two contrasts is kept, because a
      segmenter relies on it: on hrT2 the fluids are the brightest tissues (cochlea and
      labyrinth 0.88-1.05 of CSF, the same fluid in both), the VS grey at 0.3-0.6 of CSF, a
      tumour cyst 0.65-0.85 of CSF, bone, air and flowing blood dark; on ceT1 the enhancing
      VS is 1.35-2.0 times the brightest brain tissue (grey, white matter, brainstem; 1.75
      in the fixed table) and CSF dark (the factors cannot lift it to grey matter). The VS
      texture gains (ceT1 0.06-0.15, hrT2 0.14-0.32) and factors on
      ``PhantomConfig.noise_fraction`` (0.6-1.6) and ``bias_strength`` (0.5-1.5) vary how
      heterogeneous the tumour and how clean the images are.
    - slab protocols: per site and contrast, in-plane voxels of 0.4-0.6 mm (ceT1) or
      0.4-0.7 mm (hrT2), slices of 1.0-1.5 mm (ceT1, 2D or thick 3D) or 0.5-1.0 mm (hrT2,
      thin 3D), fields of view 100-140 mm in-plane and 45-70 mm in z (sizes rounded to
      whole voxels): clinical slabs around the internal auditory canals. The crossmoda
      geometry draws its grids per case as before.
    - anatomy: 20-50 % intrameatal tumours (the share depends on a hospital's referrals),
      their diameter range scaled by 0.85-1.15, extrameatal tumours from 8-12 mm to
      18-22 mm (the fixed phantom: 9-25 mm; the larger a tumour, the more often it reaches
      past the medial side of the default ear boxes, and a run refuses a training label
      its boxes cut), cochleae scaled by 0.85-1.15 (about the spread of adult cochleae).

    Attributes:
        seed: the data set's seed (None for :meth:`fixed`); the draws come from
            ``SeedSequence([seed, 0, 99])``, a stream of their own, so the subjects' draws
            stay as they are.
        intensity: mean intensity (arbitrary MR units) per tissue in :class:`Tissue` order,
            each ``(ceT1, hrT2)``.
        noise_factor: multiplies ``PhantomConfig.noise_fraction``.
        bias_factor: multiplies ``PhantomConfig.bias_strength``.
        protocols: site -> contrast -> slab protocol at resolution scale 1.
        anatomy: the distributions subjects are drawn from.
    """

    seed: int | None
    intensity: tuple[tuple[float, float], ...]
    noise_factor: float
    bias_factor: float
    protocols: dict[str, dict[str, AcquisitionProtocol]]
    anatomy: AnatomyParameters

    @classmethod
    def fixed(cls) -> "Population":
        """The phantom without ``vary``: the fixed table, the sites' fixed grids, the default anatomy."""
        return cls(seed=None, intensity=tuple((float(ce), float(t2)) for ce, t2 in mean_intensity()),
                   noise_factor=1.0, bias_factor=1.0, protocols={site: site_protocols(site) for site in SITES},
                   anatomy=AnatomyParameters())

    @classmethod
    def draw(cls, seed: int) -> "Population":
        """The population of data set ``seed`` (the same seed, the same population)."""
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0, POPULATION_STREAM]))
        U = rng.uniform
        table = mean_intensity() * np.exp(np.clip(rng.normal(0.0, _CONTRAST_LOG_SIGMA, (len(Tissue), 2)),
                                                  *np.log(_CONTRAST_FACTOR)))
        ce, t2 = CONTRASTS.index("ceT1"), CONTRASTS.index("hrT2")
        fluid = [Tissue.LABYRINTH, Tissue.COCHLEA]
        table[fluid, ce] = table[Tissue.COCHLEA, ce]  # one fluid: the cochlea is part of the labyrinth
        csf = table[Tissue.CSF, t2]
        table[fluid, t2] = csf * U(*_HRT2_COCHLEA_OF_CSF)
        table[Tissue.VS, t2] = csf * U(*_HRT2_VS_OF_CSF)
        table[Tissue.VS_CYST, t2] = csf * U(*_HRT2_CYST_OF_CSF)
        brain = table[[Tissue.GREY, Tissue.WHITE, Tissue.BRAINSTEM], ce].max()
        table[Tissue.VS, ce] = brain * U(*_CET1_VS_OF_BRAIN)
        texture = tuple(round(float(U(*bounds)), 4) for bounds in _VS_TEXTURE_GAIN)
        noise_factor, bias_factor = round(float(U(*_NOISE_FACTOR)), 4), round(float(U(*_BIAS_FACTOR)), 4)
        protocols = {site: {contrast: _draw_protocol(rng, contrast) for contrast in CONTRASTS} for site in SITES}
        intrameatal = float(U(*_INTRAMEATAL_SCALE))
        anatomy = AnatomyParameters(
            intrameatal_fraction=round(float(U(*_INTRAMEATAL_FRACTION)), 4),
            intrameatal_diameter_mm=(round(3.0 * intrameatal, 2), round(6.5 * intrameatal, 2)),
            extrameatal_diameter_mm=(round(float(U(*_EXTRAMEATAL_LOW_MM)), 2),
                                     round(float(U(*_EXTRAMEATAL_HIGH_MM)), 2)),
            cochlea_scale=round(float(U(*_COCHLEA_SCALE)), 4),
            vs_texture_gain=texture,  # type: ignore[arg-type]
        )
        return cls(seed=int(seed), intensity=tuple((round(float(a), 2), round(float(b), 2)) for a, b in table),
                   noise_factor=noise_factor, bias_factor=bias_factor, protocols=protocols, anatomy=anatomy)

    def intensity_table(self) -> np.ndarray:
        """Mean intensity per tissue as a (tissues, 2) array, columns ceT1, hrT2."""
        return np.array(self.intensity, dtype=np.float64)

    def site_protocols(self, site: str, scale: float = 1.0) -> dict[str, AcquisitionProtocol]:
        """A site's ceT1 and hrT2 slab grids at ``scale`` (as :func:`vstk.phantom.site_protocols`)."""
        if site not in self.protocols:
            site_protocols(site)  # raises the error that names the known sites
        return {c: p.scaled(scale) if scale != 1.0 else p for c, p in self.protocols[site].items()}

    def to_json(self) -> dict[str, Any]:
        """Plain numbers for the manifest: what was drawn, tissues by name."""
        return {
            "seed_sequence": None if self.seed is None else [self.seed, 0, POPULATION_STREAM],
            "intensity": {t.name.lower(): list(self.intensity[t]) for t in Tissue},
            "intensity_columns": list(CONTRASTS),
            "noise_factor": self.noise_factor,
            "bias_factor": self.bias_factor,
            "protocols": {site: {c: dataclasses.asdict(p) for c, p in by_contrast.items()}
                          for site, by_contrast in self.protocols.items()},
            "anatomy": dataclasses.asdict(self.anatomy),
        }


def _draw_protocol(rng: np.random.Generator, contrast: str) -> AcquisitionProtocol:
    """One slab grid: square in-plane voxels, a whole number of voxels over the drawn field of view."""
    inplane = round(float(rng.uniform(*_INPLANE_MM[contrast])), 2)
    thickness = round(float(rng.uniform(*_SLICE_MM[contrast])), 2)
    n_xy = int(round(rng.uniform(*_FOV_INPLANE_MM) / inplane))
    n_z = int(round(rng.uniform(*_FOV_Z_MM) / thickness))
    return AcquisitionProtocol((inplane, inplane, thickness), (n_xy, n_xy, n_z))
