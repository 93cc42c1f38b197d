"""Benchmark of the HDF5 pool: build throughput vs numpy.save, compression, slice-read latency.

    python benchmarks/pool_bench.py [--out DIR] [--shape 120,512,512] [--views 2] [--slow] [--phantom]

For every compression setting it builds a pool (staging + finalize, fsync on, as
``vstk pool build`` does) of ``views`` translated MR-like volumes plus their label, and in
the same run writes the same arrays with ``numpy.save`` to the same folder. Throughput is
MB of voxels (raw bytes) per second. Then it reads random axial slices of one entry through
``Pool.read_slice`` (median and p95 latency) and splits a slice read into its steps (chunk
fetch, inflate, un-shuffle; medians of separately timed steps). Prints Markdown tables.

The volumes are synthetic but MR-like: a head-shaped ellipsoid, smooth blobs of different
brightness, smooth tissue texture, a bias field and Rician noise (float32), so compression
ratios are realistic (neither zeros nor pure noise). ``--phantom`` also reports compression
ratios on vstk's procedural phantom (ceT1 volumes from ``vstk.phantom.generate_phantom``).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vstk.pool import Compression, Pool, PoolBuilder
from vstk.pool.codec import default_threads
from vstk.volume import Volume

log = logging.getLogger("pool_bench")

SETTINGS = {
    "none": Compression("none", 0, False),
    "lzf": Compression("lzf", 0, False),
    "lzf+shuffle": Compression("lzf", 0, True),
    "gzip-1": Compression("gzip", 1, False),
    "gzip-1+shuffle": Compression("gzip", 1, True),
    "gzip-4+shuffle": Compression("gzip", 4, True),
}
SLOW_SETTINGS = {
    "gzip-6+shuffle": Compression("gzip", 6, True),
    "gzip-9+shuffle": Compression("gzip", 9, True),
}


def mr_like(shape: tuple[int, int, int], seed: int, spacing=(0.41, 0.41, 1.5)) -> Volume:
    """A float32 MR-like volume [z, y, x]: head, blobs, texture, bias field, Rician noise."""
    from scipy.ndimage import zoom

    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    z = np.linspace(-1, 1, nz, dtype=np.float32)[:, None, None]
    y = np.linspace(-1, 1, ny, dtype=np.float32)[None, :, None]
    x = np.linspace(-1, 1, nx, dtype=np.float32)[None, None, :]
    head = ((x / 0.85) ** 2 + (y / 0.95) ** 2 + (z / 1.3) ** 2 < 1).astype(np.float32)
    image = 220.0 * head
    for _ in range(14):  # separable Gaussian blobs: CSF, tumour-like, vessels
        c, r, amp = rng.uniform(-0.6, 0.6, 3), rng.uniform(0.04, 0.25, 3), rng.uniform(-150, 500)
        image += amp * (np.exp(-(z - c[0]) ** 2 / (2 * r[0] ** 2)) * np.exp(-(y - c[1]) ** 2 / (2 * r[1] ** 2))
                        * np.exp(-(x - c[2]) ** 2 / (2 * r[2] ** 2))) * head
    coarse = rng.normal(0, 1, (max(2, nz // 4), max(2, ny // 8), max(2, nx // 8))).astype(np.float32)
    texture = zoom(coarse, np.asarray(shape) / np.asarray(coarse.shape), order=1)[:nz, :ny, :nx]
    image *= 1.0 + 0.08 * texture
    image *= np.exp(0.2 * x * y + 0.1 * z)  # bias field
    sigma = 12.0
    real = image + sigma * rng.standard_normal(shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(shape, dtype=np.float32)
    return Volume(np.sqrt(real * real + imag * imag).astype(np.float32), spacing)


def label_of(image: Volume) -> Volume:
    nz, ny, nx = image.shape
    z, y, x = np.ogrid[:nz, :ny, :nx]
    label = np.zeros(image.shape, np.uint8)
    label[((x - nx * 0.6) ** 2 + (y - ny * 0.5) ** 2 < (nx * 0.05) ** 2) & (np.abs(z - nz / 2) < nz * 0.1)] = 1
    label[((x - nx * 0.3) ** 2 + (y - ny * 0.45) ** 2 < (nx * 0.01) ** 2) & (np.abs(z - nz / 2) < 3)] = 2
    return image.with_array(label)


def provenance(view: str) -> dict:
    return {"translator": view, "plugin_distribution": f"vstk-{view}", "plugin_version": "0.1.0",
            "checkpoint_sha256": hashlib.sha256(view.encode()).hexdigest(),
            "translator_config": {"ngf": 64, "n_blocks": 9}, "seed": 0}


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def numpy_save(arrays: list[np.ndarray], folder: Path, *, fsync: bool) -> float:
    """Seconds to np.save every array into ``folder`` (optionally fsync'ed)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    start = time.perf_counter()
    for i, array in enumerate(arrays):
        path = folder / f"{i}.npy"
        np.save(path, array)
        if fsync:
            _fsync(path)
    seconds = time.perf_counter() - start
    shutil.rmtree(folder)
    return seconds


def build(path: Path, images: dict[str, Volume], label: Volume, compression: Compression, *,
          threads: int | None, durable: bool = True) -> tuple[float, float]:
    """(staging seconds, finalize seconds) of a pool with one case and one entry per view."""
    for leftover in (path, path.with_name(path.name + ".staging")):
        shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
    start = time.perf_counter()
    with PoolBuilder(path, compression=compression, threads=threads, durable=durable) as builder:
        builder.add_label("case1", label)
        for view, image in images.items():
            builder.add_view(view, "case1", image, provenance(view))
        staged = time.perf_counter()
        builder.finalize()
    return staged - start, time.perf_counter() - staged


def direct_write(path: Path, images: dict[str, Volume], label: Volume, compression: Compression,
                 threads: int | None) -> float:
    """Seconds to write the same datasets straight into one HDF5 file: no staging, no finalize,
    no fsync (NOT crash-safe; the baseline that shows what the crash safety costs)."""
    import h5py

    from vstk.pool.builder import LIBVER
    from vstk.pool.codec import write_volume

    path.unlink(missing_ok=True)
    start = time.perf_counter()
    with h5py.File(path, "w", libver=LIBVER) as f:
        write_volume(f.require_group("labels"), "case1", label.array, compression, threads=threads)
        for view, image in images.items():
            write_volume(f.require_group(f"views/{view}/case1"), "image", image.array, compression, threads=threads)
    seconds = time.perf_counter() - start
    path.unlink()
    return seconds


def slice_latency(path: Path, view: str, reads: int, seed: int = 0) -> tuple[float, float]:
    """(median, p95) milliseconds of Pool.read_slice at random axial slices."""
    rng = np.random.default_rng(seed)
    with Pool(path) as pool:
        nz = pool.shape(view, "case1")[0]
        pool.read_slice(view, "case1", 0)  # open the dataset and its reader once
        times = []
        for k in rng.integers(0, nz, reads):
            start = time.perf_counter()
            pool.read_slice(view, "case1", int(k))
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), float(np.percentile(times, 95))


