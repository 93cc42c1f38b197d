from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from vstk.cli import cli
from vstk.evaluation.evaluate import Evaluation, evaluate_folders, paired_t_test
from vstk.volume import Volume, write_nifti

from conftest import make_image, make_label


def write_pair(tmp_path, case, truth, prediction):
    write_nifti(truth, tmp_path / "labels" / f"{case}_Label.nii.gz")
    write_nifti(prediction, tmp_path / "pred" / f"{case}_Label.nii.gz")


def test_perfect_and_missing_predictions_score_as_documented(tmp_path):
    truth = make_label(make_image())
    write_pair(tmp_path, "a", truth, truth)
    no_cochlea = truth.array.copy()
    no_cochlea[no_cochlea == 2] = 0
    write_pair(tmp_path, "b", truth, truth.with_array(no_cochlea))
    evaluation = evaluate_folders(tmp_path / "pred", tmp_path / "labels")
    assert evaluation.cases["a"]["mean_dice"] == 1.0
    assert evaluation.cases["b"]["VS_dice"] == 1.0 and evaluation.cases["b"]["cochlea_dice"] == 0.0
    assert evaluation.cases["b"]["cochlea_assd"] > 10  # the image diagonal in mm
    summary = evaluation.summary()
    assert summary["cochlea_dice"]["mean"] == 0.5 and summary["cochlea_dice"]["std"] == 0.5
    assert summary["mean_dice"]["mean"] == 0.75


def test_cli_prints_table_and_writes_json(tmp_path):
    truth = make_label(make_image())
    write_pair(tmp_path, "a", truth, truth)
    result = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "pred"), str(tmp_path / "labels"),
                                      "--json", str(tmp_path / "e.json")])
    assert result.exit_code == 0, result.output
    assert "| pred | 1.000 +- 0.000 | 0.00 +- 0.00 |" in result.output
    data = json.loads((tmp_path / "e.json").read_text())
    assert data["summary"]["VS_dice"]["mean"] == 1.0


def test_volumes_are_in_ml_and_their_ratio_shows_a_systematic_bias(tmp_path):
    spacing = (0.5, 0.5, 2.0)  # x, y, z in mm: 0.5 mm3 a voxel
    array = np.zeros((10, 20, 20), np.uint8)
    array[2:6, 2:12, 2:12] = 1  # VS: 400 voxels = 0.2 ml
    array[7, 15:17, 15:17] = 2  # cochlea: 4 voxels = 0.002 ml
    truth = Volume(array, spacing, (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    grown = array.copy()
    grown[7, 14:18, 14:18] = 2  # every prediction's cochlea 4 times too large
    for case, vs_end in (("a", 6), ("b", 4), ("c", 8)):  # VS: right, half, 1.5 times
        predicted = grown.copy()
        predicted[predicted == 1] = 0
        predicted[2:vs_end, 2:12, 2:12] = 1
        write_pair(tmp_path, case, truth, truth.with_array(predicted))
    evaluation = evaluate_folders(tmp_path / "pred", tmp_path / "labels")
    assert evaluation.cases["b"]["VS_ml"] == pytest.approx(0.1) and evaluation.cases["b"]["VS_true_ml"] == 0.2
    assert evaluation.cases["a"]["cochlea_ml"] == 0.008 and evaluation.cases["a"]["cochlea_true_ml"] == 0.002
    assert evaluation.volume_ratios() == pytest.approx({"VS": 1.0, "cochlea": 4.0})
    summary = evaluation.summary()
    assert summary["VS_ml"]["mean"] == pytest.approx(0.2) and summary["cochlea_true_ml"]["std"] == 0.0
    result = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "pred"), str(tmp_path / "labels")])
    assert result.exit_code == 0, result.output
    assert "| pred | 0.20 | 0.20 | 1.00 | 0.008 | 0.002 | 4.00 |" in result.output
    # no true volume: no ratio
    empty = evaluate_folders(tmp_path / "labels", tmp_path / "labels")
    empty.cases["a"]["cochlea_true_ml"] = 0.0
    assert empty.volume_ratios()["cochlea"] == pytest.approx(1.0)
    assert Evaluation({"x": {"VS_ml": 1.0, "VS_true_ml": 0.0}}).volume_ratios() == {"VS": None, "cochlea": None}


def test_prediction_on_another_grid_is_an_error(tmp_path):
    truth = make_label(make_image())
    moved = Volume(truth.array, truth.spacing, (0.0, 0.0, 0.0), truth.direction)
    write_pair(tmp_path, "a", truth, moved)
    result = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "pred"), str(tmp_path / "labels")])
    assert result.exit_code == 2 and "prediction grid does not match the truth" in result.output


def test_missing_prediction_is_an_error(tmp_path):
    truth = make_label(make_image())
    write_pair(tmp_path, "a", truth, truth)
    write_nifti(truth, tmp_path / "labels" / "b_Label.nii.gz")
    result = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "pred"), str(tmp_path / "labels")])
    assert result.exit_code == 2 and "no prediction for 1 case(s), e.g. b" in result.output


def test_paired_t_test_detects_a_consistent_difference():
    a = np.array([0.8, 0.82, 0.79, 0.85, 0.81])
    assert paired_t_test(a, a - 0.05 + np.array([0.001, -0.002, 0.0, 0.002, -0.001]))["p"] < 0.001
    assert paired_t_test(a, a)["p"] == 1.0


def test_scores_are_also_summarised_per_crossmoda_site(tmp_path):
    truth = make_label(make_image())
    no_cochlea = truth.array.copy()
    no_cochlea[no_cochlea == 2] = 0
    write_pair(tmp_path, "crossmoda2022_ldn_1", truth, truth)
    write_pair(tmp_path, "crossmoda2022_ldn_2", truth, truth)
    write_pair(tmp_path, "crossmoda2022_etz_3", truth, truth.with_array(no_cochlea))
    evaluation = evaluate_folders(tmp_path / "pred", tmp_path / "labels")
    sites = evaluation.by_site()
    assert list(sites) == ["etz", "ldn"]
    assert sites["ldn"].summary()["cochlea_dice"] == {"mean": 1.0, "std": 0.0, "n": 2}
    assert sites["etz"].summary()["cochlea_dice"]["mean"] == 0.0
    assert evaluation.summary()["cochlea_dice"]["mean"] == pytest.approx(2 / 3)
    assert evaluation.as_dict()["summary_by_site"]["etz"]["mean_dice"]["mean"] == 0.5
    result = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "pred"), str(tmp_path / "labels")])
    assert result.exit_code == 0, result.output
    assert "| pred, etz | 1.000 +- 0.000 |" in result.output and "| pred, ldn | 1.000 +- 0.000 |" in result.output


def test_cases_of_other_names_have_no_site_summary(tmp_path):
    truth = make_label(make_image())
    write_pair(tmp_path, "a", truth, truth)
    evaluation = evaluate_folders(tmp_path / "pred", tmp_path / "labels")
    assert evaluation.by_site() == {} and evaluation.as_dict()["summary_by_site"] == {}
