"""nnU-Net's default pipeline in vstk: folds, configurations, subject-grouped splits, the model
choice and its postprocessing.

The slow test trains two tiny configurations (2d and 3d_fullres, features 4..16) on two
folds of a subject-grouped split with nnU-Net's own trainer, validation, find_best_configuration
and postprocessing, then predicts with the chosen model.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np
import pytest

from vstk.config import apply_overrides, result_defaults, result_settings
from vstk.errors import ConfigError, InputError
from vstk.protocols import TrainingCase
from vstk_nnunet import NnUNetConfig, NnUNetSegmenter, NotTrainedError
from vstk_nnunet.layout import round_layout
from vstk_nnunet.splits import (
    SPLITS_FILE,
    assign_folds,
    grouped_splits,
    subject_folds,
    subject_of,
    write_round_splits,
)

from nnunet_cases import dice, synthetic_case

# -- settings ----------------------------------------------------------------------------------


def test_paper_profile_cross_validates_every_planned_configuration_and_cpu_keeps_fold_all():
    paper = NnUNetSegmenter.profile("paper")
    assert (paper.configuration, paper.configurations, paper.folds) == ("planned", None, (0, 1, 2, 3, 4))
    planned = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")
    assert paper.trained_configurations(planned) == planned
    assert paper.trained_configurations(("2d", "3d_fullres")) == ("2d", "3d_fullres")
    # a planned cascade needs all five folds: with two it is left out
    assert apply_overrides(paper, {"folds": "0,1"}).trained_configurations(planned) == planned[:3]
    cpu = NnUNetSegmenter.profile("cpu")
    assert (cpu.folds, cpu.trained_configurations(), cpu.cross_validation) == (("all",), ("2d",), False)
    two = NnUNetSegmenter.profile("cpu", folds="1,0")
    assert (two.folds, two.cross_validation, two.trained_configurations()) == ((0, 1), True, ("2d",))
    both = NnUNetSegmenter.profile("cpu", folds="0,1", configurations="3d_fullres,2d")
    assert both.trained_configurations() == ("2d", "3d_fullres")  # nnU-Net's order
    assert apply_overrides(paper, {"configuration": "2d"}).trained_configurations(planned) == ("2d",)


def test_new_settings_keep_old_stage_records_valid():
    """A record of a vstk without these settings reads them at their class defaults, which are
    what the cpu profile (and every older run) trains: fold all, one configuration."""
    defaults = result_defaults(NnUNetConfig())
    assert (defaults["folds"], defaults["configurations"]) == (["all"], None)
    cpu = result_settings(NnUNetSegmenter.profile("cpu"))
    assert (cpu["folds"], cpu["configurations"]) == (defaults["folds"], defaults["configurations"])
    assert result_settings(NnUNetSegmenter.profile("cpu", folds="0,1"))["folds"] == [0, 1]


@pytest.mark.parametrize("overrides, message, fix", [
    ({"folds": "0,5"}, "folds=0,5: nnU-Net's cross-validation has the folds 0 to 4", "folds=0,1,2,3,4"),
    ({"folds": "all,0"}, "'all' .* cannot be mixed", "folds=all"),
    ({"folds": "0,0"}, "folds=0,0 names a fold twice", "folds=0,1"),
    ({"folds": "one"}, "'one' is not a fold number", "folds=0,1,2,3,4"),
    ({"configurations": "2d,3d_fullres"}, "with folds=all: choosing between configurations needs cross-validation",
     "set folds=0,1,2,3,4"),
    ({"configuration": "planned"}, "configuration=planned with folds=all", "folds=0,1"),
    ({"configurations": "2d,3d_highres", "folds": "0"}, "'3d_highres' is not an nnU-Net configuration",
     "2d, 3d_fullres, 3d_lowres, 3d_cascade_fullres"),
    ({"configurations": "3d_cascade_fullres", "folds": "0,1,2,3,4"}, "needs its low-resolution stage 3d_lowres",
     "configurations=3d_lowres,3d_cascade_fullres"),
    ({"configurations": "3d_lowres,3d_cascade_fullres", "folds": "0,1"}, "3d_cascade_fullres needs folds=0,1,2,3,4",
     "leave 3d_cascade_fullres out"),
    ({"configurations": "2d,3d_fullres", "folds": "0", "patch_size": "64x64"},
     "patch_size=64x64 cannot fit 2D and 3D configurations", "patch_size=none"),
    ({"configurations": "planned", "folds": "0"}, "'planned' is a value of configuration", "configuration=planned"),
])
def test_folds_and_configurations_are_checked_with_value_and_fix(overrides, message, fix):
    with pytest.raises(ConfigError, match=message) as info:
        NnUNetSegmenter.profile("cpu", **overrides)
    assert fix in str(info.value).split("fix:", 1)[1]


# -- subject-grouped splits ----------------------------------------------------------------------
SUBJECTS = [f"crossmoda2022_{site}_{i}" for site, i in
            [("ldn", 1), ("ldn", 2), ("ldn", 17), ("etz", 106), ("etz", 107), ("etz", 150), ("ldn", 23)]]
HRT2_SUBJECTS = [f"crossmoda2022_{site}_{i}" for site, i in [("ldn", 211), ("etz", 300), ("ldn", 212), ("etz", 420)]]


def run_case_ids(pseudo_round: int | None = None) -> list[str]:
    """Case ids as `vstk run` names them: every view and ear of the labelled ceT1 subjects, and
    the pseudo-labelled real hrT2 of a self-training round."""
    ids = [f"{view}__{subject}__{side}" for view in ("cyclegan", "qsattn") for subject in SUBJECTS
           for side in ("R", "L")]
    if pseudo_round is not None:
        ids += [f"pseudo_r{pseudo_round}__{subject}__{side}" for subject in HRT2_SUBJECTS for side in ("R", "L")]
    return ids


def test_subject_of_drops_the_view_or_round_prefix_and_the_ear():
    assert subject_of("cyclegan__crossmoda2022_ldn_1__R") == "crossmoda2022_ldn_1"
    assert subject_of("pseudo_r2__crossmoda2022_etz_210__L") == "crossmoda2022_etz_210"
    assert subject_of("ceT1__crossmoda_17__R") == subject_of("hrT2__crossmoda_17__L") == "crossmoda_17"
    assert subject_of("qsattn__crossmoda2022_ldn_1") == "crossmoda2022_ldn_1"  # a pool export: no ear
    assert subject_of("crossmoda2022_ldn_1__R") == "crossmoda2022_ldn_1"
    assert subject_of("case3") == "case3"


@pytest.mark.parametrize("ids", [run_case_ids(), run_case_ids(pseudo_round=1),
                                 [f"{c}__{s}__{e}" for c in ("ceT1", "hrT2") for s in SUBJECTS for e in "RL"]],
                         ids=["views", "views+pseudo", "bench"])
def test_no_subject_is_on_both_sides_of_any_fold(ids):
    splits = grouped_splits(ids)
    assert len(splits) == 5
    val_sets = [set(split["val"]) for split in splits]
    assert set().union(*val_sets) == set(ids) and sum(map(len, val_sets)) == len(ids)  # each case validated once
    for split in splits:
        train = {subject_of(c) for c in split["train"]}
        val = {subject_of(c) for c in split["val"]}
        assert val and train and not train & val, split
        assert set(split["train"]) | set(split["val"]) == set(ids)
    sizes = sorted(len(v) for v in val_sets)
    assert sizes[-1] - sizes[0] <= 2 * 4 + 4  # balanced to within the largest subject's cases


def test_subjects_keep_their_fold_in_later_rounds():
    round0 = grouped_splits(run_case_ids())
    round1 = grouped_splits(run_case_ids(pseudo_round=1), previous=subject_folds(round0))
    before, after = subject_folds(round0), subject_folds(round1)
    assert all(after[s] == before[s] for s in SUBJECTS)
    assert set(after) == set(SUBJECTS) | set(HRT2_SUBJECTS)
    assert assign_folds(run_case_ids()) == assign_folds(list(reversed(run_case_ids())))  # order-independent


def test_fewer_subjects_than_folds_is_refused_with_the_count():
    with pytest.raises(InputError, match="needs at least 5 subjects.*show 4") as info:
        grouped_splits([f"cyclegan__s{i}__{e}" for i in range(4) for e in "RL"])
    assert "folds=all" in str(info.value)


def test_round_splits_are_nnunets_file_and_are_not_changed_under_trained_folds(tmp_path):
    config = NnUNetSegmenter.profile("cpu", folds="0,1")
    layout = round_layout(tmp_path, config, 0)
    splits = write_round_splits(layout, run_case_ids(), None)
    written = json.loads((layout.preprocessed / SPLITS_FILE).read_text())
    assert written == splits and set(written[0]) == {"train", "val"}
    fold = layout.fold_dir("2d_f16-128", 0)
    fold.mkdir(parents=True)
    (fold / "checkpoint_latest.pth").write_bytes(b"")
    assert write_round_splits(layout, run_case_ids(), None) == splits  # same cases: untouched
    with pytest.raises(ConfigError, match="trained on other splits"):
        write_round_splits(layout, run_case_ids()[:-6], None)
    later = round_layout(tmp_path, config, 1)
    again = write_round_splits(later, run_case_ids(pseudo_round=1), layout)
    assert {s: f for s, f in subject_folds(again).items() if s in SUBJECTS} == subject_folds(splits)


def test_postprocessing_keeps_the_largest_component_with_nnunets_function():
    from vstk_nnunet.selection import postprocess

    label = np.zeros((1, 10, 10), np.uint8)
    label[0, 0:3, 0:3] = 1  # 9 voxels of VS
    label[0, 6:7, 6:7] = 1  # a stray VS voxel
    label[0, 8:10, 0:2] = 2  # a cochlea, 4 voxels
    assert postprocess(label, ()) is label
    per_label = postprocess(label, [(1,)])
    assert per_label.sum() == label.sum() - 1 and per_label[0, 6, 6] == 0 and (per_label == 2).sum() == 4
    union = postprocess(label, [(1, 2)])  # the largest component of all foreground: the VS only
    assert (union == 1).sum() == 9 and (union == 2).sum() == 0


# -- the whole pipeline on a CPU --------------------------------------------------------------
TINY_CV = dict(folds="0,1", configurations="2d,3d_fullres", features_base=4, features_max=16, batch_size=2,
               num_epochs=4, iterations_per_epoch=10, val_iterations_per_epoch=1, save_every=2, num_threads=1,
               n_proc_preprocessing=1, cpu_precision="fp32", structure_intensity=0.0, self_training_epochs=2)
CV_SUBJECTS = range(6)


def cv_cases() -> list[TrainingCase]:
    """Two 'views' of each of six subjects (the second darker), as `vstk run` names them."""
    cases = []
    for seed in CV_SUBJECTS:
        image, label = synthetic_case(seed, shape=(16, 48, 48))
        for view, scale in (("cyclegan", 1.0), ("qsattn", 0.8)):
            cases.append(TrainingCase(f"{view}__crossmoda2022_ldn_{seed}__R", image.with_array(image.array * scale),
                                      label))
    return cases


@pytest.fixture(scope="module")
def cross_validated(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("nnunet_cv") / "job"
    segmenter = NnUNetSegmenter(NnUNetSegmenter.profile("cpu", **TINY_CV), workdir)
    reports = []
    started = time.perf_counter()
    segmenter.train(cv_cases(), progress=lambda *r: reports.append(r))
    return {"segmenter": segmenter, "workdir": workdir, "reports": reports, "seconds": time.perf_counter() - started}


@pytest.mark.slow
def test_two_configurations_cross_validate_select_and_predict_with_nnunets_code(cross_validated):
    segmenter, workdir = cross_validated["segmenter"], cross_validated["workdir"]
    layout = round_layout(workdir, segmenter.config, 0)
    names = ["2d_f4-16_b2", "3d_fullres_f4-16_b2"]
    print(f"trained 2 configurations x 2 folds, validated and selected in {cross_validated['seconds']:.0f} s")

    # subject-grouped splits, and nnU-Net trained and validated each fold on them
    splits = json.loads((layout.preprocessed / SPLITS_FILE).read_text())
    for fold in (0, 1):
        val = {subject_of(c) for c in splits[fold]["val"]}
        assert val and not val & {subject_of(c) for c in splits[fold]["train"]}
        for name in names:
            folder = layout.fold_dir(name, fold)
            assert (folder / "checkpoint_final.pth").is_file()
            predicted = sorted(p.name.removesuffix(".nii.gz") for p in (folder / "validation").glob("*.nii.gz"))
            assert predicted == sorted(splits[fold]["val"])  # nnU-Net's validation of the held-out cases
            assert len(list((folder / "validation").glob("*.npz"))) == len(predicted)  # softmax saved
    epochs = TINY_CV["num_epochs"]
    reports = cross_validated["reports"]
    assert reports[-1][:2] == (4 * epochs, 4 * epochs) and "3d_fullres_f4-16_b2 fold 1" in reports[-1][2]

    # nnU-Net's find_best_configuration over both configurations and their ensemble
    record = json.loads(layout.selection_file.read_text())
    assert record["schema"] == "vstk-nnunet-model-selection" and record["folds"] == [0, 1]
    assert [c["model"] for c in record["cross_validation"]] == [*names, " + ".join(names)]
    nnunet_info = json.loads((layout.results / "inference_information.json").read_text())
    scores = {c["model"]: c["dice"] for c in record["cross_validation"]}
    assert sorted(scores.values()) == sorted(nnunet_info["all_results"].values())
    best = max(scores.values())
    assert record["chosen"]["dice"] == pytest.approx(best)
    assert scores[record["chosen"]["model"]] == pytest.approx(best)
    validated = len(splits[0]["val"]) + len(splits[1]["val"])
    assert all(c["cases"] == validated for c in record["cross_validation"])  # each held-out case once
    assert set(record["chosen"]["dice_per_label_after_postprocessing"]) == {"VS", "cochlea"}
    assert record["chosen"]["dice_after_postprocessing"] >= record["chosen"]["dice"]
    for step in record["postprocessing"]:
        assert set(step["largest_component_of"]) <= {1, 2}

    # predict uses the chosen model and its postprocessing
    model = segmenter.chosen_model(0)
    assert list(model.configurations) == record["chosen"]["configurations"] and model.folds == (0, 1)
    assert len(segmenter.final_checkpoints(0)) == 2 * len(model.configurations)
    test_image, test_label = synthetic_case(77, shape=(16, 48, 48))
    [prediction] = segmenter.predict({"t": test_image})
    assert prediction.label.shape == test_image.shape and prediction.probabilities.shape == (3, *test_image.shape)
    assert np.allclose(prediction.probabilities.sum(axis=0), 1.0, atol=1e-3)
    if not model.postprocessing:
        assert np.array_equal(prediction.label.array, prediction.probabilities.argmax(axis=0))
    vs = dice(prediction.label.array == 1, test_label.array == 1)
    print(f"chosen {record['chosen']['model']}: cross-validation Dice {record['chosen']['dice']:.3f}; "
          f"held-out VS Dice {vs:.3f}")
    assert vs > 0.2  # a few iterations: far above chance, not a good model


@pytest.mark.slow
def test_a_cross_validated_round_resumes_fold_by_fold(cross_validated, tmp_path):
    """Finished folds are skipped; a fold that finished training but not its validation only
    validates; a lost selection record is chosen again without retraining."""
    segmenter, workdir = cross_validated["segmenter"], cross_validated["workdir"]
    layout = round_layout(workdir, segmenter.config, 0)
    record = json.loads(layout.selection_file.read_text())
    checkpoints = {p: p.stat().st_mtime_ns for p in layout.results.glob("*/fold_*/checkpoint_final.pth")}
    reports = []
    segmenter.train(cv_cases(), progress=lambda *r: reports.append(r))
    assert reports == [(16, 16, "already trained")]

    validation = layout.fold_dir("3d_fullres_f4-16_b2", 1) / "validation"
    (validation / "summary.json").unlink()
    layout.selection_file.unlink()
    with pytest.raises(NotTrainedError, match="no chosen model yet.*3d_fullres_f4-16_b2 fold 1"):
        segmenter.predict({"t": synthetic_case(77, shape=(16, 48, 48))[0]})
    reports.clear()
    segmenter.train(cv_cases(), progress=lambda *r: reports.append(r))
    assert [r[2] for r in reports[:3]] == [f"{n} fold {f}: already trained" for n, f in
                                           itertools.islice(itertools.product(["2d_f4-16_b2",
                                                                               "3d_fullres_f4-16_b2"], (0, 1)), 3)]
    assert (validation / "summary.json").is_file()
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == checkpoints  # nothing retrained
    again = json.loads(layout.selection_file.read_text())
    assert again["chosen"] == record["chosen"] and again["cross_validation"] == record["cross_validation"]


def test_too_few_subjects_are_refused_before_anything_is_written(tmp_path):
    segmenter = NnUNetSegmenter(NnUNetSegmenter.profile("cpu", folds="0,1"), tmp_path / "job")
    image, label = synthetic_case(1)
    views = [TrainingCase(f"{view}__crossmoda2022_ldn_{i}__R", image, label) for view in ("a", "b") for i in range(3)]
    with pytest.raises(InputError, match="needs at least 5 subjects.*6 training case.*show 3"):
        segmenter.train(views)
    assert not (tmp_path / "job" / "nnUNet_raw").exists()


def test_nnunet_pools_become_one_thread_of_this_process_and_are_restored(tmp_path):
    from multiprocessing.pool import ThreadPool

    from vstk_nnunet.environment import nnunet_environment, nnunet_pools_in_process

    with nnunet_environment(tmp_path, n_proc=1, n_proc_da=0):  # nnU-Net reads nnUNet_def_n_proc on import
        import nnunetv2.evaluation.evaluate_predictions as evaluation

    real = evaluation.multiprocessing
    with nnunet_pools_in_process():
        with evaluation.multiprocessing.get_context("spawn").Pool(8) as pool:
            assert isinstance(pool, ThreadPool) and len(pool._pool) == 1
            assert pool.starmap(max, [(1, 2), (4, 3)]) == [2, 4]
    assert evaluation.multiprocessing is real


@pytest.mark.slow
def test_an_ensemble_choice_predicts_the_mean_softmax_of_its_configurations(cross_validated):
    """predict() follows the selection record: with the pair chosen it averages the two
    configurations' softmax (what nnUNetv2_ensemble does) and labels the argmax."""
    segmenter, workdir = cross_validated["segmenter"], cross_validated["workdir"]
    layout = round_layout(workdir, segmenter.config, 0)
    original = layout.selection_file.read_text()
    record = json.loads(original)
    image = synthetic_case(78, shape=(16, 48, 48))[0]
    predicted = {}
    try:
        for names in (("2d_f4-16_b2",), ("3d_fullres_f4-16_b2",), ("2d_f4-16_b2", "3d_fullres_f4-16_b2")):
            record["chosen"]["configurations"], record["postprocessing"] = list(names), []
            layout.selection_file.write_text(json.dumps(record))
            assert segmenter.chosen_model(0).configurations == names
            [predicted[names]] = segmenter.predict({"t": image})
    finally:
        layout.selection_file.write_text(original)
    pair = predicted[("2d_f4-16_b2", "3d_fullres_f4-16_b2")]
    mean = (predicted[("2d_f4-16_b2",)].probabilities + predicted[("3d_fullres_f4-16_b2",)].probabilities) / 2
    assert np.allclose(pair.probabilities, mean, atol=1e-6)
    assert np.array_equal(pair.label.array, mean.argmax(axis=0))