def slice_split(path: Path, view: str, reads: int, seed: int = 0) -> str:
    """Median milliseconds of the three steps of a fast-path slice read: fetching the chunk's
    bytes (``SliceReader.raw_chunk``: ``os.pread`` at its cached offset), inflating them and
    un-shuffling the bytes (0 where a step does not apply); or why there is no split."""
    from vstk.pool.codec import SliceReader, inflate, unshuffle_bytes

    rng = np.random.default_rng(seed)
    with Pool(path) as pool:
        reader = SliceReader(pool.file[f"views/{view}/case1/image"])
        mode = reader._mode
        if mode is None:
            return "HDF5 filters"
        fetch, decompress, unshuffle = [], [], []
        for k in rng.integers(0, reader.shape[0], reads):
            start = time.perf_counter()
            _, blob = reader.raw_chunk(int(k))
            fetched = time.perf_counter()
            data = inflate(blob, reader.plane_nbytes) if mode in ("deflate", "shuffle+deflate") else blob
            inflated = time.perf_counter()
            if mode == "shuffle+deflate":
                unshuffle_bytes(data, reader.dtype, reader.plane_shape)
            done = time.perf_counter()
            fetch.append((fetched - start) * 1e3)
            decompress.append((inflated - fetched) * 1e3)
            unshuffle.append((done - inflated) * 1e3)
    return " / ".join(f"{statistics.median(times):.2f}" for times in (fetch, decompress, unshuffle))


