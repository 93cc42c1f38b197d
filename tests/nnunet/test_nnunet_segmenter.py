"""The nnU-Net v2 segmenter plugin, on a real nnU-Net trained for about a minute on 2 CPU cores.

Six synthetic hrT2-like cases (24 x 64 x 64 voxels, a bright "VS" and two small "cochleae")
train the ``cpu`` profile's narrow 2D U-Net for a few epochs once per module; held-out cases
are then segmented and scored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vstk.errors import ConfigError, InputError, VstkError
from vstk.protocols import Prediction, Segmenter, TrainingCase
from vstk.volume import Volume, read_nifti
from vstk_nnunet import NnUNetConfig, NnUNetSegmenter, NotTrainedError, WorkdirBusyError

from nnunet_cases import dice, synthetic_case, training_cases

HERE = Path(__file__).resolve().parent
TRAIN_SEEDS = range(6)
HELD_OUT_SEEDS = (101, 102, 103)
# 120 iterations of 0.2-0.3 s: well under a minute of training on 2 cores. One torch thread:
# on cores shared with other jobs two spinning OpenMP threads run many times slower. The same
# epochs in float32 and bfloat16 (the cpu profile lengthens round 0 where AMX trains bfloat16).
TINY = dict(num_epochs=8, iterations_per_epoch=15, val_iterations_per_epoch=1, save_every=4, num_threads=1,
            bf16_epoch_scale=1)


def tiny_segmenter(workdir: Path, **overrides) -> NnUNetSegmenter:
    return NnUNetSegmenter(NnUNetSegmenter.profile("cpu", **{**TINY, **overrides}), workdir)


def tree_digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (to prove a round was left untouched)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def round0(tmp_path_factory):
    """A workdir with round 0 trained on six cases, and the epoch reports of that training."""
    workdir = tmp_path_factory.mktemp("nnunet") / "job"
    segmenter = tiny_segmenter(workdir)
    reports: list[tuple[int, int, str]] = []
    started = time.perf_counter()
    segmenter.train(training_cases(TRAIN_SEEDS), progress=lambda done, total, msg: reports.append((done, total, msg)))
    return {"segmenter": segmenter, "workdir": workdir, "reports": reports, "seconds": time.perf_counter() - started}


@pytest.fixture(scope="module")
def held_out():
    return {f"test{seed}": synthetic_case(seed) for seed in HELD_OUT_SEEDS}


# -- configuration -------------------------------------------------------------------------
def test_segmenter_implements_the_protocol_and_registers_as_nnunet():
    from vstk.plugins import load_plugins

    assert isinstance(NnUNetSegmenter(workdir="unused"), Segmenter)
    host = load_plugins()
    assert host.get("segmenter", "nnunet") is NnUNetSegmenter


def test_profiles_are_overridable_with_command_line_strings():
    paper = NnUNetSegmenter.profile("paper")
    assert (paper.configuration, paper.folds, paper.num_epochs, paper.iterations_per_epoch, paper.mirroring) == \
        ("planned", (0, 1, 2, 3, 4), 1000, 250, True)
    assert not paper.customises_network
    cpu = NnUNetSegmenter.profile("cpu", features_base="8", patch_size="64x64", mirroring="true", device="none")
    assert (cpu.features_base, cpu.patch_size, cpu.mirroring, cpu.device) == (8, (64, 64), True, None)
    cpu3d = NnUNetSegmenter.profile("cpu", configuration="3d_fullres", patch_size="24x64x64")
    assert cpu3d.patch_size == (24, 64, 64)
    assert cpu.customises_network
    with pytest.raises(ConfigError, match="unknown profile"):
        NnUNetSegmenter.profile("fast")
    with pytest.raises(ConfigError, match="3d_highres"):
        NnUNetConfig(configuration="3d_highres")
    with pytest.raises(ConfigError, match="patch_size"):
        NnUNetSegmenter.profile("cpu", patch_size="24x64x64")


# -- errors before any training ------------------------------------------------------------
def test_an_empty_case_list_is_refused(tmp_path):
    with pytest.raises(InputError, match="no training cases"):
        tiny_segmenter(tmp_path).train([])
    assert not (tmp_path / "nnUNet_raw").exists()


def test_a_label_off_its_image_grid_is_refused(tmp_path):
    image, label = synthetic_case(1)
    shifted = Volume(label.array, label.spacing, (5.0, 0.0, 0.0))
    with pytest.raises(InputError, match="case1.*not on its image's grid.*origin"):
        tiny_segmenter(tmp_path).train([TrainingCase("case1", image, shifted)])


@pytest.mark.parametrize("case_id", ["case 1", "ear/left", "case.1", "liver_seg", "", "_x"])
def test_case_ids_nnunet_cannot_use_are_refused(tmp_path, case_id):
    image, label = synthetic_case(1)
    with pytest.raises(InputError, match="cannot be used as an nnU-Net case name") as info:
        tiny_segmenter(tmp_path).train([TrainingCase(case_id, image, label)])
    assert "fix:" in str(info.value)


def test_labels_outside_vs_and_cochlea_are_refused(tmp_path):
    image, label = synthetic_case(1)
    with pytest.raises(InputError, match=r"values \[3\]"):
        tiny_segmenter(tmp_path).train([TrainingCase("a", image, label.with_array(label.array * 0 + 3))])


def test_a_case_marked_pseudo_labelled_is_another_case_to_a_round():
    """The mark decides the case's augmentation, so a round resumed with it changed is refused
    like one with other images (the digest is what a round's case manifest compares)."""
    from vstk_nnunet.raw_dataset import case_digest

    case = training_cases([0])[0]
    pseudo, truth = dataclasses.replace(case, pseudo_labelled=True), dataclasses.replace(case, truth_target=True)
    assert case_digest(case) == case_digest(dataclasses.replace(case))
    assert len({case_digest(case), case_digest(pseudo), case_digest(truth)}) == 3
    assert (case.real_target, pseudo.real_target, truth.real_target) == (False, True, True)


def test_prediction_before_training_names_the_fix(tmp_path):
    image, _ = synthetic_case(1)
    with pytest.raises(NotTrainedError, match="round 0 has not been trained") as info:
        tiny_segmenter(tmp_path).predict({"a": image})
    assert "train(cases, round_index=0)" in str(info.value)


def test_warm_start_needs_the_previous_round(tmp_path):
    with pytest.raises(NotTrainedError, match="round 0 has not finished"):
        tiny_segmenter(tmp_path, warm_start="true").train(training_cases([1]), round_index=1)


def test_called_from_a_spawned_worker_importing_the_script_it_explains_the_main_guard(tmp_path, monkeypatch):
    import multiprocessing

    # what multiprocessing sets while a spawned worker re-imports the main script
    monkeypatch.setattr(multiprocessing.current_process(), "_inheriting", True, raising=False)
    with pytest.raises(VstkError, match="__main__"):
        tiny_segmenter(tmp_path).train(training_cases([1]))
    assert not (tmp_path / "nnunet.lock").exists()


def test_unsafe_checkpoints_are_refused_by_the_weights_only_loader(tmp_path):
    from vstk.errors import CheckpointError
    from vstk_nnunet.trainer import load_checkpoint_file

    path = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": {}, "payload": Path("/etc/passwd")}, path)
    with pytest.raises(CheckpointError, match="cannot load this nnU-Net checkpoint safely"):
        load_checkpoint_file(path)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError):
        load_checkpoint_file(path)


