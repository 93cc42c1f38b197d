"""`vstk bench` end to end on a tiny phantom with tiny budgets: every row, statistics, resume, bad input."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vstk.phantom import PhantomConfig, generate_phantom
from vstk.volume import read_nifti, write_nifti

TINY = ["--set", "steps=3", "--set", "decay_steps=1", "--set", "ngf=4", "--set", "n_blocks=1", "--set", "ndf=4",
        "--set", "size=48", "--set", "spacing=1.0,1.0", "--set", "sample_every=0",
        "--set", "num_epochs=2", "--set", "bf16_epoch_scale=1", "--set", "iterations_per_epoch=2",
        "--set", "val_iterations_per_epoch=1",
        "--set", "save_every=1"]
TINY_QSATTN = ["--set", "qsattn.num_patches=16", "--set", "qsattn.netf_nc=8"]
RULE = ["--ears", "rule"]  # the slab phantom's fixed boxes: these tests are about the benchmark, not the ears
ROWS = ["none", "cyclegan", "qsattn", "cyclegan+qsattn", "supervised"]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantom")
    generate_phantom(root, PhantomConfig(cases=2, test_cases=2, paired_cases=2, resolution_scale=0.3, seed=3,
                                         target_labels=True, geometry="slab"))
    return root


def vstk_bench(phantom: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vstk.cli", "bench", "--translators", "cyclegan,qsattn",
            "--combos", "cyclegan+qsattn", "--data", str(phantom / "train"), "--test", str(phantom / "test"),
            "--test-labels", str(phantom / "test_labels"), "--target-labels", str(phantom / "train_hrT2_labels"),
            "--paired", str(phantom / "paired"), "--out", str(out), *TINY, *TINY_QSATTN, *RULE, *extra]


@pytest.fixture(scope="module")
def bench_out(phantom, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "out"
    done = subprocess.run(vstk_bench(phantom, out), capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "supervised: mean Dice" in done.stdout and f"report: {out / 'bench.md'}" in done.stdout
    return out


def markdown_table(text: str, heading: str) -> list[list[str]]:
    """Rows (cells without the outer pipes) of the first table after ``heading``."""
    lines = text.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def pm(stat: dict, digits: int) -> str:
    return f"{stat['mean']:.{digits}f} +- {stat['std']:.{digits}f}"


@pytest.mark.slow
def test_table_one_has_every_row_framed_by_floor_and_ceiling(bench_out):
    data = json.loads((bench_out / "bench.json").read_text())
    rows = markdown_table((bench_out / "bench.md").read_text(), "## Table 1")
    assert [r[0] for r in rows] == ROWS == list(data["methods"])
    assert [r[1] for r in rows] == ["ceT1 as is", "cyclegan view", "qsattn view", "cyclegan + qsattn views",
                                    "labelled hrT2"]
    methods = data["methods"]
    floor, ceiling = methods["none"]["summary"]["mean_dice"]["mean"], methods["supervised"]["summary"]["mean_dice"]["mean"]
    # a tiny budget need not learn hrT2: without a gap above the floor every row reads '-'
    assert (rows[0][-1], rows[-1][-1]) == (("0%", "100%") if ceiling > floor else ("-", "-"))
    for name in ROWS:
        summary = methods[name]["summary"]
        for metric in ("VS_dice", "cochlea_dice", "mean_dice"):
            assert 0.0 <= summary[metric]["mean"] <= 1.0 and summary[metric]["n"] == 2
        assert summary["VS_assd"]["mean"] >= 0.0
        if ceiling > floor:
            expected = (summary["mean_dice"]["mean"] - floor) / (ceiling - floor)
            assert methods[name]["gap_closed"] == pytest.approx(expected)
        else:
            assert methods[name]["gap_closed"] is None
    # one protocol: each row trained the same budget on its own images, in its own nnU-Net dataset
    crops = {name: json.loads((bench_out / "state" / f"segment-{name}-r0.json").read_text())["training_cases"]
             for name in ROWS}
    assert crops == {"none": 4, "cyclegan": 4, "qsattn": 4, "cyclegan+qsattn": 8, "supervised": 4}
    # the supervised row's crops are real hrT2: augmented as the profile augments real hrT2 (its
    # pseudo-labelled cases), not as translated views; no other round-0 row has any
    log = (bench_out / "vstk.log").read_text()
    assert log.count("real hrT2 case(s)") == 1 and "probability 0 on 4 real hrT2 case(s)" in log
    datasets = set()
    for name in ROWS:
        finals = list((bench_out / "methods" / name / "segmenter" / "nnUNet_results").rglob("checkpoint_final.pth"))
        assert len(finals) == 1
        datasets.add(finals[0].relative_to(bench_out / "methods" / name / "segmenter" / "nnUNet_results").parts[0])
        assert len(list((bench_out / "methods" / name / "predictions").glob("*_Label.nii.gz"))) == 2
    assert len(datasets) == len(ROWS) and "Dataset501_cyclegan-qsattn_round0" in datasets
    per_row = data["segmenter"]["per_row"]
    # every row has its own nnU-Net workspace: one dataset id, so adding a row never moves another
    assert {row["dataset_id"] for row in per_row.values()} == {501}
    assert [row["dataset_name"] for row in per_row.values()] == ["none", "cyclegan", "qsattn", "cyclegan-qsattn",
                                                                 "supervised"]
    assert data["segmenter"]["config"]["seed"] == 0 and data["segmenter"]["config"]["num_epochs"] == 2


@pytest.mark.slow
def test_paired_t_test_matrices_are_symmetric_with_valid_p_values(bench_out):
    data = json.loads((bench_out / "bench.json").read_text())
    for metric in ("VS_dice", "cochlea_dice", "mean_dice"):
        matrix = data["paired_t_tests"][metric]
        assert matrix["methods"] == ROWS and matrix["cases"] == 2
        p, t = matrix["p"], matrix["t"]
        for i in range(len(ROWS)):
            assert p[i][i] == 1.0
            for j in range(len(ROWS)):
                assert p[i][j] == p[j][i] and 0.0 <= p[i][j] <= 1.0 and math.isfinite(p[i][j])
                assert t[i][j] == pytest.approx(-t[j][i])
    rows = markdown_table((bench_out / "bench.md").read_text(), "## Paired t-tests")
    p = data["paired_t_tests"]["mean_dice"]["p"]
    assert [r[0] for r in rows] == ROWS
    for i, row in enumerate(rows):
        for j, cell in enumerate(row[1:]):
            if i == j:
                assert cell == "-"
            else:
                assert float(cell) == pytest.approx(p[i][j], rel=5e-3, abs=1e-12)
    assert (bench_out / "figures" / "ttest_pvalues.png").stat().st_size > 20_000


@pytest.mark.slow
def test_json_matches_markdown(bench_out):
    data = json.loads((bench_out / "bench.json").read_text())
    text = (bench_out / "bench.md").read_text()
    for row in markdown_table(text, "## Table 1"):
        method = data["methods"][row[0]]
        s = method["summary"]
        assert row[2:8] == [pm(s["VS_dice"], 3), pm(s["VS_assd"], 2), pm(s["cochlea_dice"], 3),
                            pm(s["cochlea_assd"], 2), pm(s["mean_dice"], 3), pm(s["mean_assd"], 2)]
        assert row[8] == ("-" if method["gap_closed"] is None else f"{method['gap_closed']:.0%}")
    fidelity = markdown_table(text, "## Translation fidelity")
    assert [r[0] for r in fidelity] == ["none (ceT1 as is)", "cyclegan", "qsattn"]
    for row in fidelity:
        scores = data["fidelity"][row[0].split()[0]]
        assert row[1:3] == [pm(scores["psnr"], 2), pm(scores["ssim"], 3)]
        assert -1.0 <= scores["ssim"]["mean"] <= 1.0 and len(scores["cases"]) == 2
    for row in fidelity[1:]:
        seconds = data["translators"][row[0]]["train_seconds"]
        # printed with 2, 1 or 0 decimals below 1 s, below 10 s and from 10 s on (a loaded machine)
        assert float(row[3]) == pytest.approx(seconds, abs=0.51 if seconds >= 10 else 0.051)
    times = markdown_table(text, "## Time")
    assert [r[0] for r in times] == ROWS
    translators = data["translators"]
    for row in times:
        seconds = data["methods"][row[0]]["seconds"]
        assert [float(c) for c in row[1:]] == pytest.approx(
            [seconds["translator_training"], seconds["translation"], seconds["segmenter_training"],
             seconds["prediction"]], abs=0.51)
    combo = data["methods"]["cyclegan+qsattn"]["seconds"]["translator_training"]
    assert combo == pytest.approx(translators["cyclegan"]["train_seconds"] + translators["qsattn"]["train_seconds"],
                                  abs=0.11)
    assert data["methods"]["none"]["seconds"]["translator_training"] == 0.0
    for name in ("dice_boxplot", "translated_views"):
        assert (bench_out / "figures" / f"{name}.png").stat().st_size > 20_000
        assert f"figures/{name}.png" in text


@pytest.mark.slow
def test_rerun_skips_finished_stages(phantom, bench_out):
    before = json.loads((bench_out / "bench.json").read_text())
    logged = len((bench_out / "vstk.log").read_text().splitlines())
    started = time.perf_counter()
    again = subprocess.run(vstk_bench(phantom, bench_out), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    lines = (bench_out / "vstk.log").read_text().splitlines()[logged:]
    assert not any(" done in " in line for line in lines)  # nothing ran again
    skipped = [line for line in lines if "already done" in line]
    # 2 translators, pool, fidelity, and per row: segment, predict, evaluate
    assert len(skipped) == 4 + 3 * len(ROWS)
    assert time.perf_counter() - started < 90
    after = json.loads((bench_out / "bench.json").read_text())
    assert after["methods"] == before["methods"] and after["paired_t_tests"] == before["paired_t_tests"]

    changed = subprocess.run(vstk_bench(phantom, bench_out, "--set", "qsattn.ngf=8"), capture_output=True,
                             text=True, timeout=600)
    assert changed.returncode == 2 and "stage translator-qsattn was finished with qsattn.ngf: 4 -> 8" in changed.stderr
    assert json.loads((bench_out / "bench.json").read_text()) == after
    # the rows' segmenters are checked too: another budget is refused, nothing is reported as its result
    changed = subprocess.run(vstk_bench(phantom, bench_out, "--set", "num_epochs=3"), capture_output=True,
                             text=True, timeout=600)
    assert changed.returncode == 2, changed.stderr[-2000:]
    assert "stage segment-none-r0 was finished with nnunet.num_epochs: 2 -> 3" in changed.stderr
    assert "(and in segment-cyclegan-r0, segment-qsattn-r0" in changed.stderr
    assert json.loads((bench_out / "bench.json").read_text()) == after


def test_a_benchmark_of_an_older_vstk_is_refused(tmp_path):
    from vstk.pipeline import records

    out = tmp_path / "old"
    records.mark_done(out / "state", "segment-none-r0", {"training_cases": 4, "seconds": 1.0})  # no inputs
    phantom = out / "phantom"
    generate_phantom(phantom, PhantomConfig(cases=2, test_cases=2, paired_cases=2, resolution_scale=0.3,
                                            target_labels=True, geometry="slab"))
    done = vstk_fails("--translators", "cyclegan", "--phantom-cases", "2", "--phantom-geometry", "slab", "--out",
                      str(out), *TINY, *RULE)
    assert "holds a benchmark of an older vstk: its row none was trained without recording" in done.stderr
    assert "new --out" in done.stderr and not (out / "translators").exists()


@pytest.mark.slow
def test_self_training_round_without_target_labels_or_paired_cases_then_a_new_translator(phantom, tmp_path):
    out = tmp_path / "bench"

    def bench(translators: str, *extra: str) -> dict:
        done = subprocess.run([sys.executable, "-m", "vstk.cli", "bench", "--translators", translators,
                               "--data", str(phantom / "train"), "--test", str(phantom / "test"),
                               "--test-labels", str(phantom / "test_labels"), "--rounds", "1", "--out", str(out),
                               *TINY, *RULE, "--set", "self_training_epochs=1", *extra],
                              capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads((out / "bench.json").read_text())

    data = bench("cyclegan", "--jobs", "2")  # the two rows train side by side, one process each
    assert list(data["methods"]) == ["none", "cyclegan"]
    assert "training 2 benchmark rows in 2 processes" in (out / "vstk.log").read_text()
    assert all(m["gap_closed"] is None and m["rounds"] == 1 for m in data["methods"].values())
    assert data["fidelity"] is None
    text = (out / "bench.md").read_text()
    assert "supervised: skipped: the training hrT2 have no labels" in text
    assert "translation fidelity: skipped" in text and "## Translation fidelity" not in text
    for name in ("none", "cyclegan"):
        round1 = json.loads((out / "state" / f"segment-{name}-r1.json").read_text())
        pseudo = json.loads((out / "methods" / name / "pseudo_r1" / "selected.json").read_text())
        assert set(pseudo) == {"crossmoda2022_ldn_3", "crossmoda2022_etz_4"}
        assert round1["training_cases"] == 4 + 2 * len(pseudo)  # ceT1 or view crops + pseudo-labelled hrT2 crops

    # a translator added to the command: only it is trained, added to the pool and benchmarked
    again = bench("cyclegan,qsattn", *TINY_QSATTN)
    assert list(again["methods"]) == ["none", "cyclegan", "qsattn"]
    for name in ("none", "cyclegan"):
        assert again["methods"][name]["summary"] == data["methods"][name]["summary"]
    log = (out / "vstk.log").read_text()
    assert "stage segment-cyclegan-r1 already done" in log and "stage pool-qsattn done" in log
    assert (out / "state" / "segment-qsattn-r1.json").exists()
    assert again["translators"]["qsattn"]["translate_seconds"] is not None


@pytest.mark.slow
def test_seeds_train_each_row_once_per_seed_and_report_the_spread(phantom, tmp_path):
    from vstk.evaluation.evaluate import Evaluation
    from vstk_nnunet.trainer import load_checkpoint_file

    out = tmp_path / "seeds"
    labels = tmp_path / "test_labels"
    shutil.copytree(phantom / "test_labels", labels)

    def bench(seeds: str) -> tuple[dict, str]:
        done = subprocess.run([sys.executable, "-m", "vstk.cli", "bench", "--translators", "cyclegan",
                               "--data", str(phantom / "train"), "--test", str(phantom / "test"),
                               "--test-labels", str(labels), "--seeds", seeds, "--out", str(out),
                               *TINY, *RULE], capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads((out / "bench.json").read_text()), done.stdout

    data, stdout = bench("3,4")
    keys = ["none-s3", "none-s4", "cyclegan-s3", "cyclegan-s4"]
    assert data["segmenter"]["per_row"] == {
        key: {"dataset_id": 501, "dataset_name": key.split("-s")[0], "seed": int(key[-1])} for key in keys}
    assert "seed" not in data["segmenter"]["config"]
    weights = {}
    for key in keys:
        method, seed = key.split("-s")
        folder = out / "methods" / method / f"seed{seed}"
        assert len(list(folder.glob("predictions/*_Label.nii.gz"))) == 2
        final = next((folder / "segmenter" / "nnUNet_results").rglob("checkpoint_final.pth"))
        weights[key] = load_checkpoint_file(final)["network_weights"]
    first = next(iter(weights["none-s3"]))
    assert not torch.equal(weights["none-s3"][first], weights["none-s4"][first])  # the seed reached nnU-Net
    text = (out / "bench.md").read_text()
    assert "once with each of the seeds 3, 4" in text
    seeds_rows = markdown_table(text, "## Seeds")
    assert [r[0] for r in seeds_rows] == ["none", "cyclegan"]
    for method in ("none", "cyclegan"):
        runs = {seed: json.loads((out / "state" / f"evaluate-{method}-s{seed}.json").read_text()) for seed in (3, 4)}
        spread = data["methods"][method]["seeds"]
        for seed, run in runs.items():
            assert spread["per_seed"][str(seed)]["mean_dice"] == run["summary"]["mean_dice"]["mean"]
        means = [run["summary"]["mean_dice"]["mean"] for run in runs.values()]
        assert spread["over_seeds"]["mean_dice"]["mean"] == pytest.approx(sum(means) / 2)
        assert spread["over_seeds"]["mean_dice"]["std"] == pytest.approx(abs(means[0] - means[1]) / 2)
        # Table 1 scores each case by its average over the seeds
        averaged = Evaluation({case: {k: (runs[3]["cases"][case][k] + runs[4]["cases"][case][k]) / 2
                                      for k in runs[3]["cases"][case]} for case in runs[3]["cases"]}).summary()
        assert data["methods"][method]["summary"]["VS_dice"] == pytest.approx(averaged["VS_dice"])
        row = next(r for r in seeds_rows if r[0] == method)
        assert row[1:3] == [f"{spread['per_seed'][s]['mean_dice']:.3f}" for s in ("3", "4")]
        assert row[5] == pm(spread["over_seeds"]["mean_dice"], 3)
        assert f"{method}: mean Dice {data['methods'][method]['summary']['mean_dice']['mean']:.3f} (seeds: " in stdout

    # one more seed: only its trainings run
    logged = len((out / "vstk.log").read_text().splitlines())
    data, _ = bench("3,4,5")
    lines = (out / "vstk.log").read_text().splitlines()[logged:]
    ran = sorted(line.split("stage ")[1].split(" done")[0] for line in lines if " done in " in line)
    assert ran == ["evaluate-cyclegan-s5", "evaluate-none-s5", "predict-cyclegan-s5", "predict-none-s5",
                   "segment-cyclegan-s5-r0", "segment-none-s5-r0"]
    assert list(data["methods"]["none"]["seeds"]["per_seed"]) == ["3", "4", "5"]

    # a corrected test label: every row is scored again, nothing is trained or predicted again
    path = sorted(labels.glob("*_Label.nii.gz"))[0]
    label = read_nifti(path)
    array = label.array.copy()
    array[tuple(int(n) // 2 for n in array.shape)] = 1
    write_nifti(label.with_array(array), path)
    logged = len((out / "vstk.log").read_text().splitlines())
    bench("3,4,5")
    lines = (out / "vstk.log").read_text().splitlines()[logged:]
    ran = sorted(line.split("stage ")[1].split(" done")[0] for line in lines if " done in " in line)
    assert ran == sorted(f"evaluate-{m}-s{s}" for m in ("none", "cyclegan") for s in (3, 4, 5))


def vstk_fails(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "vstk.cli", "bench", *args], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    return done


def test_bad_inputs_fail_in_one_line_before_training(phantom, tmp_path):
    data = ["--data", str(phantom / "train"), "--test", str(phantom / "test"),
            "--test-labels", str(phantom / "test_labels")]
    checks = [
        (["--translators", "cyclegan,cuttt", *data], "unknown translator 'cuttt'"),
        (["--translators", "cyclegan,qsattn", "--combos", "cyclegan+cut", *data],
         "--combos cyclegan+cut: 'cut' is not in --translators cyclegan,qsattn"),
        (["--translators", "cyclegan,qsattn", "--combos", "cyclegan", *data],
         "--combos cyclegan: a combination joins two or more different translators"),
        (["--translators", "cyclegan,qsattn", "--combos", "cyclegan+qsattn,qsattn+cyclegan", *data],
         "the same combination is named twice"),
        (["--translators", "cyclegan,none", *data], "'none' is the name of a reference row"),
        (["--translators", "cyclegan", "--data", str(phantom / "train")], "--data needs --test and --test-labels"),
        (["--translators", "cyclegan", "--set", "num_epoch=2", *data], "no component of this run has a setting"),
        (["--translators", "cyclegan", *data, "--target-labels", str(phantom / "test_labels")],
         "has no hrT2 image"),
        (["--translators", "cyclegan", *data, "--paired", str(phantom / "train")], "no paired case"),
        (["--translators", "cyclegan", *data, "--seeds", "1,1"], "--seeds 1,1: a seed is named twice"),
        (["--translators", "cyclegan", *data, "--seeds", "1,a"], "--seeds '1,a': seeds are whole numbers"),
    ]
    for i, (args, message) in enumerate(checks):
        out = tmp_path / f"out{i}"
        done = vstk_fails(*args, "--profile", "cpu", "--out", str(out))
        assert message in done.stderr, (args, done.stderr)
        assert not (out / "translators").exists() and not (out / "phantom").exists()  # nothing trained or made


def test_gap_closed_needs_a_ceiling_above_the_floor():
    from vstk.pipeline.bench_report import gap_closed

    assert gap_closed(0.5, 0.2, 0.8) == pytest.approx(0.5)
    assert gap_closed(0.2, 0.2, 0.8) == 0.0 and gap_closed(0.8, 0.2, 0.8) == 1.0
    assert gap_closed(0.0, 0.01, 0.0) is None  # supervised below none: no gap, not "100%"
    assert gap_closed(0.3, 0.3, 0.3) is None and gap_closed(0.3, None, 0.9) is None


@pytest.mark.slow
def test_found_ears_bench_whole_head_data_with_every_row_on_ear_regions(tmp_path):
    root = tmp_path / "crossmoda"
    generate_phantom(root, PhantomConfig(cases=2, test_cases=2, paired_cases=2, resolution_scale=0.4, seed=21,
                                         geometry="crossmoda", target_labels=True))
    data = ["--translators", "cyclegan", "--data", str(root / "train"), "--test", str(root / "test"),
            "--test-labels", str(root / "test_labels"), "--target-labels", str(root / "train_hrT2_labels"),
            "--paired", str(root / "paired"), *TINY]
    # the boxes of the rule miss the ears of whole-head ceT1: refused before anything trains
    refused = vstk_fails(*data, "--ears", "rule", "--out", str(tmp_path / "rule"))
    assert "_ceT1.nii.gz" in refused.stderr and "outside" in refused.stderr  # names the case
    out = tmp_path / "found"
    done = subprocess.run([sys.executable, "-m", "vstk.cli", "bench", *data, "--ears", "found", "--out", str(out)],
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "supervised: mean Dice" in done.stdout
    regions = json.loads((out / "ears" / "regions.json").read_text())["regions"]
    assert len(regions) == 2 + 2 + 2  # training ceT1 and hrT2, test hrT2 (paired ceT1 are located when scored)
    report = json.loads((out / "bench.json").read_text())
    assert set(report["fidelity"]) >= {"none", "cyclegan"}  # paired cases scored on their ear regions
    for row in ("none", "cyclegan", "supervised"):
        record = json.loads((out / "state" / f"segment-{row}-r0.json").read_text())
        assert record["inputs"]["ears"] == "found"
        for truth in sorted((root / "test_labels").glob("*_Label.nii.gz")):  # back on each test image's grid
            predicted = read_nifti(out / "methods" / row / "predictions" / truth.name)
            assert predicted.same_grid(read_nifti(truth)), (row, truth.name)
