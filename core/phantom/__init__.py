"""Procedural inner-ear MRI phantom written as a CrossMoDA-layout folder (no downloads).

``solids`` (implicit shapes and random fields), ``anatomy`` (the subjects), ``rendering``
(ceT1/hrT2 images on a site's grids), ``population`` (what a data set's subjects share,
drawn per seed with ``vary``), ``dataset`` (the folder and its manifest), ``overview`` (the
PNG).
"""

from .dataset import MANIFEST, OWNER_MARKER, TARGET_LABELS, PhantomConfig, generate_phantom, load_manifest
from .overview import save_overview_png
from .population import Population
from .rendering import (CONTRASTS, DEFAULT_GEOMETRY, GEOMETRIES, SITES, AcquisitionProtocol, crossmoda_protocols,
                        site_protocols)

__all__ = [
    "CONTRASTS", "DEFAULT_GEOMETRY", "GEOMETRIES", "MANIFEST", "OWNER_MARKER", "SITES", "TARGET_LABELS",
    "AcquisitionProtocol", "PhantomConfig", "Population", "crossmoda_protocols", "generate_phantom", "load_manifest",
    "save_overview_png", "site_protocols",
]