# -- round 0 --------------------------------------------------------------------------------
@pytest.mark.slow
def test_training_writes_a_standard_nnunet_dataset_and_model(round0):
    workdir = round0["workdir"]
    raw = workdir / "nnUNet_raw" / "Dataset501_VSTK_round0"
    dataset = json.loads((raw / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "hrT2"}
    assert dataset["labels"] == {"background": 0, "VS": 1, "cochlea": 2}
    assert (dataset["numTraining"], dataset["file_ending"]) == (6, ".nii.gz")
    assert sorted(p.name for p in (raw / "imagesTr").iterdir()) == [f"case{s}_0000.nii.gz" for s in TRAIN_SEEDS]
    label = read_nifti(raw / "labelsTr" / "case0.nii.gz")
    assert label.array.dtype == np.uint8 and set(np.unique(label.array)) == {0, 1, 2}
    config = round0["segmenter"].config
    fold = round0["segmenter"].final_checkpoint(0).parent
    name = fold.parent.name.split("__")[-1]
    assert fold.parent.name == f"nnUNetTrainerVstk__nnUNetPlans__{name}" and fold.name == "fold_all"
    assert fold.parent.parent == workdir / "nnUNet_results" / "Dataset501_VSTK_round0"
    plans = json.loads((workdir / "nnUNet_preprocessed" / "Dataset501_VSTK_round0" / "nnUNetPlans.json").read_text())
    mine = plans["configurations"][name]
    assert mine["inherits_from"] == config.configuration  # no re-preprocessing for the narrow network
    features = mine["architecture"]["arch_kwargs"]["features_per_stage"]
    assert features == [min(config.features_max, config.features_base * 2 ** i) for i in range(len(features))]
    assert (fold / "checkpoint_final.pth").is_file() and not (fold / "checkpoint_latest.pth").exists()
    assert [done for done, _, _ in round0["reports"]] == list(range(TINY["num_epochs"] + 1))
    print(f"round 0 trained in {round0['seconds']:.0f} s; last epoch: {round0['reports'][-1][2]}")


@pytest.mark.slow
def test_checkpoints_load_with_weights_only(round0):
    from vstk_nnunet.trainer import _safe_globals

    fold = round0["segmenter"].final_checkpoint(0).parent
    with torch.serialization.safe_globals(_safe_globals()):
        checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    assert checkpoint["current_epoch"] == TINY["num_epochs"]
    assert checkpoint["trainer_name"] == "nnUNetTrainerVstk"


@pytest.mark.slow
def test_predictions_segment_the_vs_far_above_chance(round0, held_out):
    predictions = round0["segmenter"].predict({k: image for k, (image, _) in held_out.items()})
    assert [p.case_id for p in predictions] == list(held_out)
    truth = {k: label.array for k, (_, label) in held_out.items()}
    vs = [dice(p.label.array == 1, truth[p.case_id] == 1) for p in predictions]
    # chance: the same predictions scored against the other cases' VS (random positions)
    chance = [dice(p.label.array == 1, truth[other] == 1) for p in predictions for other in truth if other != p.case_id]
    print(f"VS Dice {np.round(vs, 3)} (mean {np.mean(vs):.3f}); chance {np.mean(chance):.3f}")
    assert np.mean(chance) < 0.2
    assert min(vs) > 0.5 and np.mean(vs) > np.mean(chance) + 0.4


@pytest.mark.slow
def test_probabilities_are_a_softmax_on_each_input_grid_and_the_label_is_their_argmax(round0):
    # another grid than the training cases: other spacing, size, origin, and one flipped axis
    image, truth = synthetic_case(104, shape=(20, 70, 58), spacing=(0.55, 0.5, 1.8), origin=(3.0, -2.0, 1.0))
    flipped = Volume(image.array, image.spacing, image.origin, (1, 0, 0, 0, -1, 0, 0, 0, 1))
    small = synthetic_case(105, shape=(16, 48, 40))[0]
    predictions = round0["segmenter"].predict({"other_grid": flipped, "small": small})
    for prediction, source in zip(predictions, (flipped, small)):
        assert isinstance(prediction, Prediction)
        assert prediction.label.same_grid(source) and prediction.label.array.dtype == np.uint8
        probabilities = prediction.probabilities
        assert probabilities.dtype == np.float32 and probabilities.shape == (3, *source.shape)
        assert probabilities.min() >= 0 and np.allclose(probabilities.sum(axis=0), 1.0, atol=1e-4)
        assert np.array_equal(prediction.label.array, probabilities.argmax(axis=0))
    # resampled back correctly: the VS is still found on the other grid
    assert dice(predictions[0].label.array == 1, truth.array == 1) > 0.5


@pytest.mark.slow
def test_a_finished_round_returns_at_once_without_retraining(round0):
    checkpoint = round0["segmenter"].final_checkpoint(0)
    before = checkpoint.stat().st_mtime_ns
    reports = []
    started = time.perf_counter()
    round0["segmenter"].train(training_cases(TRAIN_SEEDS), progress=lambda *r: reports.append(r))
    assert time.perf_counter() - started < 5.0
    assert checkpoint.stat().st_mtime_ns == before
    assert reports == [(TINY["num_epochs"], TINY["num_epochs"], "already trained")]


@pytest.mark.slow
def test_a_trained_round_refuses_another_case_list(round0):
    with pytest.raises(ConfigError, match="round 0 .* was trained on other cases") as info:
        round0["segmenter"].train(training_cases([1, 2]))
    assert "round_index=1" in str(info.value)


@pytest.mark.slow
def test_a_patch_size_the_network_cannot_take_is_refused(round0):
    with pytest.raises(ConfigError, match="does not fit the network.*16x16") as info:
        tiny_segmenter(round0["workdir"], patch_size="60x64").train(training_cases(TRAIN_SEEDS))
    assert "patch_size=48x64" in str(info.value)


@pytest.mark.slow
def test_self_training_round_1_warm_starts_in_its_own_folders(round0, held_out, caplog):
    workdir = round0["workdir"]
    round0_trees = {name: tree_digest(workdir / name / "Dataset501_VSTK_round0")
                    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    # round 1: the same views plus two pseudo-labelled cases (without the structure intensity
    # augmentation); one epoch of one iteration (self_training_epochs), so a good round-1
    # model can only come from round 0's weights
    segmenter = tiny_segmenter(workdir, self_training_epochs=1, iterations_per_epoch=1, warm_start="true",
                               structure_intensity_pseudo="0")
    pseudo = [dataclasses.replace(case, pseudo_labelled=True) for case in training_cases([201, 202], prefix="pseudo")]
    with caplog.at_level(logging.INFO, logger="vstk_nnunet.trainer"):
        segmenter.train(training_cases(TRAIN_SEEDS) + pseudo, round_index=1)
    assert ("probability 1, cochlea mean above the patch's 0.75 quantile; probability 0 on 2 real hrT2 case(s) "
            "(pseudo- or truth-labelled)") in caplog.text

    for name, digest in round0_trees.items():
        assert tree_digest(workdir / name / "Dataset501_VSTK_round0") == digest, f"round 1 changed round 0's {name}"
    round1 = workdir / "nnUNet_preprocessed" / "Dataset502_VSTK_round1"
    plans0 = json.loads((workdir / "nnUNet_preprocessed" / "Dataset501_VSTK_round0" / "nnUNetPlans.json").read_text())
    plans1 = json.loads((round1 / "nnUNetPlans.json").read_text())
    assert plans1.pop("dataset_name") == "Dataset502_VSTK_round1"
    plans0.pop("dataset_name")
    assert plans1 == plans0  # never re-planned
    data = f"nnUNetPlans_{segmenter.config.configuration}"
    data0 = workdir / "nnUNet_preprocessed" / "Dataset501_VSTK_round0" / data
    # cases round 0 preprocessed are reused as they are; only the new ones were preprocessed
    assert (round1 / data / "case0.b2nd").stat().st_ino == (data0 / "case0.b2nd").stat().st_ino
    assert (round1 / data / "pseudo201.b2nd").is_file()
    assert segmenter.final_checkpoint(1).parent.parent.parent.name == "Dataset502_VSTK_round1"
    assert segmenter.config.epochs(0) > 1 and segmenter.config.epochs(1) == 1
    from vstk_nnunet.trainer import load_checkpoint_file

    trained = load_checkpoint_file(segmenter.final_checkpoint(1))["logging"]["train_losses"]
    assert len(trained) == 1  # round 1 ran self_training_epochs, not num_epochs

    predictions = segmenter.predict({k: image for k, (image, _) in held_out.items()}, round_index=1)
    vs = [dice(p.label.array == 1, held_out[p.case_id][1].array == 1) for p in predictions]
    print(f"round 1 (warm start + 1 iteration) VS Dice {np.round(vs, 3)}")
    assert np.mean(vs) > 0.5


# -- bfloat16 training on a CPU ---------------------------------------------------------------
def test_cpu_precision_is_validated_and_resolved_per_device():
    from vstk.resources import cpu_has_bf16_matrix_units
    from vstk_nnunet.environment import trains_in_bf16

    with pytest.raises(ConfigError, match="cpu_precision='fp16'") as info:
        NnUNetConfig(cpu_precision="fp16")
    assert "fp32, bf16, auto" in str(info.value)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not trains_in_bf16(NnUNetConfig(), cpu)  # stock nnU-Net: float32 on a CPU
    assert trains_in_bf16(NnUNetConfig(cpu_precision="bf16"), cpu)
    assert trains_in_bf16(NnUNetConfig(cpu_precision="auto"), cpu) == cpu_has_bf16_matrix_units()
    assert not trains_in_bf16(NnUNetConfig(cpu_precision="bf16"), cuda)  # CUDA keeps nnU-Net's fp16 autocast
    assert NnUNetSegmenter.profile("cpu").cpu_precision == "auto"
    assert NnUNetSegmenter.profile("paper").cpu_precision == "fp32"


def test_bf16_epoch_scale_lengthens_the_first_round_only_where_bfloat16_trains():
    cpu = NnUNetSegmenter.profile("cpu")
    assert (cpu.epochs(0), cpu.epochs(0, bf16=True)) == (40, 50)
    assert cpu.epochs(1) == cpu.epochs(1, bf16=True) == cpu.self_training_epochs  # rounds >= 1 keep their own
    unset = NnUNetConfig(num_epochs=10, bf16_epoch_scale=1.5)  # rounds >= 1 train num_epochs: scaled with it
    assert (unset.epochs(2), unset.epochs(2, bf16=True)) == (10, 15)
    assert NnUNetConfig(num_epochs=3, bf16_epoch_scale=0.1).epochs(0, bf16=True) == 1  # never 0 epochs
    assert NnUNetSegmenter.profile("paper").epochs(0, bf16=True) == 1000
    for bad in ("0", "-1", "101", "nan"):
        with pytest.raises(ConfigError, match=f"bf16_epoch_scale={bad}") as info:
            NnUNetSegmenter.profile("cpu", bf16_epoch_scale=bad)
        assert "bf16_epoch_scale=1" in str(info.value)


@pytest.mark.slow
@pytest.mark.parametrize("precision, epochs", [("bf16", 4), ("fp32", 2)])
def test_a_bfloat16_training_runs_the_scaled_epochs_and_a_float32_one_does_not(tmp_path, precision, epochs):
    segmenter = tiny_segmenter(tmp_path / "job", num_epochs=2, iterations_per_epoch=2, save_every=2,
                               bf16_epoch_scale=2, cpu_precision=precision)
    reports: list[tuple[int, int, str]] = []
    segmenter.train(training_cases(range(3)), progress=lambda *report: reports.append(report))
    assert reports[-1][:2] == (epochs, epochs)
    from vstk_nnunet.trainer import load_checkpoint_file

    final = load_checkpoint_file(segmenter.final_checkpoint(0))
    assert final["current_epoch"] == epochs and len(final["logging"]["train_losses"]) == epochs


def _trainer_on(workdir: Path, bf16: bool = False, **settings):
    """vstk's trainer on round 0's preprocessed data (as training builds it), initialised;
    ``settings`` replace fields of its TrainerSettings."""
    from vstk_nnunet.environment import nnunet_environment
    from vstk_nnunet.layout import FOLD, read_json
    from vstk_nnunet.trainer import TrainerSettings, nnUNetTrainerVstk

    preprocessed = workdir / "nnUNet_preprocessed" / "Dataset501_VSTK_round0"
    plans = read_json(preprocessed / "nnUNetPlans.json")
    plans["continue_training"] = False  # nnU-Net 2.8's trainer pops this key
    name = next(n for n in plans["configurations"] if n.startswith("2d_"))
    scratch = workdir.parent / f"trainer-bf16-{bf16}"  # its own results folder, round 0's data
    scratch.mkdir(exist_ok=True)
    if not (scratch / "nnUNet_preprocessed").exists():
        (scratch / "nnUNet_preprocessed").symlink_to(workdir / "nnUNet_preprocessed")
    with nnunet_environment(scratch, n_proc=1, n_proc_da=0):
        trainer = nnUNetTrainerVstk(plans, name, FOLD, read_json(preprocessed / "dataset.json"), torch.device("cpu"))
        trainer.apply_settings(TrainerSettings(**{**dict(num_epochs=1, iterations_per_epoch=1,
                                                          val_iterations_per_epoch=1, save_every=1, initial_lr=0.03,
                                                          oversample_foreground=0.66, cpu_bf16=bf16), **settings}))
        trainer.initialize()
    return trainer


@pytest.mark.slow
def test_pseudo_labelled_cases_get_their_own_structure_intensity_probability(round0):
    """In nnU-Net's own training loader and transforms: the note names each patch's case, the
    pseudo-labelled cases' structures are never recoloured (probability 0), the others' always
    (1), the cochlea within the bounds set; the intensity remap (probability 1) alters every
    patch of the other cases and none of the pseudo-labelled ones; the fluid rim (probability
    1) draws around the VS of the other cases and never on the pseudo-labelled ones."""
    from vstk_nnunet.augmentation import (FluidRimTransform, IntensityRemapTransform, NotingDataset,
                                          StructureIntensityTransform)
    from vstk_nnunet.environment import nnunet_environment

    pseudo = ("case1", "case4")
    trainer = _trainer_on(round0["workdir"], structure_intensity=1.0, structure_intensity_pseudo=0.0,
                          pseudo_cases=pseudo, intensity_remap=1.0, structure_intensity_cochlea_min=0.75,
                          fluid_rim=1.0)
    assert trainer.structure_intensity_by_case == {"case1": 0.0, "case4": 0.0}
    assert trainer.fluid_rim_by_case == {"case1": 0.0, "case4": 0.0}
    assert trainer.intensity_remap_by_case == {"case1": 0.0, "case4": 0.0}
    with nnunet_environment(round0["workdir"].parent / "trainer-bf16-False", n_proc=1, n_proc_da=0):
        train, _ = trainer.get_dataloaders()
    loader = train.data_loader
    assert isinstance(loader._data, NotingDataset)
    steps = loader.transforms.transforms
    transform = next(t for t in steps if isinstance(t, StructureIntensityTransform))
    remap = next(t for t in steps if isinstance(t, IntensityRemapTransform))
    rim = next(t for t in steps if isinstance(t, FluidRimTransform))
    assert transform.loaded is trainer._loaded_case and remap.loaded is trainer._loaded_case
    assert rim.loaded is trainer._loaded_case and rim.label == 1
    assert transform.lower == {2: 0.75} and transform.upper == {}  # the cochlea drawn bright, the VS anywhere

    seen: list[tuple[str, bool, bool]] = []  # (case, structure in the patch, patch recoloured)
    remapped: list[tuple[str, bool]] = []  # (case, patch remapped)
    rimmed: list[tuple[str, bool, bool]] = []  # (case, VS in the patch, fluid drawn)

    def watch(step, record):
        apply = step.apply

        def watched(data_dict, **params):
            before = data_dict["image"].clone()
            out = apply(data_dict, **params)
            record(data_dict, not torch.equal(before, out["image"]))
            return out

        step.apply = watched

    watch(transform, lambda d, changed: seen.append(
        (transform.loaded.identifier, bool(((d["segmentation"] == 1) | (d["segmentation"] == 2)).any()), changed)))
    watch(remap, lambda d, changed: remapped.append((remap.loaded.identifier, changed)))
    watch(rim, lambda d, changed: rimmed.append((rim.loaded.identifier, bool((d["segmentation"] == 1).any()),
                                                 changed)))
    keys = []
    for _ in range(6):
        keys += list(loader.generate_train_batch()["keys"])
    assert [case for case, _, _ in seen] == keys  # the note named the case of every patch
    assert [case for case, _ in remapped] == keys
    assert {case for case, _, _ in seen} >= {*pseudo, "case0"}
    assert not any(changed for case, _, changed in seen if case in pseudo)
    assert all(changed for case, present, changed in seen if case not in pseudo and present)
    assert any(present for case, present, _ in seen if case in pseudo)  # they had structures to recolour
    assert all(changed == (case not in pseudo) for case, changed in remapped)
    assert [case for case, _, _ in rimmed] == keys
    assert not any(changed for case, present, changed in rimmed if case in pseudo or not present)
    assert any(changed for case, present, changed in rimmed if case not in pseudo and present)


@pytest.mark.slow
def test_a_bf16_training_step_matches_float32_and_keeps_float32_weights(round0):
    from vstk_nnunet.trainer import load_checkpoint_file, load_network_weights

    weights = load_checkpoint_file(round0["segmenter"].final_checkpoint(0))
    trainers = {bf16: _trainer_on(round0["workdir"], bf16) for bf16 in (False, True)}
    for trainer in trainers.values():
        load_network_weights(trainer.network, weights, "round 0")
    first_conv = next(m for m in trainers[True].network.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(p.dtype == torch.float32 for p in trainers[True].network.parameters())

    cases = training_cases(TRAIN_SEEDS[:1])
    image = torch.from_numpy(cases[0].image.array[12:13][None].astype(np.float32))  # [1 case, 1 channel, y, x]
    image = (image - image.mean()) / image.std()
    label = torch.from_numpy(cases[0].label.array[12:13][None].astype(np.float32))
    batch = {"data": image.repeat(2, 1, 1, 1), "target": None}
    losses, changes, conv_dtypes = {}, {}, {}
    for bf16, trainer in trainers.items():
        # deep supervision targets at the network's output scales, nearest neighbour
        with torch.no_grad():
            outputs = trainer.network(batch["data"])
        targets = [torch.nn.functional.interpolate(label.repeat(2, 1, 1, 1), size=o.shape[2:], mode="nearest")
                   for o in outputs]
        before = [p.detach().clone() for p in trainer.network.parameters()]
        conv = next(m for m in trainer.network.modules() if isinstance(m, torch.nn.Conv2d))
        hook = conv.register_forward_hook(lambda module, args, out, bf16=bf16: conv_dtypes.update({bf16: out.dtype}))
        losses[bf16] = float(trainer.train_step(dict(batch, target=targets))["loss"])
        hook.remove()
        changes[bf16] = torch.cat([(p.detach() - b).flatten() for p, b in zip(trainer.network.parameters(), before)])
    print(f"one step from round 0's weights: loss float32 {losses[False]:.6f}, bf16 {losses[True]:.6f}, update cosine "
          f"{torch.nn.functional.cosine_similarity(changes[True], changes[False], dim=0):.4f}")
    assert conv_dtypes == {False: torch.float32, True: torch.bfloat16}
    assert np.isfinite(losses[True]) and abs(losses[True] - losses[False]) < 0.05 * abs(losses[False]) + 0.01
    cosine = torch.nn.functional.cosine_similarity(changes[True], changes[False], dim=0)
    assert cosine > 0.9, f"the bf16 update points elsewhere than the float32 one (cosine {cosine:.3f})"


# -- resume and lock -------------------------------------------------------------------------
@pytest.mark.slow
def test_a_killed_training_resumes_from_its_latest_checkpoint_and_holds_the_lock(tmp_path):
    workdir = tmp_path / "job"
    # two preprocessing workers: nnU-Net-style "spawn" pools started from a guarded script
    settings = dict(num_epochs=8, iterations_per_epoch=4, val_iterations_per_epoch=1, save_every=2,
                    n_proc_preprocessing=2, num_threads=1, bf16_epoch_scale=1)
    log_path = tmp_path / "driver.log"
    with open(log_path, "w") as log:
        driver = subprocess.Popen([sys.executable, str(HERE / "nnunet_train_driver.py"), str(workdir),
                                   *(f"{k}={v}" for k, v in settings.items())], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while _latest_epoch(workdir) < 2:
            assert driver.poll() is None, f"driver ended early:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no checkpoint after 240 s:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.2)
        segmenter = NnUNetSegmenter(NnUNetSegmenter.profile("cpu", **settings), workdir)
        from nnunet_train_driver import DRIVER_SEEDS

        with pytest.raises(WorkdirBusyError, match="nnunet.lock") as info:
            segmenter.train(training_cases(DRIVER_SEEDS))
        assert f"pid {driver.pid}" in str(info.value) and "own workdir" in str(info.value)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    assert driver.returncode == -signal.SIGKILL
    fold = next(workdir.glob("nnUNet_results/*/*/fold_all"))
    assert not (fold / "checkpoint_final.pth").exists()

    reports: list[tuple[int, int, str]] = []
    segmenter.train(training_cases(DRIVER_SEEDS), progress=lambda *r: reports.append(r))
    assert reports[0][0] >= 2 and reports[0][2] == "resumed", reports
    assert reports[-1][:2] == (settings["num_epochs"], settings["num_epochs"])
    from vstk_nnunet.trainer import load_checkpoint_file

    final = load_checkpoint_file(fold / "checkpoint_final.pth")
    assert final["current_epoch"] == settings["num_epochs"]
    assert len(final["logging"]["train_losses"]) == settings["num_epochs"]  # one history, no restart


def _latest_epoch(workdir: Path) -> int:
    """Epoch stored in the round's checkpoint_latest.pth (0 while there is none)."""
    from vstk_nnunet.trainer import load_checkpoint_file

    for path in workdir.glob("nnUNet_results/*/*/fold_all/checkpoint_latest.pth"):
        try:
            return int(load_checkpoint_file(path)["current_epoch"])
        except VstkError:  # replaced while being read
            return 0
    return 0
