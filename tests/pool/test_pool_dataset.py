"""The torch Dataset over pool views: shapes, values, and DataLoader workers."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pool_helpers import CASES, TARGETS, VIEWS, build_pool, target_image, view_image
from vstk.pool import PoolDataset

SHAPE = (8, 40, 48)


@pytest.fixture(scope="module")
def pool_path(tmp_path_factory):
    return build_pool(tmp_path_factory.mktemp("pool") / "pool.h5", shape=SHAPE)


def test_slice_mode_indexes_every_axial_slice_of_every_view(pool_path):
    dataset = PoolDataset(pool_path)
    assert len(dataset) == len(VIEWS) * len(CASES) * SHAPE[0]
    item = dataset[SHAPE[0] + 3]  # second entry (views and cases in sorted order), slice 3
    assert (item["view"], item["case"], item["slice"]) == (VIEWS[0], sorted(CASES)[1], 3)
    assert item["image"].shape == (1, 40, 48) and item["image"].dtype == torch.float32
    assert item["label"].shape == (40, 48) and item["label"].dtype == torch.int64
    np.testing.assert_array_equal(item["image"][0].numpy(), view_image(VIEWS[0], sorted(CASES)[1], SHAPE).array[3])
    assert set(torch.unique(item["label"]).tolist()) <= {0, 1, 2}


def test_volume_mode_returns_whole_volumes_with_spacing(pool_path):
    dataset = PoolDataset(pool_path, views=["qsattn"], mode="volume")
    assert len(dataset) == len(CASES)
    item = dataset[-1]
    assert item["case"] == sorted(CASES)[-1] and item["slice"] == -1
    assert item["image"].shape == (1, *SHAPE) and item["label"].shape == SHAPE
    assert torch.allclose(item["spacing"], torch.tensor([0.41, 0.41, 1.5], dtype=torch.float64))
    assert int((item["label"] == 1).sum()) > 0


def test_pseudo_round_adds_real_hrt2_with_pseudo_labels(pool_path):
    dataset = PoolDataset(pool_path, views="cyclegan", pseudo_round=1)
    n_views = len(CASES) * SHAPE[0]
    assert len(dataset) == n_views + len(TARGETS) * target_image(TARGETS[0]).shape[0]
    item = dataset[n_views]
    first = sorted(TARGETS)[0]
    assert item["view"] == "pseudo_r1" and item["case"] == first and item["slice"] == 0
    np.testing.assert_array_equal(item["image"][0].numpy(), target_image(first).array[0])


def test_dataloader_with_workers_reads_from_each_worker(pool_path):
    dataset = PoolDataset(pool_path, mode="slice")
    dataset[0]  # opens the file in this process; pickling must not carry the handle
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._pool is None and len(clone) == len(dataset)
    loader = DataLoader(dataset, batch_size=4, shuffle=True, num_workers=2,
                        generator=torch.Generator().manual_seed(0))
    seen = 0
    for batch in loader:
        assert batch["image"].shape[1:] == (1, 40, 48) and batch["label"].shape[1:] == (40, 48)
        seen += batch["image"].shape[0]
    assert seen == len(dataset)


def test_unknown_view_and_mode_are_clear_errors(pool_path):
    from vstk.errors import InputError, PoolError

    with pytest.raises(PoolError, match="view\\(s\\) cut not in the pool"):
        PoolDataset(pool_path, views=["cut"])
    with pytest.raises(InputError, match="mode 'slices' is unknown"):
        PoolDataset(pool_path, mode="slices")  # type: ignore[arg-type]
