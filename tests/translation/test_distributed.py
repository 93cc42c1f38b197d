"""Data-parallel translator training: 2 CPU processes (gloo) under torchrun, on tiny data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vstk.errors import ConfigError, InputError
from vstk.translation.checkpoint import load_checkpoint
from vstk.translation.data import SliceSet
from vstk.translation.distributed import DistContext, torchrun_command

DRIVER = Path(__file__).with_name("ddp_driver.py")
GENERATOR = {"cyclegan": "G_A", "qsattn": "G"}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """Run the driver as 2 gloo ranks with torchrun; return its output folder."""
    out = tmp_path_factory.mktemp("ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               str(DRIVER), str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def records(out: Path, name: str) -> list[dict]:
    return [torch.load(out / f"{name}_rank{r}.pt", weights_only=True) for r in range(2)]


def test_optimisers_step_with_the_gradient_averaged_over_ranks(two_ranks):
    for rank in range(2):
        step = torch.load(two_ranks / f"averager_rank{rank}.pt", weights_only=True)["averaged"]
        torch.testing.assert_close(step, torch.full_like(step, 1.5), rtol=0, atol=0)  # mean of 1 and 2


@pytest.mark.parametrize("name", sorted(GENERATOR))
def test_parameters_are_identical_on_every_rank_after_every_step(two_ranks, name):
    rank0, rank1 = records(two_ranks, name)
    assert len(rank0["params"]) == len(rank1["params"]) == 4
    for step, (a, b) in enumerate(zip(rank0["params"], rank1["params"]), start=1):
        assert torch.equal(a, b), f"step {step}: ranks differ by {float((a - b).abs().max())}"
    for before, after in zip(rank0["params"], rank0["params"][1:]):
        assert float((after - before).abs().max()) > 1e-6  # and they do train
    assert rank0["batches"] != rank1["batches"]  # on different slices


@pytest.mark.parametrize("name", sorted(GENERATOR))
def test_checkpoints_hold_what_the_ranks_trained(two_ranks, name):
    rank0, rank1 = records(two_ranks, name)
    stopped = load_checkpoint(two_ranks / name / "latest_step2.pt")
    assert stopped["step"] == 2 and stopped["world_size"] == 2 and len(stopped["rank_states"]) == 1
    for rank in (rank0, rank1):
        for net, state in rank["states"][0].items():  # networks when the run stopped at step 2
            for key, value in state.items():
                assert torch.equal(value, stopped["networks"][net][key]), (net, key)
    final = load_checkpoint(two_ranks / name / "resumed" / "translator.pt")
    trained = rank1["states"][1][GENERATOR[name]]
    assert final["generator"].keys() == trained.keys()
    for key, value in trained.items():
        assert torch.equal(value, final["generator"][key]), key
    lines = (two_ranks / name / "resumed" / "losses.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines] == ["step", "1", "2", "3", "4"]  # one writer
    assert sorted(p.name for p in (two_ranks / name / "resumed" / "samples").iterdir()) == ["step_0000004.png"]


@pytest.mark.parametrize("name", sorted(GENERATOR))
def test_resumed_distributed_run_equals_the_uninterrupted_one(two_ranks, name):
    rank0, rank1 = records(two_ranks, name)
    for rank in (rank0, rank1):
        for step, (a, b) in enumerate(zip(rank["params"], rank["straight_params"]), start=1):
            assert torch.equal(a, b), f"step {step}"


def test_slice_shares_are_disjoint_cover_everything_and_are_balanced():
    slices = np.arange(11 * 4 * 4, dtype=np.float32).reshape(11, 4, 4)
    whole = SliceSet(slices, np.arange(11), ["v"])
    assert whole.shard(0, 1, seed=3) is whole
    shares = [whole.shard(r, 3, seed=3) for r in range(3)]
    firsts = [set(share.slices[:, 0, 0].tolist()) for share in shares]
    assert sorted(len(f) for f in firsts) == [3, 4, 4]
    assert set().union(*firsts) == set(slices[:, 0, 0].tolist()) and sum(map(len, firsts)) == 11
    again = whole.shard(1, 3, seed=3)
    assert np.array_equal(again.slices, shares[1].slices)  # deterministic by seed and rank
    with pytest.raises(InputError, match="12 processes"):
        whole.shard(0, 12)


def test_context_comes_from_torchrun_environment():
    assert DistContext.from_env({}) == DistContext()
    context = DistContext.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "node1",
                                    "MASTER_PORT": "29400"})
    assert (context.rank, context.world_size, context.local_rank, context.active, context.is_main) == (3, 4, 1, True,
                                                                                                        False)
    with pytest.raises(ConfigError, match="MASTER_ADDR, MASTER_PORT not set"):
        DistContext.from_env({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="do not fit together"):
        DistContext.from_env({"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "a", "MASTER_PORT": "1"})
    command = torchrun_command(2, ["translate", "train", "-t", "cyclegan"], python="python")
    assert command == ["python", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "vstk",
                       "translate", "train", "-t", "cyclegan"]


TINY = ["--set", "centre=head", "--set", "size=32", "--set", "crop=none", "--set", "spacing=0.8,0.8", "--set", "ngf=4",
        "--set", "n_blocks=1", "--set", "ndf=4", "--set", "sample_every=0", "--set", "checkpoint_every=2",
        "--set", "cpu_precision=fp32"]  # float32 whatever the CPU: the steps are counted


def test_translate_train_nproc_relaunches_itself_under_torchrun(crossmoda_folder, tmp_path):
    work = tmp_path / "work"
    command = [sys.executable, "-m", "vstk", "translate", "train", "-t", "cyclegan", "--data", str(crossmoda_folder),
               "--out", str(work), "--profile", "cpu", "--steps", "2", *TINY, "--nproc", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == f"cyclegan: {work / 'cyclegan' / 'translator.pt'}"
    state = load_checkpoint(work / "cyclegan" / "latest.pt")
    assert state["world_size"] == 2 and state["step"] == 2
    assert load_checkpoint(work / "cyclegan" / "translator.pt")["kind"] == "translator"
    assert (work / "cyclegan" / "losses.csv").read_text().count("\n") == 3  # header + 2 steps, written once