@pytest.mark.slow
def test_a_killed_fold_continues_from_its_checkpoint_and_the_others_are_kept(tmp_path):
    """A fold stopped after epoch 2 (its latest checkpoint, no final one, no validation)
    continues at epoch 2 when train() is called again; the finished fold is not retrained."""
    import torch

    from vstk_nnunet.trainer import load_checkpoint_file

    settings = {**TINY_CV, "configurations": "2d"}
    segmenter = NnUNetSegmenter(NnUNetSegmenter.profile("cpu", **settings), tmp_path / "job")
    segmenter.train(cv_cases())
    layout = round_layout(tmp_path / "job", segmenter.config, 0)
    kept, killed = layout.fold_dir("2d_f4-16_b2", 0), layout.fold_dir("2d_f4-16_b2", 1)
    final = load_checkpoint_file(killed / "checkpoint_final.pth")
    history = {k: v[:2] if isinstance(v, list) else v for k, v in final["logging"].items()}
    torch.save(dict(final, current_epoch=2, logging=history), killed / "checkpoint_latest.pth")  # killed after epoch 2
    (killed / "checkpoint_final.pth").unlink()
    (killed / "validation" / "summary.json").unlink()
    stamp = (kept / "checkpoint_final.pth").stat().st_mtime_ns
    reports = []
    segmenter.train(cv_cases(), progress=lambda *r: reports.append(r))
    epochs = TINY_CV["num_epochs"]
    assert reports[0] == (epochs, 2 * epochs, "2d_f4-16_b2 fold 0: already trained")
    assert reports[1] == (epochs + 2, 2 * epochs, "2d_f4-16_b2 fold 1: resumed")
    assert reports[-1][:2] == (2 * epochs, 2 * epochs)
    assert load_checkpoint_file(killed / "checkpoint_final.pth")["current_epoch"] == epochs
    assert (killed / "validation" / "summary.json").is_file() and layout.selection_file.is_file()
    assert (kept / "checkpoint_final.pth").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_a_cross_validated_self_training_round_keeps_the_subjects_folds_and_warm_starts_each_fold(
        cross_validated, caplog):
    """Round 1 adds pseudo-labelled real hrT2 of new subjects (labelled by round 0's chosen
    model): round 0's subjects keep their folds, the new ones join whole, and each fold starts
    from round 0's same fold (the cpu profile's warm start)."""
    segmenter, workdir = cross_validated["segmenter"], cross_validated["workdir"]
    targets = {f"crossmoda2022_etz_{200 + seed}": synthetic_case(200 + seed, shape=(16, 48, 48))[0]
               for seed in range(3)}
    pseudo = [TrainingCase(f"pseudo_r1__{case}__R", targets[case], p.label, pseudo_labelled=True)
              for case, p in zip(targets, segmenter.predict(targets))]
    with caplog.at_level("INFO", logger="vstk_nnunet"):
        segmenter.train(cv_cases() + pseudo, round_index=1)
    round0, round1 = (round_layout(workdir, segmenter.config, r) for r in (0, 1))
    before = subject_folds(json.loads((round0.preprocessed / SPLITS_FILE).read_text()))
    splits = json.loads((round1.preprocessed / SPLITS_FILE).read_text())
    after = subject_folds(splits)
    assert {s: f for s, f in after.items() if s in before} == before
    assert set(after) - set(before) == set(targets)
    for split in splits:
        assert not {subject_of(c) for c in split["train"]} & {subject_of(c) for c in split["val"]}
    warm = [r.getMessage() for r in caplog.records if r.getMessage().startswith("warm start of")]
    assert len(warm) == 4, warm  # two configurations x two folds
    assert round1.selection_file.is_file()
    [prediction] = segmenter.predict({"t": synthetic_case(77, shape=(16, 48, 48))[0]}, round_index=1)
    assert prediction.probabilities.shape[0] == 3


