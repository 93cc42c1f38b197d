"""`vstk run` end to end on a small phantom with tiny budgets: every stage, resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from vstk.phantom import PhantomConfig, generate_phantom
from vstk.volume import read_nifti

TINY = ["--set", "steps=3", "--set", "decay_steps=1", "--set", "ngf=4", "--set", "n_blocks=1", "--set", "ndf=4",
        "--set", "size=48", "--set", "spacing=1.0,1.0", "--set", "sample_every=0",
        "--set", "qsattn.num_patches=16", "--set", "qsattn.netf_nc=8",
        "--set", "num_epochs=2", "--set", "bf16_epoch_scale=1", "--set", "iterations_per_epoch=2",
        "--set", "val_iterations_per_epoch=1",
        "--set", "save_every=1"]
RULE = ["--ears", "rule"]  # the slab phantom's fixed boxes: these tests are about the stages, not the ears


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantom")
    generate_phantom(root, PhantomConfig(cases=2, test_cases=2, paired_cases=2, resolution_scale=0.3, seed=3,
                                         geometry="slab"))
    return root


def vstk_run(phantom: Path, out: Path, *extra: str, **popen) -> list[str]:
    return [sys.executable, "-m", "vstk.cli", "run", "--translators", "cyclegan,qsattn", "--data",
            str(phantom / "train"), "--test", str(phantom / "test"), "--test-labels", str(phantom / "test_labels"),
            "--out", str(out), "--rounds", "1", *TINY, *RULE, *extra]


@pytest.mark.slow
def test_run_end_to_end_then_resume_skips_finished_stages(phantom, tmp_path):
    out = tmp_path / "run"
    first = subprocess.run(vstk_run(phantom, out), capture_output=True, text=True, timeout=1500)
    assert first.returncode == 0, first.stderr[-3000:]
    for case in ("crossmoda2022_ldn_5", "crossmoda2022_etz_6"):
        prediction = read_nifti(out / "predictions" / f"{case}_Label.nii.gz")
        image = read_nifti(phantom / "test" / f"{case}_hrT2.nii.gz")
        assert prediction.same_grid(image)
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert set(evaluation["models"]) == {"round 1", "round 0"}
    for model in evaluation["models"].values():
        assert 0.0 <= model["summary"]["mean_dice"]["mean"] <= 1.0 and model["summary"]["mean_dice"]["n"] == 2
    report = (out / "report.md").read_text()
    assert "| round 1 |" in report and "figures/dice_boxplot.png" in report
    contrast = json.loads((out / "structure_contrast.json").read_text())["summary"]
    assert set(contrast) == {"ceT1", "cyclegan", "qsattn", "real hrT2"}
    assert contrast["real hrT2"]["cochlea"]["cases"] == 2 and contrast["cyclegan"]["VS"]["cases"] == 2
    assert "## Structure contrast of the views" in report and "| cochlea | " in report
    for name in ("dice_boxplot", "translated_views", "test_contours"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 10_000
    assert "stage pool done" in (out / "vstk.log").read_text()
    assert "structure intensity augmentation on: labels [1, 2], probability 1" in (out / "vstk.log").read_text()

    # `vstk predict` with the run's record gives the run's own test labels, for either round
    for round_args, folder in (((), "predictions"), (("--round", "0"), "predictions_round0")):
        predicted = tmp_path / f"predict-{folder}"
        done = subprocess.run([sys.executable, "-m", "vstk.cli", "predict", str(out), str(phantom / "test"),
                               "--out", str(predicted), *round_args], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        written = sorted(p.name for p in predicted.iterdir())
        assert written == sorted(p.name for p in (out / folder).iterdir()) and len(written) == 2
        for name in written:
            ours, runs = read_nifti(predicted / name), read_nifti(out / folder / name)
            assert ours.same_grid(runs) and np.array_equal(ours.array, runs.array), (folder, name)

    started = time.perf_counter()
    again = subprocess.run(vstk_run(phantom, out), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    log = (out / "vstk.log").read_text()
    assert log.count("already done") >= 7  # translators, pool, two rounds, predict, evaluate
    assert time.perf_counter() - started < 120

    records = {path.name: path.read_bytes() for path in (out / "state").iterdir()}
    changed = subprocess.run(vstk_run(phantom, out, "--set", "cyclegan.steps=4"), capture_output=True, text=True,
                             timeout=600)
    assert changed.returncode == 2
    assert "stage translator-cyclegan was finished with cyclegan.steps: 3 -> 4" in changed.stderr
    assert "(and in" not in changed.stderr and "new --out" in changed.stderr
    assert {path.name: path.read_bytes() for path in (out / "state").iterdir()} == records  # nothing redone

    fewer = subprocess.run(vstk_run(phantom, out, "--rounds", "0"), capture_output=True, text=True, timeout=600)
    assert fewer.returncode == 0, fewer.stderr[-3000:]
    log = (out / "vstk.log").read_text()
    assert "stage predict again: " in log and "rounds: 1 -> 0" in log
    assert set(json.loads((out / "evaluation.json").read_text())["models"]) == {"round 0"}
    assert not (out / "predictions_round0").exists() and (out / "predictions").is_dir()

    cleaned = subprocess.run(vstk_run(phantom, out, "--rounds", "0", "--keep-largest-vs"), capture_output=True,
                             text=True, timeout=600)
    assert cleaned.returncode == 0, cleaned.stderr[-3000:]
    assert "keep_largest_vs: false -> true (recorded -> now)" in (out / "vstk.log").read_text()
    assert "keep only their largest VS component" in (out / "report.md").read_text()
    for path in (out / "predictions").glob("*_Label.nii.gz"):
        _, components = ndimage.label(read_nifti(path).array == 1, structure=np.ones((3, 3, 3), bool))
        assert components <= 1, path


@pytest.mark.slow
def test_a_cross_validated_run_reports_its_choice_and_predict_repeats_it_with_probabilities(tmp_path):
    phantom = tmp_path / "phantom"  # five subjects: nnU-Net's splits have five folds
    generate_phantom(phantom, PhantomConfig(cases=5, test_cases=2, paired_cases=2, resolution_scale=0.3, seed=3,
                                            geometry="slab"))
    out = tmp_path / "run"
    cross_validation = ["--set", "nnunet.folds=0,1", "--set", "nnunet.configurations=2d,3d_fullres"]
    done = subprocess.run(vstk_run(phantom, out, "--rounds", "0", *cross_validation), capture_output=True, text=True,
                          timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(next((out / "segmenter").glob("model_selection_round0.json")).read_text())
    assert len(record["cross_validation"]) == 3  # 2d, 3d_fullres and their ensemble
    report = (out / "report.md").read_text()
    assert "## The segmenter of round 0" in report and f"Chosen: {record['chosen']['model']}." in report
    for candidate in record["cross_validation"]:
        assert f"| {candidate['model']}" in report and f"{candidate['dice']:.4f}" in report

    predicted = tmp_path / "predicted"
    again = subprocess.run([sys.executable, "-m", "vstk.cli", "predict", str(out), str(phantom / "test"), "--out",
                            str(predicted), "--save-probabilities"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    labels = sorted(p.name for p in (out / "predictions").iterdir())
    assert len(labels) == 2 and sorted(p.name for p in predicted.glob("*.nii.gz")) == labels
    for name in labels:
        ours, runs = read_nifti(predicted / name), read_nifti(out / "predictions" / name)
        assert ours.same_grid(runs) and np.array_equal(ours.array, runs.array), name
        stem = name.removesuffix(".nii.gz")
        with np.load(predicted / f"{stem}.npz", allow_pickle=False) as saved:
            probabilities = saved["probabilities"]
        assert probabilities.shape == (3, *ours.shape) and probabilities.dtype == np.float32
        assert np.allclose(probabilities.sum(axis=0), 1.0, atol=1e-3)
        grid = json.loads((predicted / f"{stem}.json").read_text())
        assert grid["classes"] == {"0": "background", "1": "VS", "2": "cochlea"}
        assert tuple(grid["spacing_xyz"]) == ours.spacing and tuple(grid["shape_zyx"]) == ours.shape
        if not record["postprocessing"]:  # the label is the softmax's argmax unless postprocessed
            assert np.array_equal(probabilities.argmax(axis=0), ours.array)


@pytest.mark.slow
def test_segment_on_whole_trains_and_predicts_whole_volumes_as_the_paper(phantom, tmp_path):
    out = tmp_path / "run"
    # one thread: nnU-Net's small-patch sliding window over whole volumes ran 25x slower per
    # forward pass with two threads on a loaded 2-core machine
    short = ["--set", "nnunet.num_threads=1", "--set", "nnunet.self_training_epochs=2"]
    done = subprocess.run(vstk_run(phantom, out, "--segment-on", "whole", *short), capture_output=True, text=True,
                          timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    for round_index in (0, 1):  # nnU-Net's raw dataset holds each view (and pseudo label) whole, not its ears
        [raw] = (out / "segmenter").glob(f"**/nnUNet_raw/*round{round_index}")
        ids = sorted(p.name.removesuffix("_0000.nii.gz") for p in (raw / "imagesTr").glob("*_0000.nii.gz"))
        views = [f"{view}__{p.name.removesuffix('_ceT1.nii.gz')}" for view in ("cyclegan", "qsattn")
                 for p in (phantom / "train").glob("*_ceT1.nii.gz")]
        pseudo = [f"pseudo_r1__{p.name.removesuffix('_hrT2.nii.gz')}" for p in (phantom / "train").glob("*_hrT2.nii.gz")]
        assert ids == sorted(views + (pseudo if round_index else [])), ids
        case = ids[0].split("__", 1)[1]
        image = read_nifti(phantom / "train" / f"{case}_ceT1.nii.gz")
        assert read_nifti(raw / "imagesTr" / f"{ids[0]}_0000.nii.gz").shape == image.shape
    state = json.loads((out / "state" / "segment-r0.json").read_text())
    assert state["inputs"]["segment_on"] == "whole"
    predicted = tmp_path / "predicted"
    again = subprocess.run([sys.executable, "-m", "vstk.cli", "predict", str(out), str(phantom / "test"), "--out",
                            str(predicted)], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(p.name for p in predicted.iterdir()) == sorted(p.name for p in (out / "predictions").iterdir())
    for path in sorted((out / "predictions").iterdir()):
        ours, runs = read_nifti(predicted / path.name), read_nifti(path)
        assert runs.same_grid(read_nifti(phantom / "test" / path.name.replace("_Label", "_hrT2")))
        assert np.array_equal(ours.array, runs.array), path.name
    refused = subprocess.run(vstk_run(phantom, out, *short), capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and 'segment_on: "whole" -> "(not set)"' in refused.stderr, refused.stderr[-2000:]


@pytest.mark.slow
def test_run_killed_during_segmenter_training_resumes(phantom, tmp_path):
    out = tmp_path / "run"
    slow = ["--set", "num_epochs=4", "--set", "iterations_per_epoch=3"]
    process = subprocess.Popen(vstk_run(phantom, out, *slow), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.time() + 1200
    checkpoint = None
    while time.time() < deadline and process.poll() is None:
        found = list((out / "segmenter").rglob("checkpoint_latest.pth")) if (out / "segmenter").exists() else []
        if found:
            checkpoint = found[0]
            break
        time.sleep(1)
    assert checkpoint is not None, "segmenter training never wrote a checkpoint"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "state" / "segment-r0.json").exists()
    resumed = subprocess.run(vstk_run(phantom, out, *slow), capture_output=True, text=True, timeout=1500)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (out / "state" / "segment-r1.json").exists() and (out / "report.md").exists()


def test_bad_inputs_fail_before_training(phantom, tmp_path):
    unknown = subprocess.run([sys.executable, "-m", "vstk.cli", "run", "--translators", "cyclegan,cuttt",
                              "--data", str(phantom / "train"), "--out", str(tmp_path / "a")],
                             capture_output=True, text=True, timeout=300)
    assert unknown.returncode == 2 and "unknown translator 'cuttt'" in unknown.stderr
    no_labeler = subprocess.run([sys.executable, "-m", "vstk.cli", "run", "--translators", "cyclegan",
                                 "--pseudo-labeler", "best", "--data", str(phantom / "train"),
                                 "--out", str(tmp_path / "b")], capture_output=True, text=True, timeout=300)
    assert no_labeler.returncode == 2 and "unknown pseudo-labeler 'best'" in no_labeler.stderr
    no_hrt2 = subprocess.run([sys.executable, "-m", "vstk.cli", "run", "--translators", "cyclegan",
                              "--data", str(phantom / "test_labels"), "--out", str(tmp_path / "c")],
                             capture_output=True, text=True, timeout=300)
    assert no_hrt2.returncode == 2 and "has no ceT1 or hrT2 image" in no_hrt2.stderr
    mismatched = subprocess.run([sys.executable, "-m", "vstk.cli", "run", "--translators", "cyclegan",
                                 "--data", str(phantom / "train"), "--test", str(phantom / "test"),
                                 "--test-labels", str(phantom / "train"), "--out", str(tmp_path / "d")],
                                capture_output=True, text=True, timeout=300)
    assert mismatched.returncode == 2 and "no test label matches a test image" in mismatched.stderr
    for folder in "abcd":
        assert not (tmp_path / folder / "translators").exists()  # nothing trained


def test_predict_refuses_a_folder_without_a_finished_run_a_round_it_did_not_train_and_bad_images(phantom, tmp_path):
    from vstk.errors import ConfigError, InputError, VstkError
    from vstk.pipeline.predict import predict, recorded_options
    from vstk.atomic import write_json_atomic
    from vstk.pipeline.plan import RunOptions
    from vstk.pipeline.records import dataclass_dict
    from vstk.plugins import load_plugins

    host = load_plugins()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(InputError, match="holds no run.json"):
        predict(run_dir, phantom / "test", tmp_path / "labels", host)
    (run_dir / "run.json").write_text("{not json")
    with pytest.raises(InputError, match="not a vstk run record"):
        predict(run_dir, phantom / "test", tmp_path / "labels", host)

    options = RunOptions(out=Path("elsewhere"), data=phantom / "train", rounds=1, keep_largest_vs=True,
                         settings=(("nnunet.seed", "3"),))
    write_json_atomic(run_dir / "run.json", {"options": dataclass_dict(options), "stages": {}})
    assert recorded_options(run_dir) == RunOptions(**{**options.__dict__, "out": run_dir})
    with pytest.raises(ConfigError, match="round 2 is not a round of the run"):
        predict(run_dir, phantom / "test", tmp_path / "labels", host, round_index=2)
    with pytest.raises(InputError, match="has no ceT1 or hrT2 image"):
        predict(run_dir, phantom / "test_labels", tmp_path / "labels", host)
    with pytest.raises(ConfigError, match="is the image folder"):
        predict(run_dir, phantom / "test", phantom / "test", host)
    with pytest.raises(VstkError, match="round 1 has not been trained"):  # the run trained no segmenter
        predict(run_dir, phantom / "test", tmp_path / "labels", host)
    assert not (tmp_path / "labels").exists()

    # a run trained on a GPU predicts on a CPU with --device cpu (its --device and --set device replaced)
    from vstk.pipeline.predict import on_device
    from vstk.pipeline.plan import component_classes, run_components

    on_gpu = RunOptions(out=run_dir, device="cuda", settings=(("nnunet.device", "cuda"), ("nnunet.seed", "3")))
    moved = on_device(on_gpu, "cpu")
    assert moved.device == "cpu" and moved.settings == (("nnunet.seed", "3"),)
    segmenter = run_components(moved, component_classes(moved, host)).segmenter
    assert segmenter.config.device == "cpu" and segmenter.config.seed == 3
    assert on_device(on_gpu, None) is on_gpu
