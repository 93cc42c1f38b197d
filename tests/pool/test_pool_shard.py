"""Sharded pool building: shards built by separate processes, merged, equal a single-process build."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from pool_helpers import CASES, TARGETS, VIEWS, build_pool, case_image, label_for, provenance, seed_of, view_image
from vstk.errors import InputError, PoolError
from vstk.pool import Pool, PoolBuilder
from vstk.pool.schema import ATTR_SHARD
from vstk.pool.shard import ShardPlan, ShardSpec, merge_shards

DRIVER = Path(__file__).with_name("shard_build_driver.py")
SHAPE = (6, 32, 40)


def shard(path: Path, spec: str, **kwargs) -> Path:
    return build_pool(path, shape=SHAPE, pseudo=False, shard=ShardSpec.parse(spec), **kwargs)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> str:
    path = build_pool(tmp_path_factory.mktemp("single") / "pool.h5", shape=SHAPE, pseudo=False)
    with Pool(path) as pool:
        return pool.digest()


def test_two_worker_processes_build_shards_whose_merge_equals_the_single_build(tmp_path, single):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    workers = [subprocess.Popen([sys.executable, str(DRIVER), str(tmp_path / f"shard{i}.h5"), f"{i}/2",
                                 "--shape", ",".join(map(str, SHAPE))], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for i in (1, 2)]
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
    with Pool(tmp_path / "shard1.h5") as one, Pool(tmp_path / "shard2.h5") as two:
        # 6 view entries cut view by view: cyclegan x 3 cases, then qsattn x 3; targets 1 + 1.
        assert (one.views(), two.views()) == (["cyclegan"], ["qsattn"])
        assert one.label_cases() == two.label_cases() == sorted(CASES)
        assert (one.targets(), two.targets()) == ([sorted(TARGETS)[0]], [sorted(TARGETS)[1]])
    merged = merge_shards([tmp_path / "shard2.h5", tmp_path / "shard1.h5"], tmp_path / "pool.h5")
    with Pool(merged) as pool:
        assert pool.digest() == single
        assert ATTR_SHARD not in pool.file.attrs
        image, label = pool.read("qsattn", CASES[1])
        assert np.array_equal(image.array, view_image("qsattn", CASES[1], SHAPE).array)
        assert pool.file[f"views/qsattn/{CASES[1]}/label"].id == pool.file[f"labels/{CASES[1]}"].id  # hard link
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool.h5", "shard1.h5", "shard2.h5"]


def test_shares_cut_views_then_case_ranges_evenly():
    plan = ShardPlan.of(["b", "a"], ["c2", "c1", "c3"], ["t1", "t2"])
    shares = [plan.share(ShardSpec(i, 4)) for i in range(1, 5)]
    assert [s.views for s in shares] == [(("a", "c1"),), (("a", "c2"), ("a", "c3")), (("b", "c1"),),
                                         (("b", "c2"), ("b", "c3"))]
    assert [s.labels for s in shares] == [("c1",), ("c2", "c3"), ("c1",), ("c2", "c3")]
    assert [s.targets for s in shares] == [(), ("t1",), (), ("t2",)]
    with pytest.raises(InputError, match=r"--shard '3' is not of the form I/N"):
        ShardSpec.parse("3")
    with pytest.raises(InputError, match=r"shard 0/2 is not allowed"):
        ShardSpec.parse("0/2")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shards")
    return {spec: shard(root / f"s{spec[0]}of{spec[2]}.h5", spec) for spec in ("1/2", "2/2", "1/3")}


def merge_error(paths, tmp_path) -> str:
    with pytest.raises(PoolError) as info:
        merge_shards(paths, tmp_path / "merged.h5")
    assert not (tmp_path / "merged.h5").exists()
    return str(info.value)


def test_merge_rejects_a_missing_or_repeated_shard(shards, tmp_path):
    assert "shard 2/2 is missing" in merge_error([shards["1/2"]], tmp_path)
    assert "shard 1/2 is given twice" in merge_error([shards["1/2"], shards["2/2"], shards["1/2"]], tmp_path)
    message = merge_error([shards["1/2"], shards["1/3"]], tmp_path)
    assert "belongs to another build" in message and "fix: build all shards with the same" in message


def test_merge_rejects_a_plain_pool_and_overlapping_or_incomplete_shards(shards, tmp_path):
    plain = build_pool(tmp_path / "plain.h5", shape=SHAPE, pseudo=False)
    assert "not a pool shard" in merge_error([plain, shards["2/2"]], tmp_path)
    plan = ShardPlan.of(VIEWS, CASES, TARGETS)
    # Shard 2/2 that also holds an entry of shard 1/2.
    overlapping = build_pool(tmp_path / "overlap.h5", shape=SHAPE, pseudo=False, shard=ShardSpec(2, 2))
    with PoolBuilder.extend(overlapping) as builder:
        builder.add_view("cyclegan", CASES[0], view_image("cyclegan", CASES[0], SHAPE), provenance("cyclegan"))
        builder.finalize()
    with h5py.File(overlapping, "a") as f:  # extend drops extra root attributes: restore it
        f.attrs[ATTR_SHARD] = plan.attribute(ShardSpec(2, 2))
    assert f"view 'cyclegan' case '{CASES[0]}' is in two shards" in merge_error([shards["1/2"], overlapping], tmp_path)
    # Shard 1/2 that misses one case of its share.
    partial = tmp_path / "partial.h5"
    with PoolBuilder(partial, root_attrs={ATTR_SHARD: plan.attribute(ShardSpec(1, 2))}) as builder:
        for case in CASES:
            builder.add_label(case, label_for(case_image(case, SHAPE), seed_of("label", case)))
        for case in CASES[:2]:
            builder.add_view("cyclegan", case, view_image("cyclegan", case, SHAPE), provenance("cyclegan"))
        builder.finalize()
    message = merge_error([partial, shards["2/2"]], tmp_path)
    assert "shard 1/2 lacks view 'cyclegan' case" in message and "--shard 1/2" in message


def test_merge_rejects_shards_that_disagree_on_spacing_or_labels(shards, tmp_path):
    coarse = shard(tmp_path / "coarse.h5", "2/2", target_spacing=(0.5, 0.5, 1.5))
    assert "target spacing (0.5, 0.5, 1.5) differs" in merge_error([shards["1/2"], coarse], tmp_path)
    plan = ShardPlan.of(VIEWS, CASES, TARGETS)
    relabelled = tmp_path / "relabelled.h5"
    share = plan.share(ShardSpec(2, 2))
    with PoolBuilder(relabelled, root_attrs={ATTR_SHARD: plan.attribute(ShardSpec(2, 2))}) as builder:
        for case in share.labels:
            builder.add_label(case, label_for(case_image(case, SHAPE), seed_of("other label", case)))
        for view, case in share.views:
            builder.add_view(view, case, view_image(view, case, SHAPE), provenance(view))
        for case in share.targets:
            from pool_helpers import target_image

            builder.add_target(case, target_image(case))
        builder.finalize()
    assert "label of case" in merge_error([shards["1/2"], relabelled], tmp_path)


def test_merge_is_all_or_nothing_and_never_replaces_a_pool_unasked(shards, tmp_path):
    out = tmp_path / "pool.h5"

    def fail(done, total, message):
        if done == 3:
            raise KeyboardInterrupt  # as a kill in the middle of copying

    with pytest.raises(KeyboardInterrupt):
        merge_shards([shards["1/2"], shards["2/2"]], out, progress=fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".pool.h5.merge.lock"]
    merge_shards([shards["1/2"], shards["2/2"]], out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool.h5"]
    with pytest.raises(PoolError, match="already exists"):
        merge_shards([shards["1/2"], shards["2/2"]], out)
    merge_shards([shards["1/2"], shards["2/2"]], out, overwrite=True)
    with Pool(out) as pool:
        assert pool.views() == sorted(VIEWS)


def test_a_shard_build_does_not_resume_another_shards_file(shards, tmp_path):
    path = shard(tmp_path / "s.h5", "1/2")
    with pytest.raises(PoolError, match="root attribute shard="):
        shard(path, "2/2")
