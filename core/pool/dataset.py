"""A torch Dataset over the views of a pool: 2D axial slices or whole 3D volumes.

The HDF5 file is opened lazily, once per process, on first access, so the dataset can be
handed to a ``DataLoader`` with worker processes (fork or spawn): what is pickled is the
path and the index, never an open h5py handle.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import InputError, PoolError
from .reader import Pool

Item = dict[str, Any]


class PoolDataset(Dataset):
    """Training samples from a pool's views (and optionally one round of pseudo labels).

    ``mode="slice"``: one item per axial slice of every selected entry; shuffle in the
    DataLoader for random slices. ``image`` is float32 ``[1, Y, X]``, ``label`` int64 ``[Y, X]``;
    each slice is read from its own chunk.
    ``mode="volume"``: one item per entry; ``image`` ``[1, Z, Y, X]``, ``label`` ``[Z, Y, X]``,
    plus ``spacing`` (mm, x y z).
    Every item also has ``view``, ``case`` and ``slice`` (-1 in volume mode). Pseudo-labelled
    real hrT2 cases appear under the view name ``pseudo_r{round}``.

    Args:
        pool_path: the pool file.
        views: views to draw from (list or ``"a,b"``); None means all.
        mode: ``"slice"`` or ``"volume"``.
        pseudo_round: also use the targets with this round's pseudo labels.
        transform: applied to every item dict (augmentation), returns a dict.
    """

    def __init__(self, pool_path: str | Path, views: Sequence[str] | str | None = None,
                 mode: Literal["slice", "volume"] = "slice", *, pseudo_round: int | None = None,
                 transform: Callable[[Item], Item] | None = None):
        if mode not in ("slice", "volume"):
            raise InputError(f"PoolDataset mode {mode!r} is unknown", fix="use 'slice' (2D) or 'volume' (3D)")
        self.pool_path = Path(pool_path)
        self.mode = mode
        self.pseudo_round = pseudo_round
        self.transform = transform
        if isinstance(views, str):
            views = [v.strip() for v in views.split(",") if v.strip()]
        # (view name, case, number of slices, is a pseudo-labelled target)
        self._entries: list[tuple[str, str, int, bool]] = []
        with Pool(self.pool_path, threads=1) as pool:
            available = pool.views()
            self.views = list(views) if views is not None else available
            unknown = [v for v in self.views if v not in available]
            if unknown:
                raise PoolError(f"view(s) {', '.join(unknown)} not in the pool (views: {', '.join(available)})",
                                path=self.pool_path, fix="choose views listed by `vstk pool info`")
            for view in self.views:
                self._entries += [(view, case, pool.shape(view, case)[0], False) for case in pool.cases(view)]
            if pseudo_round is not None:
                self._entries += [(f"pseudo_r{pseudo_round}", case, pool.target_shape(case)[0], True)
                                  for case in pool.pseudo_labels(pseudo_round)]
        self._starts = np.cumsum([0] + [n for _, _, n, _ in self._entries])
        self._pool: Pool | None = None
        self._pid = -1

    def __len__(self) -> int:
        return int(self._starts[-1]) if self.mode == "slice" else len(self._entries)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pool"], state["_pid"] = None, -1  # never pickle an open file handle
        return state

    def _open(self) -> Pool:
        # Reopen after fork: an HDF5 handle must not be shared between processes.
        if self._pool is None or self._pid != os.getpid():
            self._pool = Pool(self.pool_path, threads=1)
            self._pid = os.getpid()
        return self._pool

    def _locate(self, index: int) -> tuple[tuple[str, str, int, bool], int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index %= len(self)
        if self.mode == "volume":
            return self._entries[index], -1
        entry = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self._entries[entry], int(index - self._starts[entry])

    def locate(self, index: int) -> tuple[str, str, int]:
        """``(view, case, slice)`` of item ``index`` (slice -1 in volume mode)."""
        (view, case, _, _), k = self._locate(index)
        return view, case, k

    def __getitem__(self, index: int) -> Item:
        pool = self._open()
        (view, case, _, pseudo), k = self._locate(index)
        item: Item = {"view": view, "case": case, "slice": k}
        if self.mode == "slice":
            if pseudo:
                image = pool.read_target_slice(case, k)
                label = pool.read_pseudo_label_slice(self.pseudo_round, case, k)  # type: ignore[arg-type]
            else:
                image = pool.read_slice(view, case, k)
                label = pool.read_label_slice(view, case, k)
            item["image"] = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
            item["label"] = torch.from_numpy(label.astype(np.int64))
        else:
            if pseudo:
                image_volume = pool.read_target(case)
                label_volume, _ = pool.read_pseudo_label(self.pseudo_round, case)  # type: ignore[arg-type]
            else:
                image_volume, label_volume = pool.read(view, case)
            item["image"] = torch.from_numpy(np.ascontiguousarray(image_volume.array, dtype=np.float32))[None]
            item["label"] = torch.from_numpy(label_volume.array.astype(np.int64))
            item["spacing"] = torch.tensor(image_volume.spacing, dtype=torch.float64)
        return self.transform(item) if self.transform is not None else item
