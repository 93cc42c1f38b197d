"""`vstk pool build --shard I/N` and `vstk pool merge` with a real (tiny) translator."""

from __future__ import annotations

from click.testing import CliRunner

from vstk.cli import cli
from vstk.pool import Pool

TINY = ["--set", "centre=head", "--set", "size=32", "--set", "crop=none", "--set", "spacing=0.8,0.8", "--set", "ngf=4",
        "--set", "n_blocks=1", "--set", "ndf=4", "--set", "sample_every=0", "--set", "checkpoint_every=2"]


def vstk(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_sharded_build_merged_equals_the_single_build(crossmoda_folder, tmp_path):
    work = tmp_path / "work"
    common = ["--translators", "cyclegan", "--data", crossmoda_folder, "--work", work, "--profile", "cpu", *TINY]
    missing = vstk("pool", "build", *common, "--out", tmp_path / "s1.h5", "--shard", "1/2")
    assert missing.exit_code == 2
    assert "sharded build needs a trained translator" in missing.output and "vstk translate train -t cyclegan" in \
        missing.output
    trained = vstk("translate", "train", "-t", "cyclegan", "--data", crossmoda_folder, "--out", work, "--profile",
                   "cpu", "--steps", "2", *TINY)
    assert trained.exit_code == 0, trained.output
    single = vstk("pool", "build", *common, "--out", tmp_path / "single.h5")
    assert single.exit_code == 0, single.output
    for i in (1, 2):
        built = vstk("pool", "build", *common, "--out", tmp_path / f"s{i}.h5", "--shard", f"{i}/2")
        assert built.exit_code == 0 and f"pool shard {i}/2 written" in built.output, built.output
    merged = vstk("pool", "merge", tmp_path / "s1.h5", tmp_path / "s2.h5", "--out", tmp_path / "pool.h5")
    assert merged.exit_code == 0 and "merged 2 shard(s)" in merged.output, merged.output
    with Pool(tmp_path / "single.h5") as a, Pool(tmp_path / "pool.h5") as b, Pool(tmp_path / "s1.h5") as s1:
        assert a.digest() == b.digest()
        assert len(s1.cases("cyclegan")) == 1 and len(b.cases("cyclegan")) == 2
    incomplete = vstk("pool", "merge", tmp_path / "s2.h5", "--out", tmp_path / "other.h5")
    assert incomplete.exit_code == 2 and "shard 1/2 is missing" in incomplete.output
    assert len(incomplete.output.strip().splitlines()) == 1
    info = vstk("pool", "info", tmp_path / "pool.h5")
    assert info.exit_code == 0 and "1 view(s), 2 label(s), 2 target(s)" in info.output
