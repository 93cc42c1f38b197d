"""Crash safety: a build killed with SIGKILL at any moment and rerun gives the same pool."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pool_helpers import CASES, build_pool, case_image, label_for, provenance, view_image, seed_of
from vstk.errors import PoolError
from vstk.pool import Pool, PoolBuilder

DRIVER = Path(__file__).with_name("pool_build_driver.py")
SHAPE = (12, 96, 96)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Digest, step count and duration (s) of an uninterrupted build of the driver's pool."""
    steps: list[str] = []
    start = time.perf_counter()
    path = build_pool(tmp_path_factory.mktemp("ref") / "pool.h5", shape=SHAPE, step=steps.append)
    seconds = time.perf_counter() - start
    with Pool(path) as pool:
        return {"digest": pool.digest(), "steps": steps, "seconds": seconds}


def run_driver(pool: Path, *args: str, kill_after_s: float | None = None) -> tuple[int, str]:
    """Run the build driver; optionally SIGKILL it ``kill_after_s`` seconds after its imports."""
    proc = subprocess.Popen([sys.executable, str(DRIVER), str(pool), "--shape", ",".join(map(str, SHAPE)), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if kill_after_s is not None:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(kill_after_s)
        proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, -signal.SIGKILL), err
    return proc.returncode, out


def assert_only_complete_pool_is_visible(pool: Path) -> None:
    """After a kill the pool path holds nothing or a complete pool, never a partial file."""
    if pool.exists():
        with Pool(pool) as handle:  # raises PoolError for an incomplete or damaged file
            assert handle.views()


def test_sigkill_at_random_moments_then_rerun_gives_identical_digest(tmp_path, reference):
    steps = reference["steps"]
    n_staging = sum(not s.startswith("finalize") for s in steps)
    rng = random.Random(20260613)
    # Within the first half of a full build: a resumed run (less left to do) is still killed mostly.
    span = max(reference["seconds"], 0.3) / 2
    trials: list[list[tuple[str, float]]] = [
        [("step", 1)],                                   # after the first staged entry
        [("step", n_staging // 2)],                      # mid staging
        [("step", n_staging + 4)],                       # mid finalize (assembly file half written)
        [("step", len(steps))],                          # assembled and closed, not yet renamed
        [("cleanup", 0)],                                # renamed into place, staging not yet removed
        [("delay", rng.uniform(0, span)), ("delay", rng.uniform(0, span))],
        [("step", 3), ("step", 3)],                      # killed twice, each after 3 new steps
        [("delay", rng.uniform(0, span)), ("delay", rng.uniform(0, span)), ("delay", rng.uniform(0, span))],
    ]
    killed = {"delay": 0, "step": 0, "cleanup": 0}
    for i, trial in enumerate(trials):
        pool = tmp_path / f"trial{i}" / "pool.h5"
        for kind, value in trial:
            if kind == "delay":
                code, _ = run_driver(pool, kill_after_s=value)
            elif kind == "step":
                code, _ = run_driver(pool, "--kill-at-step", str(int(value)))
            else:
                code, _ = run_driver(pool, "--kill-in-cleanup")
            killed[kind] += code == -signal.SIGKILL
            assert_only_complete_pool_is_visible(pool)
        code, out = run_driver(pool)
        assert code == 0 and out.strip().endswith(tuple("0123456789")), out
        assert not pool.with_name("pool.h5.staging").exists()
        assert sorted(p.name for p in pool.parent.iterdir()) == ["pool.h5"]  # no temporaries left
        with Pool(pool) as handle:
            assert handle.digest() == reference["digest"], f"trial {i} {trial}"
    assert killed["step"] == 6 and killed["cleanup"] == 1  # deterministic kills always land
    assert killed["delay"] >= 3  # random ones land unless the delay outlasts the (resumed) build


def test_half_written_and_damaged_staged_entries_are_redone(tmp_path, reference):
    pool = tmp_path / "pool.h5"
    code, _ = run_driver(pool, "--kill-at-step", "5")
    assert code == -signal.SIGKILL
    staging = tmp_path / "pool.h5.staging"
    staged = sorted(staging.rglob("*.h5"))
    assert len(staged) == 5
    (staged[0].parent / f".{staged[0].name}.999.deadbeef.tmp").write_bytes(b"half an HDF5 file")
    staged[1].write_bytes(staged[1].read_bytes()[:300])  # a damaged entry (e.g. power loss)
    build_pool(pool, shape=SHAPE)
    with Pool(pool) as handle:
        assert handle.digest() == reference["digest"]


def test_resume_reuses_staged_entries_without_rewriting_them(tmp_path):
    path = tmp_path / "pool.h5"
    image = case_image(CASES[0])
    with PoolBuilder(path) as builder:
        builder.add_label(CASES[0], label_for(image, seed_of("label", CASES[0])))
        builder.add_view("cut", CASES[0], view_image("cut", CASES[0]), provenance("cut"))
    staged = path.with_name("pool.h5.staging") / "views" / "cut" / f"{CASES[0]}.h5"
    mtime = staged.stat().st_mtime_ns
    with PoolBuilder(path) as builder:
        assert builder.has("cut", CASES[0]) and builder.has_label(CASES[0])
        assert not builder.has("cut", CASES[1])
        assert [k[0] for k in builder.staged()] == ["label", "view"]
        assert staged.stat().st_mtime_ns == mtime  # reused as it is
        builder.finalize()
    assert not staged.exists()
    with Pool(path) as pool:
        assert pool.cases("cut") == [CASES[0]]
        assert pool.provenance("cut", CASES[0])["translator"] == "cut"


def test_extend_killed_before_rename_resumes_and_after_rename_reports_the_view(tmp_path):
    path = build_pool(tmp_path / "pool.h5", views=("cyclegan",), cases=CASES[:2], targets=())
    with PoolBuilder.extend(path) as builder:  # "killed" after one entry: closed without finalize
        builder.add_view("qsattn", CASES[0], view_image("qsattn", CASES[0]), provenance("qsattn"))
    with PoolBuilder.extend(path) as builder:
        assert builder.has("qsattn", CASES[0])
        builder.add_view("qsattn", CASES[1], view_image("qsattn", CASES[1]), provenance("qsattn"))
        builder.finalize()
    whole = build_pool(tmp_path / "whole.h5", views=("cyclegan", "qsattn"), cases=CASES[:2], targets=())
    with Pool(path) as a, Pool(whole) as b:
        assert a.digest() == b.digest()
    # A staging folder left by a run killed after its rename is recognised as stale.
    staging = path.with_name("pool.h5.staging")
    (staging / "views" / "qsattn").mkdir(parents=True)
    (staging / "staging.json").write_text('{"format": 1, "mode": "extend", "base": [0, 0, 0, 0], '
                                          '"target_spacing": [0.41, 0.41, 1.5], "pool": "x"}')
    with PoolBuilder.extend(path) as builder:
        assert not (staging / "views").exists()
        with pytest.raises(PoolError, match="view 'qsattn' already exists"):
            builder.check_view_is_new("qsattn")