def _plans_with_a_cascade() -> dict:
    """The shape of nnU-Net plans for large images: 2d, 3d_fullres, 3d_lowres and the cascade."""
    def architecture(stages: int) -> dict:
        return {"network_class_name": "PlainConvUNet",
                "arch_kwargs": {"n_stages": stages, "features_per_stage": [32 * 2 ** i for i in range(stages)],
                                "strides": [[1, 1, 1]] + [[2, 2, 2]] * (stages - 1)}}
    return {"configurations": {
        "2d": {"data_identifier": "nnUNetPlans_2d", "architecture": architecture(6)},
        "3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres", "architecture": architecture(5)},
        "3d_lowres": {"inherits_from": "3d_fullres", "data_identifier": "nnUNetPlans_3d_lowres",
                      "next_stage": "3d_cascade_fullres"},
        "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"},
    }}


def test_planned_configurations_train_in_order_and_narrowed_cascade_stages_find_each_other():
    from vstk_nnunet.planning import network_configurations

    plans = _plans_with_a_cascade()
    paper = NnUNetSegmenter.profile("paper")
    assert list(network_configurations(plans, paper)) == ["2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"]
    narrow = apply_overrides(paper, {"features_base": "8", "features_max": "64"})
    entries = network_configurations(plans, narrow)
    assert list(entries) == ["2d_f8-64", "3d_fullres_f8-64", "3d_lowres_f8-64", "3d_cascade_fullres_f8-64"]
    # nnU-Net finds the low-resolution stage's predictions through these names
    assert entries["3d_lowres_f8-64"]["next_stage"] == ["3d_cascade_fullres_f8-64"]
    assert entries["3d_cascade_fullres_f8-64"]["previous_stage"] == "3d_lowres_f8-64"
    assert entries["3d_cascade_fullres_f8-64"]["inherits_from"] == "3d_cascade_fullres"
    # without the cascade, a narrowed 3d_lowres points at no next stage
    alone = apply_overrides(narrow, {"configuration": "3d_lowres", "folds": "0,1"})
    assert network_configurations(plans, alone)["3d_lowres_f8-64"]["next_stage"] is None
    # a planned cascade needs five folds: with two it is not trained
    assert "3d_cascade_fullres" not in network_configurations(plans, apply_overrides(paper, {"folds": "0,1"}))


