"""The HDF5 pool schema (version 1): names, attributes and their validation, in one place.

Layout of a pool file (``h5ls -r pool.h5`` shows exactly this)::

    /                                   root attributes: see ROOT_ATTRS below
    /labels/{case}                      uint8 [z, y, x] ceT1 label (0 background, 1 VS, 2 cochlea)
    /views/{view}/{case}/               one entry per translated case; attrs = provenance
    /views/{view}/{case}/image          float32 [z, y, x] pseudo-hrT2 (translated ceT1)
    /views/{view}/{case}/label          HARD LINK to /labels/{case} (stored once, shared)
    /target/{case}                      float32 [z, y, x] real hrT2
    /pseudo_labels/round_{r}/{case}     uint8 [z, y, x] pseudo label of /target/{case}; attrs confidence
                                        (and, optionally, made_by)

Every voxel dataset is chunked by axial slice (chunks ``(1, Y, X)``), compressed with
HDF5's built-in shuffle + deflate filters (readable by any HDF5 tool), and carries its
grid as attributes ``spacing`` (mm), ``origin`` (mm), ``direction`` (9 cosines, row-major),
all in SimpleITK ``(x, y, z)`` order. Attributes are numbers, number arrays or UTF-8
strings (JSON where structured); nothing is pickled.

Views live under ``/views`` rather than at the root so a translator name can never clash
with ``labels``, ``target`` or ``pseudo_labels``.

A shard (``vstk pool build --shard I/N``, see :mod:`vstk.pool.shard`) is a complete pool of
this layout holding its share of the entries, with one more root attribute ``shard`` (JSON:
index, count and the plan of the whole build); ``vstk pool merge`` joins the shards into one
pool without that attribute.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import InputError, PoolError, format_value
from ..labels import LABEL_NAMES
from ..volume import GEOMETRY_ATOL, Volume

SCHEMA_NAME = "vstk-pool"
SCHEMA_VERSION = 1

# Root attribute names.
ATTR_SCHEMA = "schema"
ATTR_VERSION = "schema_version"
ATTR_VSTK_VERSION = "vstk_version"
ATTR_TARGET_SPACING = "target_spacing"
ATTR_CREATED = "created"
ATTR_DESCRIPTION = "description"
ATTR_LABEL_NAMES = "label_names"
ATTR_AXIS_ORDER = "axis_order"
# Written last, after every dataset: a file without it (or with 0) is not a complete pool.
ATTR_COMPLETE = "complete"
# Only in a shard written by `vstk pool build --shard I/N`: JSON of its index, count and plan.
ATTR_SHARD = "shard"

# Attributes left out of the content digest: they change from one build to the next.
DIGEST_EXCLUDED_ROOT_ATTRS = frozenset({ATTR_CREATED})

# Group and dataset names.
LABELS = "labels"
VIEWS = "views"
TARGET = "target"
PSEUDO_LABELS = "pseudo_labels"
IMAGE = "image"
LABEL = "label"
ROUND_PREFIX = "round_"

GEOMETRY_ATTRS = ("spacing", "origin", "direction")
ATTR_CONFIDENCE = "confidence"
ATTR_ROUND = "round"
ATTR_MADE_BY = "made_by"  # optional: what produced a pseudo label (vstk run: its round's inputs digest)

# Provenance of a view entry: the attributes of /views/{view}/{case}.
PROVENANCE_KEYS = ("translator", "plugin_distribution", "plugin_version", "checkpoint_sha256",
                   "translator_config", "seed")
ATTR_PROVENANCE_EXTRA = "provenance_extra"

IMAGE_DTYPE = np.dtype("<f4")
LABEL_DTYPE = np.dtype("u1")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

DESCRIPTION = """\
vstk multi-view augmentation pool (schema vstk-pool, version 1).
Translated ceT1 -> pseudo-hrT2 volumes from several image-to-image translators ("views"),
the ceT1 labels they share, real hrT2 images and their self-training pseudo labels.
Arrays are indexed [z, y, x] (axial slice k is array[k]); every voxel dataset is chunked
one axial slice per chunk, compressed with the standard shuffle + deflate filters, and has
attributes spacing (mm), origin (mm) and direction (3x3 cosines, row-major), in (x, y, z)
order as in SimpleITK/ITK (LPS physical space).
/labels/{case}: uint8 label map (label_names: 0 background, 1 VS, 2 cochlea).
/views/{view}/{case}: one translated case; attributes give its provenance: translator,
  plugin_distribution, plugin_version, checkpoint_sha256, translator_config (JSON), seed.
  image: float32 pseudo-hrT2; label: hard link to /labels/{case} (the same object).
/target/{case}: float32 real hrT2 image.
/pseudo_labels/round_{r}/{case}: uint8 pseudo label of /target/{case} from self-training
  round r; attribute confidence in [0, 1], optional made_by (what produced it).
