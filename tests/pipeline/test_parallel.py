"""Translators trained side by side, one process each (vstk.pipeline.parallel)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from vstk.pipeline.parallel import TranslatorJob, TranslatorTrainingError, train_in_parallel
from vstk.plugins import load_plugins
from vstk.translation.checkpoint import load_checkpoint
from vstk.volume import read_nifti, write_nifti

from conftest import make_image

HOST = load_plugins()


def tiny_config(name: str, **overrides):
    settings = dict(size=32, spacing="0.8,0.8", centre="head", steps=3, decay_steps=2, ngf=4, n_blocks=1, ndf=4,
                    checkpoint_every=2, sample_every=0, cpu_precision="fp32")  # float32 whatever the CPU
    if name == "qsattn":
        settings.update(num_patches=16, netf_nc=8)
    settings.update(overrides)
    return HOST.get("translator", name).profile("cpu", **settings)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    root = tmp_path_factory.mktemp("volumes")
    sources, targets = [], []
    for i in range(2):
        sources.append(root / f"c{i}_ceT1.nii.gz")
        write_nifti(make_image(shape=(6, 40, 40), seed=i), sources[-1])
        targets.append(root / f"t{i}_hrT2.nii.gz")
        write_nifti(make_image(shape=(6, 40, 40), spacing=(0.6, 0.6, 1.0), seed=10 + i), targets[-1])
    return tuple(sources), tuple(targets)


def job(name: str, files, workdir: Path, **overrides) -> TranslatorJob:
    return TranslatorJob(name, type(HOST.get("translator", name)(device="cpu")), tiny_config(name, **overrides),
                         "cpu", *files, workdir)


def test_side_by_side_training_equals_training_in_this_process(files, tmp_path):
    jobs = [job("cyclegan", files, tmp_path / "par" / "cyclegan"), job("qsattn", files, tmp_path / "par" / "qsattn")]
    calls = []
    results = train_in_parallel(jobs, workers=2, progress=lambda done, total, message: calls.append((done, total)))
    assert set(results) == {"cyclegan", "qsattn"}
    assert calls and calls[-1] == (10, 10)  # 5 steps each, read from the workers' loss logs

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each of the two workers used on this 2-core budget
    try:
        for item in jobs:
            path, seconds = results[item.name]
            assert path == item.workdir / "translator.pt" and seconds > 0
            translator = item.translator_class(item.config, device="cpu")
            here = translator.train([read_nifti(p) for p in item.sources], [read_nifti(p) for p in item.targets],
                                    tmp_path / "here" / item.name)
            a, b = load_checkpoint(path)["generator"], load_checkpoint(here)["generator"]
            for key in a:
                torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5, msg=f"{item.name} {key}")
    finally:
        torch.set_num_threads(threads)


def test_a_failing_worker_names_its_translator_and_stops_the_others(files, tmp_path):
    broken = tmp_path / "broken_ceT1.nii.gz"
    broken.write_bytes(b"not a nifti file")
    slow = job("cyclegan", files, tmp_path / "cyclegan", steps=100_000)
    bad = job("qsattn", ((broken,), files[1]), tmp_path / "qsattn")
    with pytest.raises(TranslatorTrainingError, match=r"translator 'qsattn' failed: .*broken_ceT1\.nii\.gz"):
        train_in_parallel([slow, bad], workers=2)
    log = tmp_path / "cyclegan" / "losses.csv"
    size = log.stat().st_size if log.exists() else 0
    time.sleep(2)
    assert (log.stat().st_size if log.exists() else 0) == size, "the other worker was not stopped"


DRIVER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from vstk.pipeline.parallel import TranslatorJob, train_in_parallel
    from vstk.plugins import load_plugins
    cls = type(load_plugins().get("translator", "cyclegan")(device="cpu"))
    config = cls.profile("cpu", size=32, spacing="0.8,0.8", centre="head", steps=100000, decay_steps=1, ngf=4,
                         n_blocks=1, ndf=4, checkpoint_every=1000, sample_every=0)
    work = Path(sys.argv[1])
    files = [Path(p) for p in sys.argv[2:]]
    train_in_parallel([TranslatorJob(n, cls, config, "cpu", tuple(files[:2]), tuple(files[2:]), work / n)
                       for n in ("a", "b")], workers=2)
""")


def test_workers_stop_when_the_run_is_killed(files, tmp_path):
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path), *map(str, files[0] + files[1])],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    logs = [tmp_path / n / "losses.csv" for n in ("a", "b")]
    deadline = time.time() + 300
    while time.time() < deadline and not all(p.exists() and p.stat().st_size > 200 for p in logs):
        assert driver.poll() is None, "the driver ended before training started"
        time.sleep(0.5)
    assert all(p.exists() for p in logs), "the workers never started training"
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    time.sleep(3)  # the workers notice their parent is gone within a second
    sizes = [p.stat().st_size for p in logs]
    time.sleep(3)
    assert [p.stat().st_size for p in logs] == sizes, "a worker went on training after its run was killed"


def test_the_progress_total_counts_the_steps_bfloat16_adds(files, tmp_path):
    scaled = job("cyclegan", files, tmp_path / "bf16", cpu_precision="bf16", bf16_step_scale=2)
    assert scaled.total_steps() == 10  # (3 + 2) x 2
    assert job("cyclegan", files, tmp_path / "fp32").total_steps() == 5
    calls = []
    train_in_parallel([scaled], workers=1, progress=lambda done, total, message: calls.append((done, total)))
    assert calls[-1] == (10, 10)