def test_a_cascade_predicts_its_low_resolution_stage_first_and_hands_it_over_as_a_signed_label():
    """predict_model runs 3d_lowres once, gives its label (signed: nnU-Net's cropping writes -1
    into it) to the cascade, and an ensemble with both reuses it; ensemble averages softmax."""
    from types import SimpleNamespace

    from vstk_nnunet.inference import ensemble, predict_model

    image = synthetic_case(5, shape=(8, 16, 16))[0]
    calls = []

    class Stage:
        def __init__(self, name, previous, value):
            self.name, self.value = name, value
            self.configuration_manager = SimpleNamespace(previous_stage_name=previous)

        def predict_single_npy_array(self, data, properties, previous, output, probabilities):
            calls.append((self.name, None if previous is None else (previous.dtype, previous.shape)))
            probs = np.zeros((3, *data.shape[1:]), np.float32)
            probs[self.value] = 1.0
            return np.full(data.shape[1:], self.value, np.uint8), probs

    predictors = {"low": Stage("low", None, 1), "cascade": Stage("cascade", "low", 2)}
    done: dict = {}
    label, probabilities = ensemble([predict_model(predictors, name, image, done) for name in ("low", "cascade")])
    assert calls == [("low", None), ("cascade", (np.dtype(np.int16), (1, *image.shape)))]
    assert np.allclose(probabilities[1], 0.5) and np.allclose(probabilities[2], 0.5)
    assert label.dtype == np.uint8 and label.shape == image.shape