def hdf5_filter_latency(path: Path, view: str, reads: int, seed: int = 0) -> tuple[float, float]:
    """Same reads through h5py's ``dataset[k]`` (HDF5's own filter pipeline, chunk cache off), for comparison."""
    import h5py

    rng = np.random.default_rng(seed)
    with h5py.File(path, "r", rdcc_nbytes=0) as f:
        ds = f[f"views/{view}/case1/image"]
        times = []
        for k in rng.integers(0, ds.shape[0], reads):
            start = time.perf_counter()
            ds[int(k)]
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), float(np.percentile(times, 95))


def phantom_ratios(settings: dict[str, Compression], out: Path) -> list[str]:
    """Markdown rows: stored/raw of phantom ceT1 volumes per setting."""
    from vstk.crossmoda import discover
    from vstk.phantom import PhantomConfig, generate_phantom
    from vstk.volume import read_nifti

    folder = out / "phantom"
    generate_phantom(folder, PhantomConfig(cases=2, test_cases=2, paired_cases=2, geometry="slab"))
    volumes = [read_nifti(case.ceT1) for case in discover(folder / "train").source]
    rows = []
    raw = sum(v.array.astype(np.float32).nbytes for v in volumes)
    for name, compression in settings.items():
        path = out / "phantom.h5"
        path.unlink(missing_ok=True)
        with PoolBuilder(path, compression=compression, durable=False, overwrite=True) as builder:
            for i, volume in enumerate(volumes):
                builder.add_label(f"c{i}", volume.with_array(np.zeros(volume.shape, np.uint8)))
                builder.add_view("phantom", f"c{i}", volume, provenance("phantom"))
            builder.finalize()
        with Pool(path) as pool:
            stored = sum(e["stored_bytes"] for e in pool.info()["entries"])
        rows.append(f"| {name} | {raw / 1e6:.1f} | {stored / raw:.3f} |")
    shutil.rmtree(folder, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--shape", default="120,512,512", help="z,y,x voxels of each volume")
    parser.add_argument("--views", type=int, default=2, help="translated volumes per build")
    parser.add_argument("--reads", type=int, default=300, help="random slice reads per setting")
    parser.add_argument("--threads", type=int, default=None, help="compression threads [usable CPUs]")
    parser.add_argument("--slow", action="store_true", help="also gzip-6 and gzip-9 (minutes)")
    parser.add_argument("--phantom", action="store_true", help="also compression ratios on phantom ceT1")
    parser.add_argument("--settings", default=None, help="comma-separated subset of settings")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("vstk").setLevel(logging.WARNING)

    shape = tuple(int(v) for v in args.shape.split(","))
    settings = {**SETTINGS, **(SLOW_SETTINGS if args.slow else {})}
    if args.settings:
        settings = {k: v for k, v in {**SETTINGS, **SLOW_SETTINGS}.items() if k in args.settings.split(",")}
    out = args.out or Path(tempfile.mkdtemp(prefix="vstk-pool-bench-", dir=os.environ.get("TMPDIR", "/tmp")))
    out.mkdir(parents=True, exist_ok=True)
    threads = args.threads or default_threads()

    log.info("generating %d MR-like volumes of %s ...", args.views, shape)
    images = {f"view{i}": mr_like(shape, seed=i) for i in range(args.views)}
    label = label_of(next(iter(images.values())))
    arrays = [label.array] + [v.array for v in images.values()]
    raw_mb = sum(a.nbytes for a in arrays) / 1e6

    rows = []
    for name, compression in settings.items():
        log.info("setting %s ...", name)
        np_s = statistics.median(numpy_save(arrays, out / "npy", fsync=False) for _ in range(3))
        np_sync_s = numpy_save(arrays, out / "npy", fsync=True)
        path = out / f"pool-{name}.h5"
        staging_s, finalize_s = build(path, images, label, compression, threads=threads)
        total = staging_s + finalize_s
        with Pool(path) as pool:
            info = pool.info()
        image_raw = sum(e["raw_bytes"] for e in info["entries"])
        image_stored = sum(e["stored_bytes"] for e in info["entries"])
        median_ms, p95_ms = slice_latency(path, "view0", args.reads)
        split = slice_split(path, "view0", args.reads)
        rows.append({
            "setting": name, "MB voxels": f"{raw_mb:.0f}", "build s": f"{total:.2f}",
            "staging s": f"{staging_s:.2f}", "finalize s": f"{finalize_s:.2f}",
            "build MB/s": f"{raw_mb / total:.0f}", "np.save MB/s": f"{raw_mb / np_s:.0f}",
            "vs np.save": f"{np_s / total:.3f}", "np.save+fsync MB/s": f"{raw_mb / np_sync_s:.0f}",
            "vs np.save+fsync": f"{np_sync_s / total:.3f}",
            "image stored/raw": f"{image_stored / image_raw:.3f}",
            "file/raw": f"{info['file_bytes'] / (raw_mb * 1e6):.3f}",
            "slice median ms": f"{median_ms:.2f}", "slice p95 ms": f"{p95_ms:.2f}",
            "split read/inflate/unshuffle ms": split,
        })
        if name != "gzip-1+shuffle":
            path.unlink()

    default = out / "pool-gzip-1+shuffle.h5"
    extra = []
    if default.exists():
        med, p95 = hdf5_filter_latency(default, "view0", args.reads)
        extra.append(f"| gzip-1+shuffle via h5py dataset[k] (HDF5 filters, zlib) | {med:.2f} | {p95:.2f} |")
        for label_text, kwargs in (("1 thread", {"threads": 1}), ("no fsync", {"threads": threads, "durable": False})):
            staging_s, finalize_s = build(out / "variant.h5", images, label, Compression(), **kwargs)
            extra.append(f"| build gzip-1+shuffle, {label_text} | {raw_mb / (staging_s + finalize_s):.0f} MB/s | "
                         f"staging {staging_s:.2f} s, finalize {finalize_s:.2f} s |")
        (out / "variant.h5").unlink(missing_ok=True)
        for name in ("gzip-1+shuffle", "none"):
            seconds = direct_write(out / "direct.h5", images, label, SETTINGS[name], threads)
            extra.append(f"| direct single-file write, {name} (not crash-safe) | {raw_mb / seconds:.0f} MB/s | "
                         f"{seconds:.2f} s |")

    columns = list(rows[0])
    print(f"\n### Pool build and slice reads: {args.views} x float32 {shape} + uint8 label "
          f"({raw_mb:.0f} MB of voxels), {threads} compression thread(s), {os.cpu_count()} CPUs\n")
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        print("| " + " | ".join(row[c] for c in columns) + " |")
    if extra:
        print("\n| variant | median / MB/s | p95 / split |\n|---|---|---|")
        print("\n".join(extra))
    if args.phantom:
        print("\n### Compression of phantom ceT1 volumes (stored / raw float32)\n")
        print("| setting | MB raw | stored/raw |\n|---|---|---|")
        print("\n".join(phantom_ratios(settings, out)))
    if args.out is None:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
