"""The pool file as h5py sees it: schema, layout, links, chunking, attributes, round trips."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

from pool_helpers import (CASES, TARGETS, VIEWS, build_pool, case_image, label_for, provenance, seed_of,
                          target_image, view_image)
from vstk.pool import Compression, Pool, PoolBuilder

SHAPE = (8, 40, 48)


@pytest.fixture(scope="module")
def pool_path(tmp_path_factory):
    return build_pool(tmp_path_factory.mktemp("pool") / "pool.h5", shape=SHAPE)


def test_root_attributes_describe_the_schema(pool_path):
    with h5py.File(pool_path, "r") as f:
        attrs = dict(f.attrs)
    assert attrs["schema"] == "vstk-pool"
    assert int(attrs["schema_version"]) == 1
    assert attrs["complete"] == 1
    assert np.allclose(attrs["target_spacing"], [0.41, 0.41, 1.5])
    assert attrs["vstk_version"].count(".") >= 2
    assert attrs["created"].endswith("Z") and attrs["created"][:2] == "20"
    assert json.loads(attrs["label_names"]) == {"0": "background", "1": "VS", "2": "cochlea"}
    for word in ("/labels/{case}", "/views/{view}/{case}", "/target/{case}", "/pseudo_labels/round_{r}/{case}",
                 "hard link", "[z, y, x]", "complete"):
        assert word in attrs["description"]


def test_layout_has_views_labels_targets_and_pseudo_labels(pool_path):
    with h5py.File(pool_path, "r") as f:
        assert sorted(f) == ["labels", "pseudo_labels", "target", "views"]
        assert sorted(f["views"]) == sorted(VIEWS)
        for view in VIEWS:
            assert sorted(f["views"][view]) == sorted(CASES)
            for case in CASES:
                assert sorted(f["views"][view][case]) == ["image", "label"]
        assert sorted(f["labels"]) == sorted(CASES)
        assert sorted(f["target"]) == sorted(TARGETS)
        assert list(f["pseudo_labels"]) == ["round_1"]
        assert sorted(f["pseudo_labels/round_1"]) == sorted(TARGETS)
        conf = f["pseudo_labels/round_1"][TARGETS[0]].attrs["confidence"]
        assert 0.0 <= float(conf) <= 1.0
        entry = f["views/qsattn"][CASES[0]]
        assert entry.attrs["translator"] == "qsattn"
        assert entry.attrs["plugin_distribution"] == "vstk-qsattn"
        assert entry.attrs["plugin_version"] == "0.1.0"
        assert len(entry.attrs["checkpoint_sha256"]) == 64
        assert json.loads(entry.attrs["translator_config"]) == {"ngf": 16, "n_blocks": 3, "lr": 2e-4}
        assert int(entry.attrs["seed"]) == 7
        image = entry["image"]
        assert image.dtype == np.float32 and image.shape == SHAPE
        assert np.allclose(image.attrs["spacing"], [0.41, 0.41, 1.5])
        assert np.allclose(image.attrs["origin"], [-10.0, 5.0, 3.0])
        assert np.allclose(image.attrs["direction"], np.eye(3).ravel())


def test_labels_are_stored_once_and_hard_linked_from_every_view(pool_path):
    with h5py.File(pool_path, "r") as f:
        for case in CASES:
            shared = f["labels"][case]
            a, b = f["views/cyclegan"][case]["label"], f["views/qsattn"][case]["label"]
            assert a.id == b.id == shared.id
            addr = h5py.h5o.get_info(shared.id).addr
            assert h5py.h5o.get_info(a.id).addr == h5py.h5o.get_info(b.id).addr == addr
            assert h5py.h5o.get_info(shared.id).rc == 1 + len(VIEWS)  # one name in /labels + one per view
            assert isinstance(f["views/cyclegan"][case].get("label", getlink=True), h5py.HardLink)
            assert shared.dtype == np.uint8


def test_every_voxel_dataset_is_chunked_by_axial_slice_and_compressed(pool_path):
    datasets = []
    with h5py.File(pool_path, "r") as f:
        f.visititems(lambda name, obj: datasets.append(obj) if isinstance(obj, h5py.Dataset) else None)
        # visititems sees every object once: the hard-linked labels are not counted twice.
        assert len(datasets) == len(CASES) + len(VIEWS) * len(CASES) + 2 * len(TARGETS)
        for ds in datasets:
            z, y, x = ds.shape
            assert ds.chunks == (1, y, x), ds.name
            assert ds.compression == "gzip" and ds.compression_opts == 1 and ds.shuffle, ds.name
            assert ds.id.get_num_chunks() == z
            assert ds.id.get_storage_size() < ds.size * ds.dtype.itemsize  # compressed smaller than raw


def _attribute_is_plain(value) -> bool:
    if isinstance(value, (str, bytes, int, float, np.integer, np.floating)):
        return True
    return isinstance(value, np.ndarray) and value.dtype.kind in "iuf"


def test_no_pickles_every_attribute_is_a_number_string_or_number_array(pool_path):
    seen = []

    def check(name, obj):
        for key, value in obj.attrs.items():
            seen.append((name, key))
            assert _attribute_is_plain(value), (name, key, type(value))
            assert obj.attrs.get_id(key).dtype.kind in "iufS" or h5py.check_string_dtype(obj.attrs.get_id(key).dtype)
        if isinstance(obj, h5py.Dataset):
            assert obj.dtype.kind in "uif" and not obj.dtype.hasobject

    with h5py.File(pool_path, "r") as f:
        check("/", f)
        f.visititems(check)
        # String attributes must never hold pickle bytes (protocol header 0x80).
        for value in [f.attrs[k] for k in f.attrs]:
            assert not (isinstance(value, bytes) and value[:1] == b"\x80")
    assert len(seen) > 40


def test_round_trip_keeps_voxels_labels_and_geometry(pool_path):
    with Pool(pool_path) as pool:
        for view in VIEWS:
            for case in CASES:
                image, label = pool.read(view, case)
                expected = view_image(view, case, SHAPE)
                assert image.array.dtype == np.float32
                np.testing.assert_array_equal(image.array, expected.array)
                assert image.same_grid(expected, atol=1e-12)
                expected_label = label_for(case_image(case, SHAPE), seed_of("label", case))
                np.testing.assert_array_equal(label.array, expected_label.array)
                assert label.same_grid(expected, atol=1e-12)
                k = SHAPE[0] // 2
                np.testing.assert_array_equal(pool.read_slice(view, case, k), expected.array[k])
                np.testing.assert_array_equal(pool.read_label_slice(view, case, k), label.array[k])
        for case in TARGETS:
            target = pool.read_target(case)
            np.testing.assert_array_equal(target.array, target_image(case).array)
            assert target.spacing == (0.5, 0.5, 1.0)
            pseudo, confidence = pool.read_pseudo_label(1, case)
            assert pseudo.shape == target.shape and set(np.unique(pseudo.array)) <= {0, 1, 2}
            assert confidence == pytest.approx(pool.pseudo_labels(1)[case])
        assert pool.provenance("cyclegan", CASES[1]) == {**provenance("cyclegan")}


def test_read_slice_touches_only_its_own_chunk(tmp_path, pool_path):
    """Destroy every chunk but slice k on disk: slice k still reads, a whole-volume read fails."""
    copy = tmp_path / "damaged.h5"
    copy.write_bytes(pool_path.read_bytes())
    view, case, k = "cyclegan", CASES[0], 3
    with h5py.File(copy, "r") as f:
        ds = f[f"views/{view}/{case}/image"]
        chunks = [ds.id.get_chunk_info(i) for i in range(ds.id.get_num_chunks())]
    with open(copy, "r+b") as handle:
        for info in chunks:
            if info.chunk_offset[0] != k:
                handle.seek(info.byte_offset + 2)  # keep the zlib header, garble the deflate stream
                handle.write(os.urandom(info.size - 6))
    with Pool(copy) as pool:
        np.testing.assert_array_equal(pool.read_slice(view, case, k), view_image(view, case, SHAPE).array[k])
        from vstk.errors import PoolError

        with pytest.raises(PoolError, match=f"views/{view}/{case}/image is damaged"):
            pool.read(view, case)


def test_vstk_chunk_codec_matches_hdf5s_own_filters(pool_path):
    """Chunks deflated by vstk decode identically through HDF5's pipeline (as HDFView/h5dump read them)."""
    with Pool(pool_path) as pool, h5py.File(pool_path, "r", rdcc_nbytes=0) as f:
        for k in range(SHAPE[0]):
            via_hdf5 = f[f"views/qsattn/{CASES[2]}/image"][k]
            np.testing.assert_array_equal(pool.read_slice("qsattn", CASES[2], k), via_hdf5)
        for case in CASES:
            np.testing.assert_array_equal(pool.read_label(case).array, f[f"labels/{case}"][...])
        for case in TARGETS:
            np.testing.assert_array_equal(pool.read_target(case).array, f[f"target/{case}"][...])
            np.testing.assert_array_equal(pool.read_pseudo_label(1, case)[0].array,
                                          f[f"pseudo_labels/round_1/{case}"][...])


