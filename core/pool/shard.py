"""Sharded pool building: split one build into N shards by (view, case range), then merge them.

A build's work is a *plan*: the views (translators), the labelled source cases and the real
hrT2 target cases. Its view entries, listed view by view and case by case in sorted order,
are cut into N contiguous ranges (sizes differ by at most one), and so are the targets; shard
I of N (1-based, ``vstk pool build ... --shard I/N``) writes the entries of range I, plus the
label of every case it translates, into its own HDF5 file. That file is a complete pool like
any other (readable on its own) with one more root attribute, ``shard``: JSON of its index,
count and the whole plan. Shards can be built at the same time by different processes or
machines, each resumable and crash-safe as :class:`~vstk.pool.PoolBuilder` is.

:func:`merge_shards` (``vstk pool merge``) checks the shards against their plan and copies
their entries into one pool file: a real copy, chosen over HDF5 external links and virtual
datasets by measuring (``benchmarks/pool_merge.py``; 12 entries of 32 x 192 x 192, 45 MB
stored, 2 shards, on the 2-core machine while other jobs ran): the copy took 0.16 s (compressed
chunks are copied as they are, no recompression), links 0.02 s, virtual datasets 0.10 s - all
small next to translating. But with links or virtual datasets the pool is only valid while
the shard files stay where they were; virtual datasets have no chunks of their own, so vstk's
direct-chunk slice reads fall back to HDF5's filter pipeline (median ``Pool.read_slice`` 0.91 ms
vs 0.51 ms for the copy, the slice reads 2D training makes); external links are hashed as links,
so the digest differs from a single-process build. The merged copy is one self-contained file
that reads exactly like a single-writer pool and has its content digest. It is written to a
temporary name, its completion marker set last, and renamed into place; a merge killed at
any moment leaves no partial pool.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import uuid
from pathlib import Path
from typing import Any, Iterable, Sequence

import h5py
import numpy as np

from ..atomic import fsync_path
from ..errors import InputError, PoolError, format_value
from ..protocols import ProgressFn
from . import schema as S
from .builder import LIBVER, copy_pool_entry, entry_order, finish_pool_file, list_entries, \
    start_pool_file
from .reader import open_pool_file

log = logging.getLogger(__name__)

_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
Key = tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class ShardSpec:
    """Shard ``index`` of ``count`` (1-based, as ``--shard I/N`` and SLURM array ids 1..N)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 1 <= self.index <= self.count:
            raise InputError(f"shard {self.index}/{self.count} is not allowed",
                             fix="use --shard I/N with 1 <= I <= N, e.g. --shard 1/4")

    @classmethod
    def parse(cls, text: str) -> "ShardSpec":
        """``"I/N"`` -> ShardSpec(I, N)."""
        match = _SPEC.match(str(text))
        if match is None:
            raise InputError(f"--shard {text!r} is not of the form I/N", fix="e.g. --shard 2/4 (shard 2 of 4)")
        return cls(int(match.group(1)), int(match.group(2)))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def _ranges(n: int, count: int) -> list[range]:
    """``count`` contiguous ranges covering ``0..n-1`` whose sizes differ by at most one."""
    return [range(i * n // count, (i + 1) * n // count) for i in range(count)]


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """The whole build that shards split: views, labelled source cases, target cases (sorted)."""

    views: tuple[str, ...]
    cases: tuple[str, ...]
    targets: tuple[str, ...]

    @classmethod
    def of(cls, views: Iterable[str], cases: Iterable[str], targets: Iterable[str]) -> "ShardPlan":
        plan = cls(tuple(sorted(set(views))), tuple(sorted(set(cases))), tuple(sorted(set(targets))))
        for view in plan.views:
            S.check_name("view", view)
        for case in plan.cases + plan.targets:
            S.check_name("case", case)
        return plan

    def view_units(self) -> list[tuple[str, str]]:
        return [(view, case) for view in self.views for case in self.cases]

    def share(self, spec: ShardSpec) -> "ShardShare":
        """What shard ``spec`` builds."""
        units = self.view_units()
        mine = [units[i] for i in _ranges(len(units), spec.count)[spec.index - 1]]
        targets = [self.targets[i] for i in _ranges(len(self.targets), spec.count)[spec.index - 1]]
        return ShardShare(spec, tuple(mine), tuple(sorted({case for _, case in mine})), tuple(targets))

    def attribute(self, spec: ShardSpec) -> str:
        """The root attribute ``shard`` of shard ``spec`` (canonical JSON)."""
        return S.canonical_json({"index": spec.index, "count": spec.count,
                                 "plan": {"views": list(self.views), "cases": list(self.cases),
                                          "targets": list(self.targets)}})


@dataclasses.dataclass(frozen=True)
class ShardShare:
    """One shard's work: view entries ``(view, case)``, the labels they need, target cases."""

    spec: ShardSpec
    views: tuple[tuple[str, str], ...]
    labels: tuple[str, ...]
    targets: tuple[str, ...]

    def keys(self) -> set[Key]:
        """The pool entry keys the shard must hold."""
        return ({("view", v, c) for v, c in self.views} | {("label", c) for c in self.labels}
                | {("target", c) for c in self.targets})


def _describe(key: Key) -> str:
    if key[0] == "view":
        return f"view {key[1]!r} case {key[2]!r}"
    if key[0] == "pseudo_label":
        return f"pseudo label round {key[1]} case {key[2]!r}"
    return f"{key[0]} {key[1]!r}"


@dataclasses.dataclass
class _Shard:
    path: Path
    spec: ShardSpec
    plan: ShardPlan
    spacing: tuple[float, ...]
    version: int
    vstk_version: str
    keys: set[Key]


def _read_shard(path: Path) -> _Shard:
    with open_pool_file(path) as f:  # checks schema and completeness, one clear error each
        text = f.attrs.get(S.ATTR_SHARD)
        if text is None:
            raise PoolError(f"not a pool shard (no root attribute {S.ATTR_SHARD!r})", path=path,
                            fix="pass the files written by `vstk pool build ... --shard I/N`")
        try:
            data = json.loads(text)
            spec = ShardSpec(int(data["index"]), int(data["count"]))
            plan = ShardPlan(tuple(data["plan"]["views"]), tuple(data["plan"]["cases"]),
                             tuple(data["plan"]["targets"]))
        except (ValueError, KeyError, TypeError, InputError):
            raise PoolError(f"root attribute {S.ATTR_SHARD!r} is damaged: {str(text)[:120]!r}", path=path,
                            fix="rebuild this shard with `vstk pool build ... --shard I/N --overwrite`") from None
        return _Shard(path, spec, plan, tuple(float(v) for v in f.attrs[S.ATTR_TARGET_SPACING]),
                      int(f.attrs[S.ATTR_VERSION]), str(f.attrs[S.ATTR_VSTK_VERSION]), set(list_entries(f)))


def _label_fingerprint(f: h5py.File, case: str) -> str:
    ds = f[f"{S.LABELS}/{case}"]
    digest = hashlib.sha256(np.ascontiguousarray(ds[()]).tobytes())
    for name in S.GEOMETRY_ATTRS:
        digest.update(np.round(np.asarray(ds.attrs[name], dtype=np.float64), 6).tobytes())
    return f"{ds.shape}{digest.hexdigest()}"


def check_shards(paths: Sequence[str | Path]) -> list[_Shard]:
    """Read and cross-check shard files; returns them ordered by index.

    Raises :class:`PoolError` (one line naming the file and the fix) for a file that is not a
    complete shard, shards of different plans, schema versions, vstk versions or target
    spacings, an index given twice or missing, an entry in two shards, a shard missing part
    of its share or holding entries outside it, and a case whose label differs between shards.
    """
    if not paths:
        raise InputError("no shard files given", fix="vstk pool merge SHARD1.h5 SHARD2.h5 ... --out POOL.h5")
    shards = [_read_shard(Path(p)) for p in paths]
    first = shards[0]
    for shard in shards[1:]:
        for what, mine, theirs in (("schema version", shard.version, first.version),
                                   ("vstk version", shard.vstk_version, first.vstk_version)):
            if mine != theirs:
                raise PoolError(f"{what} {mine} differs from {theirs} of {first.path}", path=shard.path,
                                fix="build every shard with the same vstk")
        if not np.allclose(shard.spacing, first.spacing):
            raise PoolError(f"target spacing {format_value(shard.spacing)} differs from "
                            f"{format_value(first.spacing)} of {first.path}",
                            path=shard.path, fix="build every shard with the same target spacing")
        if shard.plan != first.plan or shard.spec.count != first.spec.count:
            raise PoolError(f"shard {shard.spec} belongs to another build than {first.path} (shard {first.spec}): "
                            "views, cases, targets or shard count differ", path=shard.path,
                            fix="build all shards with the same --translators, --data and N")
    seen: dict[int, _Shard] = {}
    for shard in shards:
        if shard.spec.index in seen:
            raise PoolError(f"shard {shard.spec} is given twice (also {seen[shard.spec.index].path})",
                            path=shard.path, fix="pass each shard once")
        seen[shard.spec.index] = shard
    count = first.spec.count
    for index in range(1, count + 1):
        if index not in seen:
            raise PoolError(f"shard {index}/{count} is missing: its cases would be missing from the pool "
                            f"(given: {', '.join(str(s.spec) for s in sorted(shards, key=lambda s: s.spec.index))})",
                            path=first.path, fix=f"build it with `vstk pool build ... --shard {index}/{count}` "
                                                 "and pass it too")
    owner: dict[Key, _Shard] = {}
    for shard in sorted(shards, key=lambda s: s.spec.index):
        for key in sorted(shard.keys, key=entry_order):
            if key[0] != "label" and key in owner:
                raise PoolError(f"{_describe(key)} is in two shards ({owner[key].path} and {shard.path})",
                                path=shard.path, fix="shards must not overlap: rebuild them with one --shard I/N "
                                                     "each from the same plan")
            owner.setdefault(key, shard)
        wanted = first.plan.share(shard.spec).keys()
        missing = sorted(wanted - shard.keys, key=entry_order)
        if missing:
            raise PoolError(f"shard {shard.spec} lacks {_describe(missing[0])} of its share "
                            f"({len(missing)} entries missing)", path=shard.path,
                            fix=f"rerun `vstk pool build ... --shard {shard.spec}` for it (with the full --data)")
        extra = sorted(shard.keys - wanted, key=entry_order)
        if extra:
            raise PoolError(f"shard {shard.spec} holds {_describe(extra[0])}, which is not in its share",
                            path=shard.path, fix=f"rebuild it with `vstk pool build ... --shard {shard.spec} "
                                                 "--overwrite`")
    labels: dict[str, tuple[str, Path]] = {}
    shared = {key[1] for key in owner if key[0] == "label"
              and sum(key in s.keys for s in shards) > 1}
    for shard in shards:
        mine = sorted(c for c in shared if ("label", c) in shard.keys)
        if not mine:
            continue
        with open_pool_file(shard.path) as f:
            for case in mine:
                fingerprint = _label_fingerprint(f, case)
                if case in labels and labels[case][0] != fingerprint:
                    raise PoolError(f"label of case {case!r} differs from the one in {labels[case][1]}",
                                    path=shard.path, fix="build every shard from the same data folder")
                labels.setdefault(case, (fingerprint, shard.path))
    return sorted(shards, key=lambda s: s.spec.index)


def merge_shards(paths: Sequence[str | Path], out: str | Path, *, overwrite: bool = False, durable: bool = True,
                 progress: ProgressFn | None = None) -> Path:
    """Join the shard files of one sharded build into the pool ``out``; return its path.

    The shards are checked first (:func:`check_shards`). The merged pool holds every entry
    once (labels shared between shards once), no ``shard`` attribute, and has the same
    content digest as a single-process build of the same plan. Written to a temporary file
    next to ``out``, completion marker last, fsync'ed and renamed into place. An existing
    ``out`` is replaced only with ``overwrite``.
    """
    out = Path(out).absolute()
    if out.exists() and not overwrite:
        raise PoolError("the merged pool already exists", path=out,
                        fix="pass --overwrite to replace it, or choose another --out")
    shards = check_shards(paths)
    if any(out.exists() and out.samefile(s.path) for s in shards):
        raise InputError("--out is one of the shards", path=out, fix="write the merged pool to a new file")
    out.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out.with_name(f".{out.name}.merge.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise PoolError(f"another merge into this pool is running (lock {lock_path} is held)", path=out,
                                fix="wait for it to finish") from None
            raise
        for stale in out.parent.glob(f".{out.name}.merge.*.tmp"):
            log.info("removing temporary file of an interrupted merge: %s", stale)
            stale.unlink(missing_ok=True)
        tmp = out.with_name(f".{out.name}.merge.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            _assemble(tmp, shards, progress)
            if durable:
                fsync_path(tmp)
            os.replace(tmp, out)
            if durable:
                fsync_path(out.parent, directory=True)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        lock_path.unlink(missing_ok=True)
    finally:
        os.close(fd)
    log.info("merged %d shards into %s", len(shards), out)
    return out


def _assemble(tmp: Path, shards: list[_Shard], progress: ProgressFn | None) -> None:
    owner: dict[Key, _Shard] = {}
    for shard in shards:
        for key in shard.keys:
            owner.setdefault(key, shard)
    keys = sorted(owner, key=entry_order)
    handles = {shard.path: open_pool_file(shard.path) for shard in shards}
    try:
        with h5py.File(tmp, "w", libver=LIBVER) as f:
            start_pool_file(f, tuple(shards[0].spacing))  # type: ignore[arg-type]
            for done, key in enumerate(keys, start=1):
                copy_pool_entry(f, handles[owner[key].path], key)
                if progress is not None:
                    progress(done, len(keys), "/".join(str(p) for p in key))
            finish_pool_file(f)
    finally:
        for handle in handles.values():
            handle.close()
