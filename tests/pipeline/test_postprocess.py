"""Largest-VS-component post-processing and when a rerun predicts the test images again."""

from __future__ import annotations

import logging
import types
from pathlib import Path

import numpy as np
import pytest

from vstk.labels import VS, keep_largest_components
from vstk.pipeline import stages
from vstk.pipeline.run import _forget_outdated_predictions


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


def _plan(out: Path, rounds: int = 1, keep_largest_vs: bool = False):
    """The parts of a run plan the prediction bookkeeping reads."""
    options = types.SimpleNamespace(rounds=rounds, keep_largest_vs=keep_largest_vs)
    return types.SimpleNamespace(out=out, state=out / "state", options=options)


def _predicted(out: Path, folders: dict[str, str], keep_largest_vs: bool | None = False) -> None:
    info = {"cases": 2, "folders": folders}
    if keep_largest_vs is not None:
        info["keep_largest_vs"] = keep_largest_vs
    stages.mark_done(out / "state", "predict", info)
    stages.mark_done(out / "state", "evaluate", {"round 1": {}})
    for folder in folders.values():
        path = Path(folder) if Path(folder).is_absolute() else out / folder
        path.mkdir(parents=True, exist_ok=True)


def test_an_unchanged_rerun_keeps_its_predictions_also_from_records_with_absolute_paths(tmp_path):
    out = tmp_path / "run"
    _predicted(out, {"1": str(out / "predictions"), "0": str(out / "predictions_round0")}, keep_largest_vs=None)
    _forget_outdated_predictions(_plan(out))
    assert stages.stage_done(out / "state", "predict") is not None
    assert stages.stage_done(out / "state", "evaluate") is not None


def test_switching_keep_largest_vs_predicts_again(tmp_path):
    out = tmp_path / "run"
    _predicted(out, {"1": "predictions", "0": "predictions_round0"})
    _forget_outdated_predictions(_plan(out, keep_largest_vs=True))
    assert stages.stage_done(out / "state", "predict") is None
    assert stages.stage_done(out / "state", "evaluate") is None
    assert (out / "predictions_round0").is_dir()  # the same folders are rewritten, not removed


def test_fewer_rounds_remove_the_round0_folder_of_this_run(tmp_path):
    out = tmp_path / "run"
    _predicted(out, {"1": "predictions", "0": "predictions_round0"})
    _forget_outdated_predictions(_plan(out, rounds=0))
    assert stages.stage_done(out / "state", "predict") is None
    assert not (out / "predictions_round0").exists() and (out / "predictions").is_dir()


@pytest.mark.parametrize("rounds", [0, 1])
def test_a_copied_run_never_removes_the_original_runs_folders(tmp_path, caplog, rounds):
    original = tmp_path / "original"
    copy = tmp_path / "copy"
    _predicted(copy, {"1": str(original / "predictions"), "0": str(original / "predictions_round0")})
    with caplog.at_level(logging.INFO, logger="vstk.pipeline.run"):
        _forget_outdated_predictions(_plan(copy, rounds=rounds))
    assert stages.stage_done(copy / "state", "predict") is None  # the record was of another folder
    assert ("other folders" in caplog.text) == (rounds == 1)
    assert (original / "predictions").is_dir() and (original / "predictions_round0").is_dir()