@pytest.mark.parametrize("compression", [Compression("gzip", 6, False), Compression("lzf", 0, True),
                                         Compression("none", 0, False)])
def test_other_compression_settings_round_trip(tmp_path, compression):
    path = build_pool(tmp_path / "pool.h5", views=("cut",), cases=CASES[:1], targets=(), compression=compression)
    with Pool(path) as pool, h5py.File(path, "r") as f:
        image, _ = pool.read("cut", CASES[0])
        np.testing.assert_array_equal(image.array, view_image("cut", CASES[0]).array)
        np.testing.assert_array_equal(pool.read_slice("cut", CASES[0], 2), image.array[2])
        ds = f[f"views/cut/{CASES[0]}/image"]
        assert ds.compression == (None if compression.codec == "none" else compression.codec)
        assert ds.chunks == (1, 40, 48)


def test_info_reports_views_cases_shapes_sizes_and_provenance(pool_path):
    with Pool(pool_path) as pool:
        info = pool.info()
    assert sorted(info["views"]) == sorted(VIEWS)
    assert info["views"]["qsattn"]["cases"] == len(CASES)
    assert len(info["entries"]) == len(VIEWS) * len(CASES)
    entry = info["entries"][0]
    assert entry["shape"] == list(SHAPE) and entry["dtype"] == "float32"
    assert entry["raw_bytes"] == int(np.prod(SHAPE)) * 4
    assert 0 < entry["stored_bytes"] < entry["raw_bytes"]
    assert entry["compression_ratio"] == pytest.approx(entry["raw_bytes"] / entry["stored_bytes"], rel=1e-3)
    assert entry["provenance"]["translator"] == entry["view"]
    assert info["file_bytes"] == os.path.getsize(pool_path)
    assert info["compression_ratio"] > 1.0
    assert info["pseudo_labels"]["1"]["cases"] == len(TARGETS)
    json.dumps(info)  # plain data