Root attribute complete = 1 is written last; a file without it is not a finished pool.
"""


def check_name(kind: str, name: str, *, path: str | Path | None = None) -> str:
    """Validate a view name or case id (it becomes an HDF5 name and part of file names).

    Allowed: letters, digits, ``.``, ``_``, ``-``, starting with a letter or digit, at most
    128 characters. View names may not contain ``__`` (it separates view and case in the
    nnU-Net case ids ``{view}__{case}``).
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise InputError(f"{kind} name {name!r} is not allowed", path=path,
                         fix="use letters, digits, '.', '_' or '-', starting with a letter or digit (<= 128)")
    if kind == "view" and "__" in name:
        raise InputError(f"view name {name!r} contains '__'", path=path,
                         fix="'__' separates view and case in exported case ids; use a single '_'")
    return name


def check_round(round_index: int) -> int:
    """Validate a self-training round index (an integer >= 0)."""
    if isinstance(round_index, bool) or not isinstance(round_index, (int, np.integer)) or round_index < 0:
        raise InputError(f"pseudo-label round {round_index!r} is not an integer >= 0",
                         fix="number self-training rounds 0, 1, 2, ...")
    return int(round_index)


def round_name(round_index: int) -> str:
    return f"{ROUND_PREFIX}{check_round(round_index)}"


def parse_round(name: str) -> int:
    return int(name[len(ROUND_PREFIX):])


def geometry_attrs(volume: Volume) -> dict[str, np.ndarray]:
    """The grid of ``volume`` as HDF5 attributes (float64 arrays, (x, y, z) order)."""
    return {"spacing": np.asarray(volume.spacing, dtype=np.float64),
            "origin": np.asarray(volume.origin, dtype=np.float64),
            "direction": np.asarray(volume.direction, dtype=np.float64)}


def volume_from(array: np.ndarray, attrs: Mapping[str, Any]) -> Volume:
    """A :class:`Volume` from an array ``[z, y, x]`` and its dataset's geometry attributes."""
    return Volume(array, tuple(attrs["spacing"]), tuple(attrs["origin"]), tuple(attrs["direction"]))


def grid_mismatch(a: Mapping[str, Any], shape_a: tuple[int, ...], b: Mapping[str, Any],
                  shape_b: tuple[int, ...]) -> str | None:
    """How two stored grids differ (size, spacing, origin, direction; (x, y, z) order), or None.

    Uses the tolerance of :meth:`vstk.Volume.same_grid` (``GEOMETRY_ATOL`` mm / cosine).
    """
    if tuple(shape_a) != tuple(shape_b):
        return f"size {format_value(tuple(shape_a)[::-1])} vs {format_value(tuple(shape_b)[::-1])} (x, y, z)"
    for name in GEOMETRY_ATTRS:
        va, vb = np.asarray(a[name], dtype=np.float64), np.asarray(b[name], dtype=np.float64)
        if va.shape != vb.shape or not np.allclose(va, vb, atol=GEOMETRY_ATOL, rtol=0):
            return f"{name} {format_value(tuple(va))} vs {format_value(tuple(vb))}"
    return None


