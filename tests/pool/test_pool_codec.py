"""vstk's own shuffle + deflate chunk codec: standard zlib streams, stored noise planes, offset reads."""

from __future__ import annotations

import zlib

import h5py
import numpy as np
import pytest

from pool_helpers import mr_image
from vstk.pool import Compression, codec
from vstk.pool.codec import SliceReader, deflate, deflate_planes, shuffle_bytes, write_volume
from vstk.pool.reader import _DAMAGED

SHAPE = (6, 96, 112)


@pytest.fixture(params=["libdeflate", "zlib"])
def encoder(request, monkeypatch):
    """Run a test with imagecodecs' libdeflate and again with only Python's zlib."""
    if request.param == "zlib":
        monkeypatch.setattr(codec, "_libdeflate", lambda: None)
    elif codec._libdeflate() is None:
        pytest.skip("imagecodecs (libdeflate) is not installed")
    return request.param


def _block_types(blob: bytes) -> int:
    """BTYPE of the first deflate block after the 2-byte zlib header (0 stored, 1 fixed, 2 dynamic)."""
    return (blob[2] >> 1) & 0b11


def test_noise_byte_planes_are_stored_and_the_stream_is_plain_zlib(encoder):
    plane = mr_image(SHAPE, seed=3).array[SHAPE[0] // 2]
    shuffled = shuffle_bytes(plane)
    blob = deflate_planes(shuffled, 1)
    assert zlib.decompress(blob) == shuffled.tobytes()  # any inflater, Adler-32 included
    assert _block_types(blob) == 0  # the low mantissa bytes of noise go into stored blocks
    # Planes 0-2 stored (plus 5 header bytes per 64 KiB), plane 3 (sign + exponent) deflated.
    assert 0.75 * plane.nbytes < len(blob) < 0.9 * plane.nbytes


def test_compressible_planes_are_deflated(encoder):
    for plane in (np.zeros(SHAPE[1:], np.float32), np.full(SHAPE[1:], 100.0, np.float32)):
        blob = deflate_planes(shuffle_bytes(plane), 1)
        assert zlib.decompress(blob) == shuffle_bytes(plane).tobytes()
        assert len(blob) < 0.01 * plane.nbytes


def test_pure_noise_is_stored_whole_with_a_final_stored_block(encoder):
    noise = np.random.default_rng(0).integers(0, 256, (4, 70_000), dtype=np.uint8)  # > one 64 KiB block a plane
    blob = deflate_planes(noise, 1)
    assert zlib.decompress(blob) == noise.tobytes()
    assert len(blob) == 2 + noise.size + 5 * 5 + 4  # header, 5 stored blocks, Adler-32


def test_damaged_stored_bytes_fail_the_checksum(encoder):
    plane = mr_image(SHAPE, seed=4).array[0]
    blob = bytearray(deflate_planes(shuffle_bytes(plane), 1))
    blob[100] ^= 0xFF  # inside the first stored block: only the Adler-32 can notice
    with pytest.raises(_DAMAGED):  # what Pool turns into "data of ... is damaged"
        codec.inflate(bytes(blob), plane.nbytes)
    with pytest.raises(zlib.error):
        zlib.decompress(bytes(blob))


def test_slices_read_by_byte_offset_match_hdf5s_own_pipeline(tmp_path, encoder):
    volume = mr_image(SHAPE, seed=5).array
    path = tmp_path / "v.h5"
    with h5py.File(path, "w") as f:
        write_volume(f, "image", volume, Compression(), threads=2)
    with h5py.File(path, "r", rdcc_nbytes=0) as f:
        reader = SliceReader(f["image"])
        assert reader._fd is not None  # chunks are read with os.pread at their byte offsets
        for k in range(SHAPE[0]):
            np.testing.assert_array_equal(reader.read(k), volume[k])
            np.testing.assert_array_equal(f["image"][k], volume[k])  # HDF5's filters decode it too
        np.testing.assert_array_equal(reader.read_all(threads=2), volume)


def test_chunks_deflated_whole_as_hdf5_writes_them_still_read(tmp_path):
    """Pools written before stored planes (one deflate stream per chunk) and HDF5's own filter output."""
    volume = mr_image(SHAPE, seed=6).array
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("by_hdf5", data=volume, chunks=(1, *SHAPE[1:]), **Compression().dataset_kwargs())
        old = f.create_dataset("old_vstk", shape=SHAPE, dtype=volume.dtype, chunks=(1, *SHAPE[1:]),
                               **Compression().dataset_kwargs())
        for k in range(SHAPE[0]):
            old.id.write_direct_chunk((k, 0, 0), deflate(shuffle_bytes(volume[k]), 1))
    with h5py.File(path, "r") as f:
        for name in ("by_hdf5", "old_vstk"):
            reader = SliceReader(f[name])
            np.testing.assert_array_equal(reader.read_all(threads=2), volume)
            np.testing.assert_array_equal(reader.read(SHAPE[0] - 1), volume[-1])


def test_reads_without_a_file_descriptor_go_through_read_direct_chunk(tmp_path, monkeypatch):
    volume = mr_image(SHAPE, seed=7).array
    path = tmp_path / "v.h5"
    with h5py.File(path, "w") as f:
        write_volume(f, "image", volume, Compression())
    monkeypatch.setattr(SliceReader, "_file_descriptor", staticmethod(lambda dataset: None))
    with h5py.File(path, "r") as f:
        reader = SliceReader(f["image"])
        assert reader._fd is None
        np.testing.assert_array_equal(reader.read(2), volume[2])
        np.testing.assert_array_equal(reader.read_all(threads=2), volume)


def test_empty_slices_share_one_zero_stream_and_read_back(tmp_path, encoder):
    labels = np.zeros((4, 40, 48), np.uint8)
    labels[2, 10:20, 5:9] = 1
    images = np.zeros((3, 40, 48), np.float32)
    images[1] = -0.0  # not zero bytes: the sign bit is set, it must be stored as it is
    path = tmp_path / "v.h5"
    with h5py.File(path, "w") as f:
        write_volume(f, "label", labels, Compression())
        write_volume(f, "image", images, Compression())
    with h5py.File(path, "r") as f:
        chunks = [f["label"].id.read_direct_chunk((k, 0, 0))[1] for k in range(4)]
        assert chunks[0] == chunks[1] == chunks[3] != chunks[2]
        assert zlib.decompress(chunks[0]) == bytes(40 * 48)
        np.testing.assert_array_equal(f["label"][...], labels)
        stored = f["image"][...]
        np.testing.assert_array_equal(stored.view(np.uint32), images.view(np.uint32))
        np.testing.assert_array_equal(SliceReader(f["image"]).read(1).view(np.uint32), images[1].view(np.uint32))
