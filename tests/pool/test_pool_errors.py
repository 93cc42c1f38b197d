"""Bad input and damaged files: one clear PoolError/InputError each, naming the culprit and the fix."""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest

from pool_helpers import CASES, build_pool, case_image, label_for, provenance, target_image, view_image
from vstk.errors import InputError, PoolError
from vstk.pool import Pool, PoolBuilder
from vstk.volume import Volume


@pytest.fixture
def small_pool(tmp_path):
    return build_pool(tmp_path / "pool.h5", views=("cyclegan",), cases=CASES[:2], targets=())


def test_newer_schema_version_asks_to_upgrade_vstk(small_pool):
    with h5py.File(small_pool, "r+") as f:
        f.attrs["schema_version"] = np.int64(2)
    with pytest.raises(PoolError) as info:
        Pool(small_pool)
    message = str(info.value)
    assert str(small_pool) in message
    assert "schema version 2 is newer" in message and "up to 1" in message
    assert "upgrade vstk" in message and "pip install -U vstk" in message
    with pytest.raises(PoolError, match="schema version 2"):
        PoolBuilder.extend(small_pool)


def test_a_foreign_hdf5_file_is_not_a_pool(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(PoolError, match="not a vstk pool"):
        Pool(path)


def test_view_clash_when_adding_a_view_that_exists(small_pool):
    with PoolBuilder.extend(small_pool) as builder:
        with pytest.raises(PoolError) as info:
            builder.check_view_is_new("cyclegan")
        assert "view 'cyclegan' already exists" in str(info.value) and str(small_pool) in str(info.value)
        assert "choose another view name" in info.value.fix
        with pytest.raises(PoolError, match="view 'cyclegan' already exists"):
            builder.add_view("cyclegan", CASES[0], view_image("cyclegan", CASES[0]), provenance("cyclegan"))
    with Pool(small_pool) as pool:  # untouched
        assert pool.views() == ["cyclegan"]


def test_extend_refuses_a_different_label_for_a_case_in_the_pool(small_pool):
    image = case_image(CASES[0])
    other = label_for(image, seed=123)
    with PoolBuilder.extend(small_pool) as builder, pytest.raises(PoolError, match="already has a different label"):
        builder.add_label(CASES[0], other)


def test_image_off_its_label_grid_is_refused_in_either_order(tmp_path):
    image = case_image(CASES[0])
    shifted = dataclasses.replace(image, origin=(image.origin[0] + 2.0, *image.origin[1:]))
    with PoolBuilder(tmp_path / "a.h5") as builder:
        builder.add_label(CASES[0], label_for(image))
        with pytest.raises(InputError) as info:
            builder.add_view("cut", CASES[0], shifted, provenance("cut"))
        message = str(info.value)
        assert "view 'cut', case 'crossmoda2022_ldn_1'" in message and "origin" in message
        assert "label's grid" in info.value.fix
        assert not builder.has("cut", CASES[0])
    with PoolBuilder(tmp_path / "b.h5") as builder:
        builder.add_view("cut", CASES[0], image, provenance("cut"))
        cropped = Volume(label_for(image).array[:, :, :-1], image.spacing, image.origin, image.direction)
        with pytest.raises(InputError, match=r"grids differ: size \(48, 40, 8\) vs \(47, 40, 8\)"):
            builder.add_label(CASES[0], cropped)


def test_missing_label_for_a_view_entry_fails_finalize(tmp_path):
    with PoolBuilder(tmp_path / "p.h5") as builder:
        builder.add_view("cut", CASES[1], case_image(CASES[1]), provenance("cut"))
        with pytest.raises(PoolError) as info:
            builder.finalize()
    message = str(info.value)
    assert "view 'cut', case 'crossmoda2022_etz_2' has no label" in message
    assert "add_label('crossmoda2022_etz_2'" in message
    assert not (tmp_path / "p.h5").exists()  # nothing half-made is visible


def test_pseudo_label_without_target_fails_finalize(tmp_path):
    image = target_image("t1")
    with PoolBuilder(tmp_path / "p.h5") as builder:
        builder.add_pseudo_label(2, "t1", label_for(image), 0.9)
        with pytest.raises(PoolError, match="pseudo label round 2, case 't1' has no target image"):
            builder.finalize()


def test_truncated_pool_is_reported_not_read(small_pool):
    data = small_pool.read_bytes()
    small_pool.write_bytes(data[: len(data) // 2])
    with pytest.raises(PoolError) as info:
        Pool(small_pool)
    assert "truncated or corrupt" in str(info.value) and str(small_pool) in str(info.value)
    assert "rerun" in info.value.fix


def test_garbage_file_is_reported(tmp_path):
    path = tmp_path / "pool.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 8)
    with pytest.raises(PoolError, match="truncated or corrupt"):
        Pool(path)


def test_pool_without_completion_marker_is_incomplete(small_pool):
    with h5py.File(small_pool, "r+") as f:
        f.attrs["complete"] = np.int64(0)
    with pytest.raises(PoolError, match="incomplete") as info:
        Pool(small_pool)
    assert "resumes" in info.value.fix


def test_missing_pool_file(tmp_path):
    with pytest.raises(PoolError, match="pool file not found"):
        Pool(tmp_path / "nope.h5")


def test_bad_provenance_labels_and_names_are_input_errors(tmp_path):
    image = case_image(CASES[0])
    with PoolBuilder(tmp_path / "p.h5") as builder:
        with pytest.raises(InputError, match="lacks checkpoint_sha256"):
            builder.add_view("cut", CASES[0], image, {k: v for k, v in provenance("cut").items()
                                                       if k != "checkpoint_sha256"})
        with pytest.raises(InputError, match="not 64 lowercase hex"):
            builder.add_view("cut", CASES[0], image, provenance("cut", checkpoint_sha256="abc"))
        with pytest.raises(InputError, match=r"label values \[3\]"):
            builder.add_label(CASES[0], image.with_array(np.full(image.shape, 3, np.uint8)))
        with pytest.raises(InputError, match="contains '__'"):
            builder.add_view("cycle__gan", CASES[0], image, provenance("cut"))
        with pytest.raises(InputError, match="not allowed"):
            builder.add_label("../evil", label_for(image))
        with pytest.raises(InputError, match="NaN/Inf"):
            builder.add_view("cut", CASES[0], image.with_array(np.full(image.shape, np.nan, np.float32)),
                             provenance("cut"))
        with pytest.raises(InputError, match=r"confidence 1.5"):
            builder.add_pseudo_label(0, "t", label_for(image), 1.5)


def test_rerunning_a_finished_build_keeps_the_pool_and_overwrite_rebuilds(small_pool):
    with Pool(small_pool) as pool:
        before = pool.digest()
    mtime = small_pool.stat().st_mtime_ns
    build_pool(small_pool, views=("cyclegan",), cases=CASES[:2], targets=())  # every entry counts as done
    assert small_pool.stat().st_mtime_ns == mtime
    with Pool(small_pool) as pool:
        assert pool.digest() == before
    rebuilt = build_pool(small_pool, views=("cut",), cases=CASES[:1], targets=(), overwrite=True)
    with Pool(rebuilt) as pool:
        assert pool.views() == ["cut"]


def test_existing_pool_of_another_spacing_or_damaged_is_not_resumed(small_pool):
    with pytest.raises(PoolError, match=r"target spacing \(0.5, 0.5, 1.0\) differs") as info:
        PoolBuilder(small_pool, target_spacing=(0.5, 0.5, 1.0))
    assert "--overwrite" in info.value.fix
    small_pool.write_bytes(small_pool.read_bytes()[:1000])
    with pytest.raises(PoolError, match="cannot be resumed: not a readable HDF5 file") as info:
        PoolBuilder(small_pool)
    assert "--overwrite" in info.value.fix
    assert not small_pool.with_name("pool.h5.staging").exists()


def test_two_builders_of_one_pool_are_refused(tmp_path):
    with PoolBuilder(tmp_path / "p.h5"):
        with pytest.raises(PoolError, match="another process is building this pool"):
            PoolBuilder(tmp_path / "p.h5")


def test_reader_names_unknown_view_and_case(small_pool):
    with Pool(small_pool) as pool:
        with pytest.raises(PoolError, match=r"view 'cut' is not in the pool \(views: cyclegan\)"):
            pool.read("cut", CASES[0])
        with pytest.raises(PoolError, match="case 'nope' is not in view 'cyclegan'"):
            pool.read_slice("cyclegan", "nope", 0)
        with pytest.raises(PoolError, match=r"slice 8 is outside 0..7"):
            pool.read_slice("cyclegan", CASES[0], 8)
