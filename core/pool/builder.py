"""Writing a pool, crash-safe and resumable: :class:`PoolBuilder`.

Design (why it survives SIGKILL at any moment):

1. Every entry (a label, a view entry, a target image, a pseudo label) is first written as
   its own small HDF5 file in a staging folder next to the pool (``POOL.h5.staging/``):
   written under a temporary name, completion marker set last, closed, fsync'ed, then
   renamed into place (``os.replace`` is atomic). A staged entry under its final name is
   therefore always complete; a half-written one only exists under a ``.tmp`` name and is
   deleted by the next run. HDF5 itself is not safe against a writer killed mid-write (the
   file's metadata can be left inconsistent), so no file is ever modified in place.
2. :meth:`PoolBuilder.finalize` assembles the pool into a temporary file in the pool's
   folder, copying each staged dataset with ``h5py.Group.copy`` (HDF5 object copy: the
   compressed chunks are copied as they are, not recompressed), creates the hard links,
   writes the root completion marker last, fsyncs and renames the file over ``POOL.h5``.
   Readers see the old pool or the new one, never a partial one. Only then is the staging
   folder removed.
3. Resume: a new ``PoolBuilder`` on the same path finds the staged entries
   (:meth:`PoolBuilder.has`), and the entries of the pool file if a previous run got as far
   as renaming it into place; the caller skips them, and finalize produces the same
   content as an uninterrupted run (compare :meth:`vstk.pool.Pool.digest`; only the root
   attribute ``created`` differs). A lock file (``flock``) stops two builders of one pool.

Extending a finished pool (``vstk pool add-view``) works the same way: ``PoolBuilder.extend``
stages the new entries, and finalize assembles base pool + new entries into a new file that
replaces the old one atomically.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import errno
import fcntl
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import h5py
import numpy as np

from ..atomic import fsync_path, write_json_atomic
from ..errors import InputError, PoolError, format_value
from ..labels import LABEL_NAMES, to_vstk_labels
from ..protocols import ProgressFn
from ..volume import Volume
from . import schema as S
from .codec import DEFAULT_COMPRESSION, Compression, write_volume
from .reader import open_pool_file

log = logging.getLogger(__name__)

# HDF5 1.10 file format: checksummed metadata, readable by HDF5 >= 1.10 (HDFView 3, MATLAB, h5py).
LIBVER = ("v110", "v110")
DEFAULT_TARGET_SPACING: tuple[float, float, float] = (0.41, 0.41, 1.5)
STAGING_MANIFEST = "staging.json"
_STAGING_FORMAT = 1
_LOCK = ".lock"
_STAGED_KIND = "vstk_staged_kind"  # bookkeeping attribute of a staged file, not copied

EntryObserver = Callable[..., None]


@dataclasses.dataclass(frozen=True)
class _Entry:
    """What the builder knows about one entry without reading its voxels."""

    kind: str  # "label" | "view" | "target" | "pseudo_label"
    key: tuple[Any, ...]
    shape: tuple[int, ...]
    geometry: dict[str, np.ndarray]
    source: Path | None  # the staged file, or None for an entry of the base pool


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _vstk_version() -> str:
    from .. import __version__

    return __version__


def _pool_path(key: tuple[Any, ...]) -> str:
    """Where an entry's voxel dataset lives in the pool file."""
    kind = key[0]
    if kind == "label":
        return f"{S.LABELS}/{key[1]}"
    if kind == "view":
        return f"{S.VIEWS}/{key[1]}/{key[2]}/{S.IMAGE}"
    if kind == "target":
        return f"{S.TARGET}/{key[1]}"
    return f"{S.PSEUDO_LABELS}/{S.round_name(key[1])}/{key[2]}"


