"""Benchmark: how to join pool shards - real copy vs HDF5 external links vs virtual datasets.

    python benchmarks/pool_merge.py [--shape 32,192,192] [--cases 6] [--views 2] [--shards 2] [--reads 200]

Builds a single-process pool and the same pool as ``--shards`` shard files (MR-like float32
volumes, gzip-1 + shuffle, as ``vstk pool build --shard``), then joins the shards three ways:

* copy: ``vstk.pool.shard.merge_shards`` (what ``vstk pool merge`` does: raw chunks copied,
  no recompression, temp file + rename);
* external links: a small file whose ``/labels/{case}``, ``/views/{view}/{case}`` and
  ``/target/{case}`` are HDF5 external links into the shard files;
* virtual datasets: every voxel dataset a VDS mapping the shard's dataset, attributes copied.

For each it reports the join time, the joined file's own size, the median and p95 latency of
random axial slice reads with h5py, whether ``vstk.pool.Pool`` reads it, its median slice read
and the time to read every view volume through ``Pool`` (one thread), and whether its content
digest equals the single-process build's. Prints Markdown.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py

sys.path.insert(0, str(Path(__file__).parent))

from pool_bench import label_of, mr_like, provenance  # noqa: E402
from vstk.pool import Pool, PoolBuilder  # noqa: E402
from vstk.pool import schema as S  # noqa: E402
from vstk.pool.builder import LIBVER, finish_pool_file, list_entries, start_pool_file  # noqa: E402
from vstk.pool.shard import ShardPlan, ShardSpec, merge_shards  # noqa: E402


def build(path: Path, plan: ShardPlan, images: dict, labels: dict, spec: ShardSpec | None) -> Path:
    share = plan.share(spec) if spec else None
    root = {S.ATTR_SHARD: plan.attribute(spec)} if spec else None
    with PoolBuilder(path, root_attrs=root) as builder:
        for case in (share.labels if share else plan.cases):
            builder.add_label(case, labels[case])
        for view, case in (share.views if share else plan.view_units()):
            builder.add_view(view, case, images[view, case], provenance(view))
        return builder.finalize()


def join_links(shards: list[Path], out: Path) -> None:
    with h5py.File(out, "w", libver=LIBVER) as f:
        start_pool_file(f, (0.41, 0.41, 1.5))
        for shard in shards:
            with h5py.File(shard, "r") as s:
                for key in list_entries(s):
                    if key[0] == "label" and key[1] not in f[S.LABELS]:
                        f[f"{S.LABELS}/{key[1]}"] = h5py.ExternalLink(str(shard), f"/{S.LABELS}/{key[1]}")
                    elif key[0] == "view":
                        f.require_group(f"{S.VIEWS}/{key[1]}")[key[2]] = h5py.ExternalLink(
                            str(shard), f"/{S.VIEWS}/{key[1]}/{key[2]}")
        finish_pool_file(f)


def _virtual(f: h5py.File, name: str, source: h5py.Dataset, shard: Path) -> h5py.Dataset:
    layout = h5py.VirtualLayout(shape=source.shape, dtype=source.dtype)
    layout[...] = h5py.VirtualSource(str(shard), source.name, shape=source.shape)
    dataset = f.create_virtual_dataset(name, layout)
    for attr in source.attrs:
        dataset.attrs[attr] = source.attrs[attr]
    return dataset


def join_virtual(shards: list[Path], out: Path) -> None:
    with h5py.File(out, "w", libver=LIBVER) as f:
        start_pool_file(f, (0.41, 0.41, 1.5))
        for shard in shards:
            with h5py.File(shard, "r") as s:
                for key, source in sorted(list_entries(s).items(), key=lambda kv: kv[0][0] != "label"):
                    if key[0] == "label" and f"{S.LABELS}/{key[1]}" not in f:
                        _virtual(f, f"{S.LABELS}/{key[1]}", source, shard)
                    elif key[0] == "view":
                        group = f.require_group(f"{S.VIEWS}/{key[1]}/{key[2]}")
                        for attr in source.parent.attrs:
                            group.attrs[attr] = source.parent.attrs[attr]
                        _virtual(f, f"{group.name}/{S.IMAGE}", source, shard)
                        group[S.LABEL] = f[f"{S.LABELS}/{key[2]}"]
        finish_pool_file(f)


def slice_latency(path: Path, keys: list[tuple], reads: int) -> tuple[float, float]:
    rng = random.Random(0)
    times = []
    with h5py.File(path, "r") as f:
        datasets = [f[f"{S.VIEWS}/{k[1]}/{k[2]}/{S.IMAGE}"] for k in keys]
        for _ in range(reads):
            ds = rng.choice(datasets)
            k = rng.randrange(ds.shape[0])
            start = time.perf_counter()
            ds[k]
            times.append(time.perf_counter() - start)
    times.sort()
    return statistics.median(times) * 1e3, times[int(0.95 * (len(times) - 1))] * 1e3


def vstk_reads(path: Path, keys: list[tuple], reads: int) -> tuple[str, float, float, str | None]:
    """Whether vstk.pool.Pool reads the file; its median slice read (ms), the time to read
    every view volume (s), and its digest."""
    rng = random.Random(1)
    try:
        with Pool(path, threads=1) as pool:
            times = []
            for _ in range(reads):
                _, view, case = rng.choice(keys)
                k = rng.randrange(pool.shape(view, case)[0])
                start = time.perf_counter()
                pool.read_slice(view, case, k)
                times.append(time.perf_counter() - start)
            start = time.perf_counter()
            for _, view, case in keys:
                pool.read(view, case)
            volumes = time.perf_counter() - start
            return "yes", statistics.median(times) * 1e3, volumes, pool.digest()
    except Exception as exc:  # the point is to report what breaks
        return f"no ({type(exc).__name__}: {str(exc).splitlines()[0][:60]})", float("nan"), float("nan"), None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="32,192,192")
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--reads", type=int, default=200)
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    views = [f"view{i}" for i in range(args.views)]
    cases = [f"case{i:03d}" for i in range(args.cases)]
    plan = ShardPlan.of(views, cases, [])
    labels = {c: label_of(mr_like(shape, seed=i)) for i, c in enumerate(cases)}
    images = {(v, c): mr_like(shape, seed=1000 * j + i) for j, v in enumerate(views) for i, c in enumerate(cases)}
    raw_mb = sum(im.array.nbytes for im in images.values()) / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        single = build(root / "single.h5", plan, images, labels, None)
        with Pool(single) as pool:
            reference = pool.digest()
        shards = [build(root / f"shard{i}.h5", plan, images, labels, ShardSpec(i, args.shards))
                  for i in range(1, args.shards + 1)]
        shard_mb = sum(p.stat().st_size for p in shards) / 1e6
        rows = []
        keys = [("view", v, c) for v, c in plan.view_units()]
        for name, join in (("copy (vstk pool merge)", lambda out: merge_shards(shards, out)),
                           ("external links", lambda out: join_links(shards, out)),
                           ("virtual datasets", lambda out: join_virtual(shards, out))):
            out = root / f"{name.split()[0]}.h5"
            start = time.perf_counter()
            join(out)
            seconds = time.perf_counter() - start
            median, p95 = slice_latency(out, keys, args.reads)
            reads, pool_slice, pool_volumes, digest = vstk_reads(out, keys, args.reads)
            rows.append(f"| {name} | {seconds:.3f} | {out.stat().st_size / 1e6:.2f} | {median:.2f} | {p95:.2f} | "
                        f"{reads} | {pool_slice:.2f} | {pool_volumes:.2f} | {'yes' if digest == reference else 'no'} |")
    print(f"{len(images)} view entries of {shape} float32 ({raw_mb:.0f} MB raw), {len(cases)} labels, "
          f"{args.shards} shards ({shard_mb:.1f} MB on disk)\n")
    print("| join | seconds | joined file MB | h5py slice median ms | p95 ms | vstk Pool reads | Pool slice median ms "
          "| Pool all volumes s | digest = single build |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
