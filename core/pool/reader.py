"""Reading a pool: :class:`Pool` opens a finished pool read-only and checks it first."""

from __future__ import annotations

import contextlib
import logging
import os
import zlib
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from ..errors import PoolError, format_value
from ..volume import Volume
from . import schema as S
from .codec import SliceReader, default_threads
from .digest import content_digest

log = logging.getLogger(__name__)

# Raw chunk cache per open dataset: a few slices, so re-reading a neighbour slice is free.
_CHUNK_CACHE_BYTES = 8 * 1024 * 1024
_DAMAGED = (OSError, zlib.error, RuntimeError, ValueError)


def open_pool_file(path: str | Path) -> h5py.File:
    """Open ``path`` read-only and check schema name, version and completion marker.

    Raises :class:`PoolError` (naming the file and the fix) for a missing, truncated,
    corrupt, foreign, newer-schema or unfinished file.
    """
    path = Path(path)
    if not path.is_file():
        raise PoolError("pool file not found", path=path, fix="check the path, or build it with `vstk pool build`")
    try:
        handle = h5py.File(path, "r", rdcc_nbytes=_CHUNK_CACHE_BYTES)
    except OSError as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else "unreadable"
        raise PoolError(f"not a readable HDF5 file: truncated or corrupt ({reason})", path=path,
                        fix="rerun the same `vstk pool build` command to write it again") from None
    try:
        S.check_schema(handle.attrs, path)
    except BaseException:
        handle.close()
        raise
    return handle