def canonical_json(value: Any) -> str:
    """Deterministic JSON text (sorted keys, no NaN) so equal configs give equal bytes."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InputError(f"value is not plain JSON ({exc})",
                         fix="use numbers, strings, booleans, lists and dicts only") from None


def normalise_provenance(provenance: Mapping[str, Any], *, view: str, case_id: str) -> dict[str, Any]:
    """Check a view entry's provenance and turn it into HDF5 attributes.

    Required keys (see :data:`PROVENANCE_KEYS`):
        translator (str), plugin_distribution (str), plugin_version (str),
        checkpoint_sha256 (64 lowercase hex digits), translator_config (dict, or JSON text
        of a dict), seed (int).
    Any other key goes, as JSON, into the attribute ``provenance_extra``.
    """
    where = f"view {view!r}, case {case_id!r}"
    missing = [k for k in PROVENANCE_KEYS if k not in provenance]
    if missing:
        raise InputError(f"provenance of {where} lacks {', '.join(missing)}",
                         fix=f"pass a dict with all of {', '.join(PROVENANCE_KEYS)}")
    attrs: dict[str, Any] = {}
    for key in ("translator", "plugin_distribution", "plugin_version"):
        value = provenance[key]
        if not isinstance(value, str) or not value:
            raise InputError(f"provenance {key} of {where} must be a non-empty string, got {value!r}",
                             fix="give the translator name and its plugin's distribution and version")
        attrs[key] = value
    sha = provenance["checkpoint_sha256"]
    if not isinstance(sha, str) or not _SHA256.match(sha):
        raise InputError(f"provenance checkpoint_sha256 of {where} is not 64 lowercase hex digits: {sha!r}",
                         fix="hashlib.sha256(checkpoint_bytes).hexdigest()")
    attrs["checkpoint_sha256"] = sha
    config = provenance["translator_config"]
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except json.JSONDecodeError as exc:
            raise InputError(f"provenance translator_config of {where} is not valid JSON ({exc})",
                             fix="pass the config as a dict (dataclasses.asdict(config))") from None
    if not isinstance(config, dict):
        raise InputError(f"provenance translator_config of {where} must be a dict, got {type(config).__name__}",
                         fix="pass the config as a dict (dataclasses.asdict(config))")
    attrs["translator_config"] = canonical_json(config)
    seed = provenance["seed"]
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"provenance seed of {where} must be an integer, got {format_value(seed)} "
                         f"({type(seed).__name__})",
                         fix="pass the seed the translator ran with")
    attrs["seed"] = np.int64(seed)
    extra = {k: v for k, v in provenance.items() if k not in PROVENANCE_KEYS}
    if extra:
        attrs[ATTR_PROVENANCE_EXTRA] = canonical_json(extra)
    return attrs


def provenance_from_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The provenance dict back from stored attributes (translator_config parsed from JSON)."""
    out: dict[str, Any] = {}
    for key in PROVENANCE_KEYS:
        value = attrs[key]
        if key == "translator_config":
            value = json.loads(value)
        elif key == "seed":
            value = int(value)
        else:
            value = str(value)
        out[key] = value
    if ATTR_PROVENANCE_EXTRA in attrs:
        out.update(json.loads(attrs[ATTR_PROVENANCE_EXTRA]))
    return out


def check_confidence(confidence: float, *, case_id: str, round_index: int) -> float:
    """A pseudo label's confidence: a finite number in [0, 1]."""
    try:
        value = float(confidence)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise InputError(f"confidence {format_value(confidence)} of pseudo label round {round_index}, case {case_id!r} "
                         "is not in [0, 1]", fix="pass the pseudo-labeler's confidence in [0, 1]")
    return value


def check_target_spacing(spacing: Any) -> tuple[float, float, float]:
    """The pool's target spacing: three positive finite mm values (x, y, z)."""
    try:
        values = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise InputError(f"target spacing {format_value(spacing)} is not three positive values in mm (x, y, z)",
                         fix="e.g. (0.41, 0.41, 1.5)")
    return values  # type: ignore[return-value]


def root_attrs(target_spacing: tuple[float, float, float], vstk_version: str, created: str) -> dict[str, Any]:
    """Root attributes of a pool, except :data:`ATTR_COMPLETE` (written last)."""
    return {
        ATTR_SCHEMA: SCHEMA_NAME,
        ATTR_VERSION: np.int64(SCHEMA_VERSION),
        ATTR_VSTK_VERSION: vstk_version,
        ATTR_TARGET_SPACING: np.asarray(target_spacing, dtype=np.float64),
        ATTR_CREATED: created,
        ATTR_DESCRIPTION: DESCRIPTION,
        ATTR_LABEL_NAMES: canonical_json({str(k): v for k, v in LABEL_NAMES.items()}),
        ATTR_AXIS_ORDER: "array [z, y, x]; spacing/origin/direction (x, y, z)",
    }


def check_schema(attrs: Mapping[str, Any], path: str | Path) -> int:
    """Raise :class:`PoolError` unless ``attrs`` are those of a complete pool this vstk reads."""
    schema = attrs.get(ATTR_SCHEMA)
    if isinstance(schema, bytes):
        schema = schema.decode("utf-8", "replace")
    if schema != SCHEMA_NAME:
        raise PoolError(f"not a vstk pool (root attribute {ATTR_SCHEMA!r} is {schema!r}, expected {SCHEMA_NAME!r})",
                        path=path, fix="open a file written by `vstk pool build`")
    try:
        version = int(attrs[ATTR_VERSION])
    except (KeyError, TypeError, ValueError):
        raise PoolError(f"pool has no valid {ATTR_VERSION!r} attribute", path=path,
                        fix="the file is damaged; rebuild it with `vstk pool build`") from None
    if version > SCHEMA_VERSION:
        raise PoolError(f"pool schema version {version} is newer than this vstk reads (up to {SCHEMA_VERSION})",
                        path=path, fix="upgrade vstk (pip install -U vstk) to read it")
    if version < 1:
        raise PoolError(f"pool schema version {version} is not valid", path=path,
                        fix="rebuild the pool with `vstk pool build`")
    if int(attrs.get(ATTR_COMPLETE, 0)) != 1:
        raise PoolError("pool is incomplete (its completion marker is missing: the build was interrupted)",
                        path=path, fix="rerun the same `vstk pool build` command; it resumes and finishes")
    return version