def test_digest_ignores_created_but_sees_any_content_change(tmp_path, pool_path):
    copy = tmp_path / "copy.h5"
    copy.write_bytes(pool_path.read_bytes())
    with Pool(pool_path) as pool:
        reference = pool.digest()
    assert len(reference) == 64
    with h5py.File(copy, "r+") as f:
        f.attrs["created"] = "1999-01-01T00:00:00Z"
    with Pool(copy) as pool:
        assert pool.digest() == reference
    with h5py.File(copy, "r+") as f:
        f[f"views/qsattn/{CASES[0]}"].attrs["seed"] = np.int64(8)
    with Pool(copy) as pool:
        assert pool.digest() != reference


def test_extending_a_pool_gives_the_same_content_as_building_it_whole(tmp_path):
    whole = build_pool(tmp_path / "whole.h5", views=("cyclegan", "qsattn"), cases=CASES[:2], targets=())
    first = build_pool(tmp_path / "grown.h5", views=("cyclegan",), cases=CASES[:2], targets=())
    with PoolBuilder.extend(first) as builder:
        builder.check_view_is_new("qsattn")
        for case in CASES[:2]:
            builder.add_label(case, label_for(case_image(case), seed_of("label", case)))  # identical: accepted
            builder.add_view("qsattn", case, view_image("qsattn", case), provenance("qsattn"))
        builder.finalize()
    assert not (tmp_path / "grown.h5.staging").exists()
    with Pool(whole) as a, Pool(first) as b:
        assert b.views() == ["cyclegan", "qsattn"]
        assert a.digest() == b.digest()


def test_entry_observer_gets_plain_attributes(tmp_path):
    calls = []
    with PoolBuilder(tmp_path / "p.h5", on_entry_written=lambda **kw: calls.append(kw)) as builder:
        image = case_image(CASES[0])
        builder.add_label(CASES[0], label_for(image))
        builder.add_view("cut", CASES[0], image, provenance("cut"))
        builder.finalize()
    assert len(calls) == 1
    assert calls[0]["view"] == "cut" and calls[0]["case_id"] == CASES[0]
    assert calls[0]["pool_path"] == str((tmp_path / "p.h5").absolute())
    assert calls[0]["attrs"]["spacing"] == [0.41, 0.41, 1.5] and calls[0]["attrs"]["seed"] == 7
    json.dumps(calls[0]["attrs"])


def test_zlib_fallback_without_libdeflate_writes_and_reads_the_same_format(tmp_path, monkeypatch):
    from vstk.pool import codec

    monkeypatch.setattr(codec, "_libdeflate", lambda: None)  # as if imagecodecs were not installed
    path = build_pool(tmp_path / "pool.h5", views=("cut",), cases=CASES[:1], targets=())
    with Pool(path) as pool, h5py.File(path, "r", rdcc_nbytes=0) as f:
        image, _ = pool.read("cut", CASES[0])
        np.testing.assert_array_equal(image.array, view_image("cut", CASES[0]).array)
        np.testing.assert_array_equal(f[f"views/cut/{CASES[0]}/image"][...], image.array)
