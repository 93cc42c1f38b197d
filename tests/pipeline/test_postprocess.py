"""Largest-VS-component post-processing and when a rerun predicts the test images again."""

from __future__ import annotations

import logging
import types
from pathlib import Path

import numpy as np
import pytest

from vstk.labels import VS, keep_largest_components
from vstk.pipeline import records
from vstk.pipeline.predictions import predict_inputs, remove_stale_predictions
from vstk.pipeline.records import timed


def test_keeping_the_largest_vs_component_removes_the_smaller_vs_parts_and_nothing_else():
    label = np.zeros((6, 12, 12), np.uint8)
    label[1:4, 1:5, 1:5] = 1  # the tumour: 48 voxels
    label[4, 5, 5] = 1  # touches it only at a corner: 26-connected, kept
    label[2, 9:11, 9:11] = 1  # a separate 4-voxel false positive
    label[0, 10, 1] = 2  # a cochlea voxel
    out = keep_largest_components(label, {VS: 1})
    assert (out == 1).sum() == 49 and out[2, 9, 9] == 0 and out[4, 5, 5] == 1
    np.testing.assert_array_equal(out == 2, label == 2)
    assert label[2, 9, 9] == 1  # the input is not changed
    no_vs = np.zeros((3, 4, 4), np.uint8)
    no_vs[1, 1, 1] = 2
    np.testing.assert_array_equal(keep_largest_components(no_vs, {VS: 1}), no_vs)  # no VS: unchanged


def _plan(out: Path, rounds: int = 1, keep_largest_vs: bool = False, tests=("a_hrT2", "b_hrT2")):
    """The parts of a run plan the prediction bookkeeping reads."""
    options = types.SimpleNamespace(rounds=rounds, keep_largest_vs=keep_largest_vs)
    test = types.SimpleNamespace(target=[types.SimpleNamespace(case_id=case) for case in tests])
    return types.SimpleNamespace(out=out, state=out / "state", options=options, test=test)


def _predict(plan, calls: list) -> dict:
    return timed(plan, "predict", lambda: calls.append(1) or {"folders": {}}, inputs=predict_inputs(plan),
                  redo_if_changed=True)


@pytest.mark.parametrize("change", ["keep_largest_vs", "rounds", "test images", "older record"])
def test_a_rerun_predicts_again_exactly_when_what_the_predictions_depend_on_changed(tmp_path, caplog, change):
    out = tmp_path / "run"
    calls: list = []
    _predict(_plan(out), calls)
    _predict(_plan(out), calls)
    assert len(calls) == 1  # unchanged: skipped
    if change == "older record":  # vstk before stage inputs: predicted once more, then on record
        record = records.stage_done(out / "state", "predict")
        records.mark_done(out / "state", "predict", {k: v for k, v in record.items() if k != "inputs"})
    plan = _plan(out, keep_largest_vs=change == "keep_largest_vs", rounds=0 if change == "rounds" else 1,
                 tests=("a_hrT2", "c_hrT2") if change == "test images" else ("a_hrT2", "b_hrT2"))
    with caplog.at_level(logging.INFO, logger="vstk.pipeline.records"):
        _predict(plan, calls)
    assert len(calls) == 2 and "stage predict again: " in caplog.text
    if change == "keep_largest_vs":
        assert "keep_largest_vs: false -> true (recorded -> now)" in caplog.text
    if change == "rounds":
        assert 'rounds: 1 -> 0' in caplog.text
    _predict(plan, calls)
    assert len(calls) == 2


def _predicted(out: Path, folders: dict[str, str]) -> dict:
    for folder in folders.values():
        path = Path(folder) if Path(folder).is_absolute() else out / folder
        path.mkdir(parents=True, exist_ok=True)
    return {"cases": 2, "folders": folders}


def test_fewer_rounds_remove_the_round0_folder_of_this_run_also_from_records_with_absolute_paths(tmp_path):
    for folders in ({"1": "predictions", "0": "predictions_round0"},
                    {"1": str(tmp_path / "run" / "predictions"), "0": str(tmp_path / "run" / "predictions_round0")}):
        out = tmp_path / "run"
        previous = _predicted(out, folders)
        remove_stale_predictions(_plan(out, rounds=1), previous)
        assert (out / "predictions_round0").is_dir()  # still written by this run
        remove_stale_predictions(_plan(out, rounds=0), previous)
        assert not (out / "predictions_round0").exists() and (out / "predictions").is_dir()


def test_a_copied_run_never_removes_the_original_runs_folders(tmp_path):
    original = tmp_path / "original"
    copy = tmp_path / "copy"
    previous = _predicted(copy, {"1": str(original / "predictions"), "0": str(original / "predictions_round0")})
    remove_stale_predictions(_plan(copy, rounds=0), previous)
    assert (original / "predictions").is_dir() and (original / "predictions_round0").is_dir()