def _file_identity(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


def list_entries(f: h5py.File) -> dict[tuple[Any, ...], h5py.Dataset]:
    """Every entry of an open pool file by key (``("label", case)``, ``("view", view, case)``,
    ``("target", case)``, ``("pseudo_label", round, case)``) -> its voxel dataset."""
    out: dict[tuple[Any, ...], h5py.Dataset] = {}
    for case, ds in f.get(S.LABELS, {}).items():
        out[("label", case)] = ds
    for view, group in f.get(S.VIEWS, {}).items():
        for case, entry in group.items():
            out[("view", view, case)] = entry[S.IMAGE]
    for case, ds in f.get(S.TARGET, {}).items():
        out[("target", case)] = ds
    for round_group, group in f.get(S.PSEUDO_LABELS, {}).items():
        for case, ds in group.items():
            out[("pseudo_label", S.parse_round(round_group), case)] = ds
    return out


def entry_order(key: tuple[Any, ...]) -> tuple[int, list[str]]:
    """Assembly order: labels first (view entries link them), then views, targets, pseudo labels."""
    return {"label": 0, "view": 1, "target": 2, "pseudo_label": 3}[key[0]], [str(p) for p in key[1:]]


def start_pool_file(out: h5py.File, target_spacing: tuple[float, float, float],
                    extra_attrs: dict[str, Any] | None = None) -> None:
    """Root attributes (``complete`` = 0 until :func:`finish_pool_file`) and the top-level groups."""
    for name, value in S.root_attrs(target_spacing, _vstk_version(), _utc_now()).items():
        out.attrs[name] = value
    for name, value in (extra_attrs or {}).items():
        out.attrs[name] = value
    out.attrs[S.ATTR_COMPLETE] = np.int64(0)
    for group, text in (
            (S.LABELS, "ceT1 label maps, uint8 [z, y, x], one per case; linked from every view entry"),
            (S.VIEWS, "one group per view (translator), one entry group per case"),
            (S.TARGET, "real hrT2 images, float32 [z, y, x]"),
            (S.PSEUDO_LABELS, "self-training pseudo labels of /target cases, one group per round")):
        out.create_group(group).attrs["description"] = text


def finish_pool_file(out: h5py.File) -> None:
    out.attrs[S.ATTR_COMPLETE] = np.int64(1)  # last: the pool is complete


def copy_pool_entry(out: h5py.File, source: h5py.File, key: tuple[Any, ...]) -> None:
    """Copy one entry of the finished pool ``source`` into ``out`` (raw compressed chunks and
    attributes, no recompression); a view entry's label becomes a hard link to ``/labels/{case}``
    of ``out``, which must be copied first."""
    h5path = _pool_path(key)
    parent, name = h5path.rsplit("/", 1)
    dest = out.require_group(parent)
    source.copy(source[h5path], dest, name=name)
    if key[0] == "view":
        for attr in sorted(source[parent].attrs):
            dest.attrs[attr] = source[parent].attrs[attr]
        dest[S.LABEL] = out[_pool_path(("label", key[2]))]


class PoolBuilder:
    """Builds (or extends) an HDF5 multi-view pool; crash-safe and resumable.

    Typical use (what ``vstk pool build`` does)::

        with PoolBuilder("pool.h5", target_spacing=(0.41, 0.41, 1.5)) as builder:
            for case in cases:
                if not builder.has_label(case.id):
                    builder.add_label(case.id, label)
                for translator in translators:
                    if not builder.has(translator.name, case.id):   # resume: skip what is staged
                        builder.add_view(translator.name, case.id, translate(...), provenance)
            builder.finalize()

    Entries may be added in any order; cross-checks that need two entries (label grid vs
    image grid, target vs pseudo label) run as soon as both are known and again in
    :meth:`finalize`. In build mode, adding an entry that is already staged (or in the
    existing pool) replaces it.

    Args:
        path: the pool file to write (``.h5``).
        target_spacing: spacing (mm, x y z) the volumes were resampled to; recorded in the
            root attributes. In ``extend`` mode it is taken from the base pool.
        staging_dir: folder for staged entries; default ``{path}.staging`` (must be on the
            same file system as ``path`` for atomic renames).
        mode: ``"build"`` writes a new pool; ``"extend"`` adds entries (new views, targets,
            pseudo-label rounds) to the finished pool at ``path``; see :meth:`extend`.
        overwrite: in build mode, ignore a pool already at ``path`` and build from scratch.
            Without it, an existing finished pool is resume state like the staged entries:
            :meth:`has` reports its entries, they are kept, and an entry added again replaces
            its old version; so rerunning a finished build changes nothing, whenever the
            earlier run was killed. A damaged file at ``path`` is a :class:`PoolError`.
        compression: filters of voxel datasets (default gzip level 1 + shuffle).
        threads: compression threads (default: usable CPUs, at most 8).
        durable: fsync staged entries and the final file (survives power loss too, not only
            a killed process); costs little on SSDs.
        on_entry_written: called as ``on_entry_written(pool_path=..., view=..., case_id=...,
            attrs=...)`` when a view entry is staged completely; fits
            ``PluginHost.notify_pool_entry`` (the ``vstk_pool_entry_written`` hook).
        progress: ``progress(done, total, message)`` during :meth:`finalize`.
        root_attrs: extra root attributes (strings), e.g. the ``shard`` description of
            ``vstk pool build --shard``; a finished pool at ``path`` resumed in build mode
            must carry the same ones (else :class:`PoolError`).
    """

    def __init__(self, path: str | Path, *, target_spacing: tuple[float, float, float] | None = None,
                 staging_dir: str | Path | None = None, mode: Literal["build", "extend"] = "build",
                 overwrite: bool = False, compression: Compression = DEFAULT_COMPRESSION,
                 threads: int | None = None, durable: bool = True,
                 on_entry_written: EntryObserver | None = None, progress: ProgressFn | None = None,
                 root_attrs: dict[str, str] | None = None):
        if mode not in ("build", "extend"):
            raise InputError(f"pool builder mode {mode!r} is unknown", fix="use 'build' or 'extend'")
        self.path = Path(path).absolute()
        self.mode = mode
        self.staging_dir = (Path(staging_dir).absolute() if staging_dir
                            else self.path.with_name(self.path.name + ".staging"))
        self.compression = compression
        self.threads = threads
        self.durable = durable
        self.on_entry_written = on_entry_written
        self.progress = progress
        self.root_attrs = dict(root_attrs or {})
        self._entries: dict[tuple[Any, ...], _Entry] = {}
        self._base: dict[tuple[Any, ...], _Entry] = {}
        self._base_views: set[str] = set()
        self._lock_fd: int | None = None
        self._closed = False

        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging_existed = self.staging_dir.is_dir()
        if mode == "extend" and not self.path.is_file():
            raise PoolError("pool file not found; extend needs a finished pool", path=self.path,
                            fix="build it first with `vstk pool build`")
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock()
            if self.path.exists() and (mode == "extend" or not overwrite):
                # Indexed under the lock, so no other builder replaces the pool meanwhile.
                self.target_spacing = self._index_base()
                if target_spacing is None and mode == "build":
                    target_spacing = DEFAULT_TARGET_SPACING
                if target_spacing is not None and not np.allclose(S.check_target_spacing(target_spacing),
                                                                  self.target_spacing):
                    raise PoolError(f"target spacing {format_value(tuple(target_spacing))} differs from the "
                                    f"existing pool's {format_value(self.target_spacing)}", path=self.path,
                                    fix="keep the pool's spacing, or rebuild it with --overwrite (overwrite=True)")
                if mode == "build":
                    log.info("pool %s exists: its entries count as done (overwrite=True rebuilds it)", self.path)
            else:
                self.target_spacing = S.check_target_spacing(target_spacing or DEFAULT_TARGET_SPACING)
            self._remove_stale_temporaries()
            self._open_manifest()
            self._index_staged()
        except BaseException:
            self.close()
            if not staging_existed:
                shutil.rmtree(self.staging_dir, ignore_errors=True)
            raise
        if self._entries:
            log.info("resuming pool %s: %d staged entries found in %s", self.path, len(self._entries),
                     self.staging_dir)

    @classmethod
    def extend(cls, path: str | Path, **kwargs: Any) -> "PoolBuilder":
        """A builder that adds entries to the finished pool at ``path``.

        New view entries (``vstk pool add-view``), targets and pseudo-label rounds may be
        added; a view name, target case or (round, case) already in the pool is a
        :class:`PoolError` (the pool is never silently changed). Labels of cases already
        in the pool may be passed again if they are identical. :meth:`finalize` writes
        base + new entries to a new file and renames it over ``path``. Keyword arguments as
        for :class:`PoolBuilder` (``target_spacing`` comes from the pool).
        """
        return cls(path, mode="extend", **kwargs)

    # -- setup -------------------------------------------------------------------------------
    def _lock(self) -> None:
        lock_path = self.staging_dir / _LOCK
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise PoolError(f"another process is building this pool (lock {lock_path} is held)",
                                path=self.path, fix="wait for it to finish, or stop it first") from None
            raise
        self._lock_fd = fd

    def _remove_stale_temporaries(self) -> None:
        """Delete temporary files of killed runs (safe: we hold the lock)."""
        prefix = f".{self.path.name}."
        for candidate in self.path.parent.glob(f"{prefix}*.tmp"):
            log.info("removing temporary file of an interrupted run: %s", candidate)
            candidate.unlink(missing_ok=True)
        for candidate in self.staging_dir.rglob(".*.tmp"):
            log.info("removing half-written staged entry of an interrupted run: %s", candidate)
            candidate.unlink(missing_ok=True)

    def _open_manifest(self) -> None:
        manifest = self.staging_dir / STAGING_MANIFEST
        wanted = {"format": _STAGING_FORMAT, "mode": self.mode, "pool": str(self.path),
                  "target_spacing": list(self.target_spacing),
                  # Build mode keeps staged entries whatever the pool file is now (they override
                  # its entries); extend mode must know which pool its entries were meant for.
                  "base": _file_identity(self.path) if self.mode == "extend" else None,
                  "root_attrs": self.root_attrs}
        if manifest.is_file():
            try:
                found = json.loads(manifest.read_text())
            except (OSError, json.JSONDecodeError):
                found = None
            if found is None or found.get("format") != _STAGING_FORMAT:
                raise PoolError(f"staging folder {self.staging_dir} has an unreadable {STAGING_MANIFEST}",
                                path=self.path, fix=f"delete {self.staging_dir} and build again")
            if found.get("mode") != self.mode:
                raise PoolError(f"staging folder {self.staging_dir} belongs to an unfinished "
                                f"{found.get('mode')!r} run, not {self.mode!r}", path=self.path,
                                fix=f"finish that run first, or delete {self.staging_dir}")
            if not np.allclose(found.get("target_spacing", []), self.target_spacing):
                raise PoolError(f"staged entries were made for target spacing "
                                f"{format_value(tuple(found['target_spacing']))}, not "
                                f"{format_value(self.target_spacing)}", path=self.path,
                                fix=f"resume with the same spacing, or delete {self.staging_dir}")
            if found.get("root_attrs", {}) != self.root_attrs:
                raise PoolError(f"staged entries in {self.staging_dir} were made with root attributes "
                                f"{found.get('root_attrs', {})}, not {self.root_attrs} (another shard?)",
                                path=self.path, fix=f"resume with the same --shard, or delete {self.staging_dir}")
            if self.mode == "extend" and found.get("base") != wanted["base"]:
                # The pool was replaced since (e.g. the earlier run finished but was killed before
                # removing its staging folder): these entries are already in it, or stale.
                log.warning("discarding staging folder %s: the pool changed since it was made", self.staging_dir)
                self._clear_staging()
            else:
                return
        write_json_atomic(manifest, wanted, sort_keys=True, durable=self.durable)

    def _clear_staging(self) -> None:
        for child in self.staging_dir.iterdir():
            if child.name == _LOCK:
                continue
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()

    def _index_base(self) -> tuple[float, float, float]:
        """Read the layout of the finished pool at ``path`` (no voxels); return its target spacing."""
        try:
            handle = open_pool_file(self.path)
        except PoolError as exc:
            if self.mode == "extend":
                raise
            raise PoolError(f"the existing file cannot be resumed: {exc.problem}", path=self.path,
                            fix="delete it, or rebuild with --overwrite (overwrite=True)") from None
        with handle as f:
            spacing = S.check_target_spacing(f.attrs[S.ATTR_TARGET_SPACING])

            self._check_root_attrs(f)
            for key, ds in list_entries(f).items():
                geometry = {k: np.asarray(ds.attrs[k]) for k in S.GEOMETRY_ATTRS}
                self._base[key] = _Entry(key[0], key, tuple(ds.shape), geometry, None)
                if key[0] == "view":
                    self._base_views.add(key[1])
        return spacing

    def _check_root_attrs(self, f: h5py.File) -> None:
        """In build mode a finished pool is resume state only if it was built as the same kind
        of file (the same shard of the same plan, or no shard)."""
        if self.mode != "build":
            return
        for name in sorted(set(self.root_attrs) | ({S.ATTR_SHARD} & set(f.attrs))):
            found = f.attrs.get(name)
            found = found.decode() if isinstance(found, bytes) else found
            if found != self.root_attrs.get(name):
                raise PoolError(f"the existing file has root attribute {name}={found!r}, this build writes "
                                f"{self.root_attrs.get(name)!r}", path=self.path,
                                fix="write to another --out, or rebuild it with --overwrite (overwrite=True)")

    def _index_staged(self) -> None:
        for staged in sorted(self.staging_dir.rglob("*.h5")):
            if staged.name.startswith("."):
                continue
            entry = self._read_staged_header(staged)
            if entry is None:
                log.warning("ignoring unreadable staged entry %s (it will be written again)", staged)
                staged.unlink(missing_ok=True)
                continue
            self._entries[entry.key] = entry

    def _read_staged_header(self, staged: Path) -> _Entry | None:
        try:
            with h5py.File(staged, "r") as f:
                if int(f.attrs.get(S.ATTR_COMPLETE, 0)) != 1:
                    return None
                kind = str(f.attrs[_STAGED_KIND])
                key = tuple(json.loads(f.attrs["vstk_staged_key"]))
                ds = f["data"]
                geometry = {k: np.asarray(ds.attrs[k]) for k in S.GEOMETRY_ATTRS}
                return _Entry(kind, key, tuple(ds.shape), geometry, staged)
        except (OSError, KeyError, ValueError):
            return None

    # -- queries -----------------------------------------------------------------------------
    def _known(self, key: tuple[Any, ...]) -> _Entry | None:
        return self._entries.get(key) or self._base.get(key)

    def has(self, view: str, case_id: str) -> bool:
        """True when the view entry ``(view, case_id)`` is staged or in the base pool."""
        return self._known(("view", view, case_id)) is not None

    def has_label(self, case_id: str) -> bool:
        """True when the label of ``case_id`` is staged or in the base pool."""
        return self._known(("label", case_id)) is not None

    def has_target(self, case_id: str) -> bool:
        """True when the real hrT2 image of ``case_id`` is staged or in the base pool."""
        return self._known(("target", case_id)) is not None

    def has_pseudo_label(self, round_index: int, case_id: str) -> bool:
        """True when the pseudo label of ``case_id`` in round ``round_index`` is staged or in the base pool."""
        return self._known(("pseudo_label", S.check_round(round_index), case_id)) is not None

    def check_view_is_new(self, view: str) -> None:
        """Raise :class:`PoolError` if ``view`` already exists in the base pool (extend mode).

        ``vstk pool add-view`` calls this before training or translating anything.
        """
        S.check_name("view", view, path=self.path)
        if view in self._base_views:
            raise PoolError(f"view {view!r} already exists in the pool (views: {', '.join(sorted(self._base_views))})",
                            path=self.path, fix="choose another view name, or rebuild the pool without it")

    # -- adding entries ----------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise PoolError("this PoolBuilder is closed (finalized or failed)", path=self.path,
                            fix="create a new PoolBuilder to continue")

    def _check_array(self, volume: Volume, what: str) -> None:
        if not isinstance(volume, Volume):
            raise InputError(f"{what} must be a vstk.Volume, got {type(volume).__name__}",
                             fix="wrap the array with its geometry: Volume(array, spacing, origin, direction)")
        if min(volume.shape) < 1:
            raise InputError(f"{what} is empty (shape {volume.shape})", fix="pass a volume with voxels")

    def _image_array(self, volume: Volume, what: str) -> np.ndarray:
        self._check_array(volume, what)
        array = np.ascontiguousarray(volume.array, dtype=S.IMAGE_DTYPE)
        if not np.isfinite(array).all():
            bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            raise InputError(f"{what} has {bad} NaN/Inf voxels", fix="check the translator output (it must be finite)")
        return array

    def _label_array(self, volume: Volume, what: str) -> np.ndarray:
        self._check_array(volume, what)
        array = volume.array
        # Fast path for integer labels already in vstk's scheme: min/max instead of np.unique
        # (about 20x faster on a 512 x 512 x 120 volume); anything else gets the full check.
        if array.dtype.kind in "ui" and int(array.min()) >= 0 and int(array.max()) <= max(LABEL_NAMES):
            return np.ascontiguousarray(array, dtype=S.LABEL_DTYPE)
        try:
            return np.ascontiguousarray(to_vstk_labels(array))
        except InputError as exc:
            raise InputError(f"{what}: {exc.problem}", fix=exc.fix) from None

    def _check_grids(self, a: _Entry, b: _Entry, what: str, fix: str) -> None:
        mismatch = S.grid_mismatch(a.geometry, a.shape, b.geometry, b.shape)
        if mismatch:
            raise InputError(f"{what}: grids differ: {mismatch}", path=self.path, fix=fix)

    def _check_view_label(self, view_entry: _Entry, label_entry: _Entry) -> None:
        _, view, case = view_entry.key
        self._check_grids(view_entry, label_entry, f"view {view!r}, case {case!r}: image does not match its label",
                          "translate onto the ceT1 label's grid (merge slices back onto the source grid)")

    def _check_pseudo_target(self, pseudo: _Entry, target: _Entry) -> None:
        _, r, case = pseudo.key
        self._check_grids(pseudo, target, f"pseudo label round {r}, case {case!r} does not match its target image",
                          "predict on the target image's grid")

    def _stage(self, key: tuple[Any, ...], relpath: Path, array: np.ndarray, volume: Volume,
               file_attrs: dict[str, Any]) -> _Entry:
        """Write one entry to its staged file: temp name, marker last, fsync, atomic rename."""
        final = self.staging_dir / relpath
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        geometry = S.geometry_attrs(volume)
        try:
            with h5py.File(tmp, "w", libver=LIBVER) as f:
                write_volume(f, "data", array, self.compression, threads=self.threads, attrs=geometry)
                for name, value in file_attrs.items():
                    f.attrs[name] = value
                f.attrs[_STAGED_KIND] = key[0]
                f.attrs["vstk_staged_key"] = json.dumps(list(key))
                f.attrs[S.ATTR_COMPLETE] = np.int64(1)  # last: marks the staged entry complete
            if self.durable:
                fsync_path(tmp)
            os.replace(tmp, final)
            if self.durable:
                fsync_path(final.parent, directory=True)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        entry = _Entry(key[0], key, tuple(array.shape), geometry, final)
        self._entries[key] = entry
        return entry

    def add_label(self, case_id: str, label: Volume) -> None:
        """Stage the ceT1 label of ``case_id`` (values 0 background, 1 VS, 2 cochlea; stored uint8).

        Stored once at ``/labels/{case}`` and hard-linked into every view entry of the case.
        In extend mode a label already in the pool must be identical (else :class:`PoolError`).
        """
        self._check_open()
        S.check_name("case", case_id, path=self.path)
        array = self._label_array(label, f"label of case {case_id!r}")
        key = ("label", case_id)
        if self.mode == "extend" and key in self._base:
            with open_pool_file(self.path) as f:
                stored = f[f"{S.LABELS}/{case_id}"]
                same = (tuple(stored.shape) == array.shape
                        and S.grid_mismatch(stored.attrs, stored.shape, S.geometry_attrs(label), array.shape) is None
                        and np.array_equal(stored[...], array))
            if not same:
                raise PoolError(f"case {case_id!r} already has a different label in the pool", path=self.path,
                                fix="labels of a finished pool cannot be replaced; rebuild the pool with the new label")
            log.debug("label %s is already in the pool (identical)", case_id)
            return
        probe = _Entry("label", key, array.shape, S.geometry_attrs(label), None)
        for other in list(self._entries.values()) + list(self._base.values()):
            if other.kind == "view" and other.key[2] == case_id:
                self._check_view_label(other, probe)
        self._stage(key, Path(S.LABELS) / f"{case_id}.h5", array, label, {})
        log.debug("staged label %s", case_id)

    def add_view(self, view: str, case_id: str, image: Volume, provenance: dict[str, Any]) -> None:
        """Stage the translated image of ``case_id`` by translator ``view`` with its provenance.

        ``image`` must lie on the case's label grid (checked when both are known).
        ``provenance`` needs translator, plugin_distribution, plugin_version,
        checkpoint_sha256 (hex), translator_config (dict) and seed (int); extra keys are kept
        as JSON. Stored as float32.
        """
        self._check_open()
        S.check_name("view", view, path=self.path)
        S.check_name("case", case_id, path=self.path)
        if self.mode == "extend":
            self.check_view_is_new(view)
        attrs = S.normalise_provenance(provenance, view=view, case_id=case_id)
        array = self._image_array(image, f"image of view {view!r}, case {case_id!r}")
        key = ("view", view, case_id)
        label = self._known(("label", case_id))
        if label is not None:
            self._check_view_label(_Entry("view", key, array.shape, S.geometry_attrs(image), None), label)
        entry = self._stage(key, Path(S.VIEWS) / view / f"{case_id}.h5", array, image, attrs)
        log.debug("staged view %s case %s", view, case_id)
        if self.on_entry_written is not None:
            public = {k: (v.tolist() if isinstance(v, np.ndarray) else v.item() if isinstance(v, np.generic) else v)
                      for k, v in {**entry.geometry, **attrs}.items()}
            self.on_entry_written(pool_path=str(self.path), view=view, case_id=case_id, attrs=public)

    def add_target(self, case_id: str, image: Volume) -> None:
        """Stage the real hrT2 image of ``case_id`` (``/target/{case}``, float32)."""
        self._check_open()
        S.check_name("case", case_id, path=self.path)
        key = ("target", case_id)
        if self.mode == "extend" and key in self._base:
            raise PoolError(f"target case {case_id!r} already exists in the pool", path=self.path,
                            fix="targets of a finished pool cannot be replaced; use another case id or rebuild")
        array = self._image_array(image, f"target image of case {case_id!r}")
        probe = _Entry("target", key, array.shape, S.geometry_attrs(image), None)
        for other in list(self._entries.values()):
            if other.kind == "pseudo_label" and other.key[2] == case_id:
                self._check_pseudo_target(other, probe)
        self._stage(key, Path(S.TARGET) / f"{case_id}.h5", array, image, {})
        log.debug("staged target %s", case_id)

    def add_pseudo_label(self, round_index: int, case_id: str, label: Volume, confidence: float,
                         made_by: str | None = None) -> None:
        """Stage the pseudo label of real hrT2 case ``case_id`` from self-training round ``round_index``.

        ``confidence`` in [0, 1] is stored as the dataset attribute ``confidence``, ``made_by``
        (a string naming the model and settings that produced it) as ``made_by``; the label
        must lie on the grid of ``/target/{case}``, which must be in the pool by finalize.
        """
        self._check_open()
        r = S.check_round(round_index)
        S.check_name("case", case_id, path=self.path)
        value = S.check_confidence(confidence, case_id=case_id, round_index=r)
        key = ("pseudo_label", r, case_id)
        if self.mode == "extend" and key in self._base:
            raise PoolError(f"pseudo label of case {case_id!r} in round {r} already exists in the pool",
                            path=self.path, fix="write the next round under a new round index")
        array = self._label_array(label, f"pseudo label of case {case_id!r} (round {r})")
        target = self._known(("target", case_id))
        if target is not None:
            self._check_pseudo_target(_Entry("pseudo_label", key, array.shape, S.geometry_attrs(label), None), target)
        attrs: dict[str, Any] = {S.ATTR_CONFIDENCE: np.float64(value), S.ATTR_ROUND: np.int64(r)}
        if made_by is not None:
            attrs[S.ATTR_MADE_BY] = str(made_by)
        self._stage(key, Path(S.PSEUDO_LABELS) / S.round_name(r) / f"{case_id}.h5", array, label, attrs)
        log.debug("staged pseudo label round %d case %s", r, case_id)

    # -- finalize ----------------------------------------------------------------------------
    def _all(self) -> dict[tuple[Any, ...], _Entry]:
        return {**self._base, **self._entries}

    def _validate(self, entries: dict[tuple[Any, ...], _Entry]) -> None:
        for key, entry in sorted(entries.items(), key=lambda kv: str(kv[0])):
            if entry.kind == "view":
                _, view, case = key
                label = entries.get(("label", case))
                if label is None:
                    raise PoolError(f"view {view!r}, case {case!r} has no label", path=self.path,
                                    fix=f"call add_label({case!r}, label) before finalize (every view entry "
                                        "links the ceT1 label of its case)")
                self._check_view_label(entry, label)
            elif entry.kind == "pseudo_label":
                _, r, case = key
                target = entries.get(("target", case))
                if target is None:
                    raise PoolError(f"pseudo label round {r}, case {case!r} has no target image", path=self.path,
                                    fix=f"call add_target({case!r}, hrT2_image) before finalize")
                self._check_pseudo_target(entry, target)

    def finalize(self) -> Path:
        """Assemble all entries into the pool file, atomically; return its path.

        Checks that every view entry has a label on the same grid and every pseudo label a
        target, writes everything into ``.{name}.*.tmp`` next to the pool, sets the root
        ``complete`` marker last, fsyncs, renames the file over ``path`` and removes the
        staging folder. Safe to interrupt: rerunning the build finishes it.
        """
        self._check_open()
        entries = self._all()
        self._validate(entries)
        if self._base and not self._entries:
            log.info("nothing new to add to %s", self.path)
            self._remove_staging()
            return self.path
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            self._assemble(tmp, entries)
            if self.durable:
                fsync_path(tmp)
            os.replace(tmp, self.path)
            if self.durable:
                fsync_path(self.path.parent, directory=True)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        log.info("pool written: %s (%d entries)", self.path, len(entries))
        self._remove_staging()
        return self.path

    def _assemble(self, tmp: Path, entries: dict[tuple[Any, ...], _Entry]) -> None:
        keys = sorted(entries, key=entry_order)
        total = len(keys) + 1
        base = open_pool_file(self.path) if self._base else None
        try:
            with h5py.File(tmp, "w", libver=LIBVER) as out:
                start_pool_file(out, self.target_spacing, self.root_attrs)
                for done, key in enumerate(keys):
                    self._copy_entry(out, base, entries[key])
                    if self.progress is not None:
                        self.progress(done + 1, total, "/".join(str(p) for p in key))
                finish_pool_file(out)
        finally:
            if base is not None:
                base.close()
        if self.progress is not None:
            self.progress(total, total, "renaming into place")

    @staticmethod
    def _copy_attrs(source: h5py.AttributeManager, target: h5py.AttributeManager) -> None:
        for name in sorted(source):
            if name in (_STAGED_KIND, "vstk_staged_key", S.ATTR_COMPLETE):
                continue
            target[name] = source[name]

    def _copy_entry(self, out: h5py.File, base: h5py.File | None, entry: _Entry) -> None:
        if entry.source is None:  # from the pool being extended
            assert base is not None
            copy_pool_entry(out, base, entry.key)
            return
        h5path = _pool_path(entry.key)
        parent, name = h5path.rsplit("/", 1)
        dest = out.require_group(parent)
        with h5py.File(entry.source, "r") as staged:
            staged.copy(staged["data"], dest, name=name)  # raw chunks + geometry attributes
            self._copy_attrs(staged.attrs, dest.attrs if entry.kind == "view" else dest[name].attrs)
        if entry.kind == "view":
            dest[S.LABEL] = out[_pool_path(("label", entry.key[2]))]  # hard link: one object, stored once

    def _remove_staging(self) -> None:
        shutil.rmtree(self.staging_dir, ignore_errors=True)
        self.close()

    # -- lifetime ----------------------------------------------------------------------------
    def staged(self) -> Iterator[tuple[Any, ...]]:
        """Keys of the staged (not yet assembled) entries, e.g. ``("view", "cyclegan", "case1")``."""
        return iter(sorted(self._entries, key=str))

    def close(self) -> None:
        """Release the lock; staged entries stay for a later resume (idempotent)."""
        self._closed = True
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "PoolBuilder":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
