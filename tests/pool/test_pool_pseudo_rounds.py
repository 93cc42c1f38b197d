"""A self-training round's pseudo labels record what made them; `vstk run` does not train on
another run's round (a pool copied after its self-training)."""

from __future__ import annotations

import pytest
from pool_helpers import TARGETS, build_pool, label_for, seed_of, target_image
from vstk.errors import ConfigError
from vstk.pipeline import stages
from vstk.pool import Pool
from vstk.protocols import PseudoLabel


def pseudo_labels(tag: str) -> list[PseudoLabel]:
    return [PseudoLabel(case, label_for(target_image(case), seed_of(tag, case)), 0.9) for case in TARGETS]


def test_round_is_stored_once_with_its_maker_and_kept_on_resume(tmp_path):
    path = build_pool(tmp_path / "pool.h5", pseudo=False)
    stages.store_pseudo_labels(path, 1, pseudo_labels("a"), made_by="run A")
    pool = Pool(path)
    assert pool.rounds() == [1] and pool.pseudo_labels_made_by(1) == {case: "run A" for case in TARGETS}
    assert pool.pseudo_labels(1) == {case: 0.9 for case in TARGETS}
    digest = pool.digest()
    stages.store_pseudo_labels(path, 1, pseudo_labels("b"), made_by="run A")  # a resumed round: kept as it is
    assert Pool(path).digest() == digest


def test_round_of_another_run_is_refused(tmp_path):
    path = build_pool(tmp_path / "pool.h5", pseudo=False)
    stages.store_pseudo_labels(path, 1, pseudo_labels("a"), made_by="run A")
    digest = Pool(path).digest()
    with pytest.raises(ConfigError, match=r"round-1 pseudo labels made by run A, not by this run's round 0 \(run B\)"):
        stages.store_pseudo_labels(path, 1, pseudo_labels("b"), made_by="run B")
    assert Pool(path).digest() == digest


def test_round_without_a_recorded_maker_is_refused(tmp_path):
    path = build_pool(tmp_path / "pool.h5")  # round 1 written without made_by (pools before it existed)
    assert set(Pool(path).pseudo_labels_made_by(1).values()) == {None}
    with pytest.raises(ConfigError, match="made by an unrecorded run") as error:
        stages.store_pseudo_labels(path, 1, pseudo_labels("b"), made_by="run B")
    assert "before self-training" in error.value.fix