class Pool:
    """A finished HDF5 multi-view pool, opened read-only.

    ``Pool(path)`` checks the schema name and version (a newer version asks for a newer
    vstk) and the completion marker before anything is read. Use it as a context manager,
    or call :meth:`close`. Volumes come back as :class:`~vstk.Volume` (array ``[z, y, x]``,
    geometry in mm, ``(x, y, z)`` order); images are float32, labels uint8.

    Args:
        path: the pool file.
        threads: threads for decompressing whole volumes (default: usable CPUs, <= 8).
    """

    def __init__(self, path: str | Path, *, threads: int | None = None):
        self.path = Path(path)
        self.threads = threads or default_threads()
        self._file = open_pool_file(self.path)
        self._readers: dict[str, SliceReader] = {}

    # -- housekeeping ------------------------------------------------------------------------
    def close(self) -> None:
        """Close the file (idempotent)."""
        self._readers.clear()
        if self._file.id.valid:
            self._file.close()

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Pool({str(self.path)!r}, views={self.views()})"

    @property
    def file(self) -> h5py.File:
        """The open h5py file (read-only), for direct inspection."""
        return self._file

    @property
    def schema_version(self) -> int:
        return int(self._file.attrs[S.ATTR_VERSION])

    @property
    def target_spacing(self) -> tuple[float, float, float]:
        """The spacing (mm, x y z) the pool's volumes were resampled to."""
        return tuple(float(v) for v in self._file.attrs[S.ATTR_TARGET_SPACING])  # type: ignore[return-value]

    @property
    def created(self) -> str:
        """When the file was assembled (ISO 8601, UTC)."""
        return str(self._file.attrs[S.ATTR_CREATED])

    # -- listing -----------------------------------------------------------------------------
    def _group(self, name: str) -> h5py.Group | None:
        group = self._file.get(name)
        return group if isinstance(group, h5py.Group) else None

    def views(self) -> list[str]:
        """View names (translators), sorted."""
        group = self._group(S.VIEWS)
        return sorted(group) if group is not None else []

    def cases(self, view: str) -> list[str]:
        """Case ids of ``view``, sorted."""
        return sorted(self._view_group(view))

    def label_cases(self) -> list[str]:
        """Case ids that have a label in ``/labels``, sorted."""
        group = self._group(S.LABELS)
        return sorted(group) if group is not None else []

    def targets(self) -> list[str]:
        """Case ids of the real hrT2 images in ``/target``, sorted."""
        group = self._group(S.TARGET)
        return sorted(group) if group is not None else []

    def rounds(self) -> list[int]:
        """Self-training rounds that have pseudo labels, ascending."""
        group = self._group(S.PSEUDO_LABELS)
        return sorted(S.parse_round(name) for name in group) if group is not None else []

    def pseudo_labels(self, round_index: int) -> dict[str, float]:
        """``{case: confidence}`` of the pseudo labels of round ``round_index``."""
        group = self._round_group(round_index)
        return {case: float(group[case].attrs[S.ATTR_CONFIDENCE]) for case in sorted(group)}

    def pseudo_labels_made_by(self, round_index: int) -> dict[str, str | None]:
        """``{case: made_by}`` of the pseudo labels of round ``round_index`` (None: not recorded)."""
        group = self._round_group(round_index)
        return {case: group[case].attrs.get(S.ATTR_MADE_BY) for case in sorted(group)}

    # -- lookup with clear errors ------------------------------------------------------------
    def _view_group(self, view: str) -> h5py.Group:
        group = self._group(f"{S.VIEWS}/{view}") if isinstance(view, str) and "/" not in view else None
        if group is None:
            raise PoolError(f"view {view!r} is not in the pool (views: {', '.join(self.views()) or 'none'})",
                            path=self.path, fix="use `vstk pool info` to list views")
        return group

    def _entry(self, view: str, case: str) -> h5py.Group:
        group = self._view_group(view)
        entry = group.get(case) if isinstance(case, str) and "/" not in case else None
        if not isinstance(entry, h5py.Group):
            raise PoolError(f"case {case!r} is not in view {view!r} ({len(group)} cases)", path=self.path,
                            fix="use `vstk pool info` to list cases")
        return entry

    def _entry_dataset(self, view: str, case: str, name: str) -> h5py.Dataset:
        entry = self._entry(view, case)
        dataset = entry.get(name)
        if not isinstance(dataset, h5py.Dataset):
            what = "label (hard link to /labels/{case})" if name == S.LABEL else "image"
            raise PoolError(f"entry view {view!r}, case {case!r} has no {what}", path=self.path,
                            fix="the file was not written by a complete vstk build; rebuild it")
        return dataset

    def _round_group(self, round_index: int) -> h5py.Group:
        group = self._group(f"{S.PSEUDO_LABELS}/{S.round_name(round_index)}")
        if group is None:
            raise PoolError(f"no pseudo labels for round {round_index} (rounds: {self.rounds() or 'none'})",
                            path=self.path, fix="add them with PoolBuilder.add_pseudo_label")
        return group

    def _dataset(self, h5path: str, what: str) -> h5py.Dataset:
        dataset = self._file.get(h5path)
        if not isinstance(dataset, h5py.Dataset):
            raise PoolError(f"{what} is not in the pool ({h5path})", path=self.path,
                            fix="use `vstk pool info` to list what the pool holds")
        return dataset

    @contextlib.contextmanager
    def _reading(self, dataset: h5py.Dataset) -> Iterator[None]:
        try:
            yield
        except PoolError:
            raise
        except _DAMAGED as exc:
            reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise PoolError(f"data of {dataset.name} is damaged ({reason})", path=self.path,
                            fix="rebuild the pool (rerun `vstk pool build`)") from None

    def _reader(self, dataset: h5py.Dataset) -> SliceReader:
        name = dataset.name
        if name not in self._readers:
            self._readers[name] = SliceReader(dataset)
        return self._readers[name]

    def _volume(self, dataset: h5py.Dataset) -> Volume:
        with self._reading(dataset):
            array = self._reader(dataset).read_all(self.threads)
        return S.volume_from(array, dataset.attrs)

    def _slice(self, dataset: h5py.Dataset, k: int) -> np.ndarray:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise PoolError(f"slice index {k!r} of {dataset.name} is a {type(k).__name__}, not an integer",
                            path=self.path, fix="index axial slices from 0 to shape[0] - 1")
        if not 0 <= k < dataset.shape[0]:
            raise PoolError(f"slice {format_value(k)} is outside 0..{dataset.shape[0] - 1} of {dataset.name}",
                            path=self.path, fix="index axial slices from 0 to shape[0] - 1")
        with self._reading(dataset):
            return self._reader(dataset).read(int(k))

    # -- reading -----------------------------------------------------------------------------
    def read(self, view: str, case: str) -> tuple[Volume, Volume]:
        """``(image, label)`` of one view entry: float32 pseudo-hrT2 and its uint8 label."""
        image = self._volume(self._entry_dataset(view, case, S.IMAGE))
        label = self._volume(self._entry_dataset(view, case, S.LABEL))
        return image, label

    def read_image(self, view: str, case: str) -> Volume:
        """The translated image of one view entry."""
        return self._volume(self._entry_dataset(view, case, S.IMAGE))

    def read_label(self, case: str) -> Volume:
        """The ceT1 label of ``case`` (shared by all views)."""
        return self._volume(self._dataset(f"{S.LABELS}/{case}", f"label of case {case!r}"))

    def read_slice(self, view: str, case: str, k: int) -> np.ndarray:
        """Axial slice ``k`` ``[y, x]`` of a view entry's image; reads and decodes one chunk only."""
        return self._slice(self._entry_dataset(view, case, S.IMAGE), k)

    def read_label_slice(self, view: str, case: str, k: int) -> np.ndarray:
        """Axial slice ``k`` ``[y, x]`` of a view entry's label (one chunk)."""
        return self._slice(self._entry_dataset(view, case, S.LABEL), k)

    def shape(self, view: str, case: str) -> tuple[int, int, int]:
        """Array shape ``(z, y, x)`` of a view entry, without reading voxels."""
        return tuple(self._entry_dataset(view, case, S.IMAGE).shape)  # type: ignore[return-value]

    def read_target(self, case: str) -> Volume:
        """The real hrT2 image of ``case``."""
        return self._volume(self._target_dataset(case))

    def target_shape(self, case: str) -> tuple[int, int, int]:
        """Array shape ``(z, y, x)`` of a target image, without reading voxels."""
        return tuple(self._target_dataset(case).shape)  # type: ignore[return-value]

    def read_target_slice(self, case: str, k: int) -> np.ndarray:
        """Axial slice ``k`` ``[y, x]`` of a real hrT2 image (one chunk)."""
        return self._slice(self._target_dataset(case), k)

    def _target_dataset(self, case: str) -> h5py.Dataset:
        return self._dataset(f"{S.TARGET}/{case}", f"target (real hrT2) case {case!r}")

    def _pseudo_dataset(self, round_index: int, case: str) -> h5py.Dataset:
        self._round_group(round_index)
        return self._dataset(f"{S.PSEUDO_LABELS}/{S.round_name(round_index)}/{case}",
                             f"pseudo label of case {case!r} in round {round_index}")

    def read_pseudo_label_slice(self, round_index: int, case: str, k: int) -> np.ndarray:
        """Axial slice ``k`` ``[y, x]`` of a pseudo label (one chunk)."""
        return self._slice(self._pseudo_dataset(round_index, case), k)

    def read_pseudo_label(self, round_index: int, case: str) -> tuple[Volume, float]:
        """``(label, confidence)`` of a pseudo-labelled real hrT2 case of round ``round_index``."""
        dataset = self._pseudo_dataset(round_index, case)
        return self._volume(dataset), float(dataset.attrs[S.ATTR_CONFIDENCE])

    def provenance(self, view: str, case: str) -> dict[str, Any]:
        """Provenance of a view entry: translator, plugin_distribution, plugin_version,
        checkpoint_sha256, translator_config (dict), seed, plus any extra keys."""
        return S.provenance_from_attrs(self._entry(view, case).attrs)

    # -- summaries ---------------------------------------------------------------------------
    @staticmethod
    def _sizes(dataset: h5py.Dataset) -> tuple[int, int]:
        raw = int(np.prod(dataset.shape)) * dataset.dtype.itemsize
        return raw, int(dataset.id.get_storage_size())

    def info(self) -> dict[str, Any]:
        """Everything a summary needs, as plain JSON-able data.

        Sizes are bytes: ``raw_bytes`` = voxels x item size, ``stored_bytes`` = compressed
        chunks on disk; ``compression_ratio`` = raw / stored (2.0 means half the size). At
        the top level, labels count once (hard links) and ``compression_ratio`` is raw voxel
        bytes / ``file_bytes`` (the whole file, metadata included). Shapes are ``[z, y, x]``;
        spacing is mm ``(x, y, z)``.
        """
        totals = {"raw_bytes": 0, "stored_bytes": 0}

        def sized(dataset: h5py.Dataset, counted: bool = True) -> dict[str, Any]:
            raw, stored = self._sizes(dataset)
            if counted:
                totals["raw_bytes"] += raw
                totals["stored_bytes"] += stored
            return {"shape": list(dataset.shape), "dtype": str(dataset.dtype), "raw_bytes": raw,
                    "stored_bytes": stored, "compression_ratio": round(raw / stored, 4) if stored else None,
                    "spacing": [float(v) for v in dataset.attrs["spacing"]]}

        entries = []
        views: dict[str, Any] = {}
        for view in self.views():
            view_raw = view_stored = 0
            for case in self.cases(view):
                row = {"view": view, "case": case, **sized(self._entry_dataset(view, case, S.IMAGE))}
                row["provenance"] = self.provenance(view, case)
                entries.append(row)
                view_raw += row["raw_bytes"]
                view_stored += row["stored_bytes"]
            views[view] = {"cases": len(self.cases(view)), "raw_bytes": view_raw, "stored_bytes": view_stored,
                           "compression_ratio": round(view_raw / view_stored, 4) if view_stored else None}
        labels = {case: sized(self._dataset(f"{S.LABELS}/{case}", "label")) for case in self.label_cases()}
        targets = {case: sized(self._dataset(f"{S.TARGET}/{case}", "target")) for case in self.targets()}
        pseudo = {}
        for r in self.rounds():
            confidences = self.pseudo_labels(r)
            for case in confidences:
                sized(self._dataset(f"{S.PSEUDO_LABELS}/{S.round_name(r)}/{case}", "pseudo label"))
            pseudo[str(r)] = {"cases": len(confidences), "confidence": confidences}
        file_bytes = os.path.getsize(self.path)
        return {
            "path": str(self.path),
            "schema": str(self._file.attrs[S.ATTR_SCHEMA]),
            "schema_version": self.schema_version,
            "vstk_version": str(self._file.attrs[S.ATTR_VSTK_VERSION]),
            "created": self.created,
            "target_spacing": list(self.target_spacing),
            "views": views,
            "entries": entries,
            "labels": labels,
            "targets": targets,
            "pseudo_labels": pseudo,
            "raw_bytes": totals["raw_bytes"],
            "stored_bytes": totals["stored_bytes"],
            "file_bytes": file_bytes,
            "compression_ratio": round(totals["raw_bytes"] / file_bytes, 4) if file_bytes else None,
        }

    def digest(self) -> str:
        """SHA-256 of the pool's content (all datasets and attributes except ``created``).

        Two builds of the same inputs give the same digest however often they were
        interrupted. Reads every voxel; raises :class:`PoolError` for a damaged chunk.
        """
        try:
            return content_digest(self._file, threads=self.threads)
        except _DAMAGED as exc:
            reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise PoolError(f"pool data is damaged ({reason})", path=self.path,
                            fix="rebuild the pool (rerun `vstk pool build`)") from None