def test_nnunet_splits_command_groups_an_exported_datasets_subjects_and_keeps_earlier_folds(tmp_path):
    from click.testing import CliRunner

    from vstk.cli import cli as main
    from vstk.pool import nnunet_case_id, pseudo_case_id

    dataset = tmp_path / "Dataset501_VSmultiview"
    (dataset / "labelsTr").mkdir(parents=True)
    (dataset / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz"}))
    exported = [nnunet_case_id(view, s) for view in ("cyclegan", "qsattn") for s in SUBJECTS]
    for case_id in exported:  # the names `vstk pool export-nnunet` gives; the command reads only names
        (dataset / "labelsTr" / f"{case_id}.nii.gz").write_bytes(b"")
    runner = CliRunner()
    done = runner.invoke(main, ["nnunet-splits", str(dataset)])
    assert done.exit_code == 0, done.output
    assert f"{len(exported)} case(s) of {len(SUBJECTS)} subject(s) in 5 folds" in done.output
    splits = json.loads((dataset / SPLITS_FILE).read_text())
    assert splits == grouped_splits(exported)
    for split in splits:
        assert not {subject_of(c) for c in split["train"]} & {subject_of(c) for c in split["val"]}

    for subject in HRT2_SUBJECTS:  # a self-training round adds pseudo-labelled hrT2
        (dataset / "labelsTr" / f"{pseudo_case_id(1, subject)}.nii.gz").write_bytes(b"")
    later = tmp_path / "round1_splits.json"
    done = runner.invoke(main, ["nnunet-splits", str(dataset), "--out", str(later),
                                "--keep-folds-of", str(dataset / SPLITS_FILE)])
    assert done.exit_code == 0, done.output
    kept = subject_folds(json.loads(later.read_text()))
    assert {s: kept[s] for s in SUBJECTS} == subject_folds(splits)

    empty = tmp_path / "not_a_dataset"
    empty.mkdir()
    refused = runner.invoke(main, ["nnunet-splits", str(empty)])
    assert refused.exit_code == 2 and "no dataset.json" in refused.output and str(empty) in refused.output
