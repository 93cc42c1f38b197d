"""The pseudo-labelers: `all` (the paper: every prediction as it is) and `confidence`
(threshold on the foreground confidence, largest-component cleanup)."""

from __future__ import annotations

import numpy as np
import pytest
from vstk.errors import ConfigError
from vstk.labels import COCHLEA, VS
from vstk.components import configure
from vstk.protocols import Prediction
from vstk.volume import Volume
from vstk_pseudolabel import (
    AllPseudoLabeler,
    ConfidenceConfig,
    ConfidencePseudoLabeler,
    foreground_confidence,
)


def prediction(case_id: str = "crossmoda2022_ldn_40", *, vs_sure: float = 0.95, stray_vs: bool = True,
               with_probabilities: bool = True) -> Prediction:
    """A 3-class prediction: a VS blob, one cochlea per ear, and (optionally) a small stray VS
    blob far from the tumour, with softmax probabilities (the stray blob is uncertain)."""
    label = np.zeros((10, 30, 40), np.uint8)
    label[3:7, 10:18, 15:25] = VS
    label[4:6, 3:5, 2:4] = COCHLEA
    label[4:6, 3:5, 36:38] = COCHLEA
    if stray_vs:
        label[4:6, 25:27, 30:32] = VS
    probabilities = None
    if with_probabilities:
        probabilities = np.zeros((3, *label.shape), np.float32)
        for c in range(3):
            probabilities[c][label == c] = 1.0
        probabilities[:, label == VS] = [[1 - vs_sure], [vs_sure], [0.0]]
        if stray_vs:
            probabilities[:, 4:6, 25:27, 30:32] = np.array([0.45, 0.55, 0.0])[:, None, None, None]
    return Prediction(case_id, Volume(label, (0.5, 0.5, 1.0)), probabilities)


def vs_components(label: Volume) -> int:
    from scipy import ndimage

    return ndimage.label(label.array == VS, structure=np.ones((3, 3, 3), bool))[1]


@pytest.mark.parametrize("profile", ["paper", "cpu"])
def test_all_keeps_every_prediction_unchanged(profile):
    labeler = AllPseudoLabeler(configure(AllPseudoLabeler, profile, {}))
    predictions = [prediction("a"), prediction("b", vs_sure=0.4)]
    selected = labeler.select(predictions)
    assert [s.case_id for s in selected] == ["a", "b"]
    for s, p in zip(selected, predictions):
        np.testing.assert_array_equal(s.label.array, p.label.array)
        assert s.confidence == pytest.approx(foreground_confidence(p))


def test_confidence_cleans_to_the_largest_components_before_scoring():
    raw = prediction()
    assert vs_components(raw.label) == 2
    (selected,) = ConfidencePseudoLabeler(ConfidenceConfig(threshold=0.0)).select([raw])
    assert vs_components(selected.label) == 1
    assert (selected.label.array == VS).sum() == (raw.label.array == VS).sum() - 8  # the stray blob went
    np.testing.assert_array_equal(selected.label.array == COCHLEA, raw.label.array == COCHLEA)  # both ears kept
    assert selected.confidence > foreground_confidence(raw)  # scored after the cleanup
    kept = ConfidencePseudoLabeler(configure(ConfidencePseudoLabeler, "cpu", {"threshold": "0",
                                                                               "largest_components": "false"}))
    np.testing.assert_array_equal(kept.select([raw])[0].label.array, raw.label.array)


def test_confidence_rejects_uncertain_cases_and_cleans_the_rest():
    labeler = ConfidencePseudoLabeler(ConfidenceConfig(threshold=0.8))
    selected = labeler.select([prediction("sure", vs_sure=0.95), prediction("unsure", vs_sure=0.6)])
    assert [s.case_id for s in selected] == ["sure"]
    assert vs_components(selected[0].label) == 1
    assert 0.9 < selected[0].confidence <= 1.0
    everything = ConfidencePseudoLabeler(ConfidenceConfig(threshold=0.0))
    assert len(everything.select([prediction("sure"), prediction("unsure", vs_sure=0.6)])) == 2


def test_confidence_of_empty_or_probability_free_predictions():
    empty = Prediction("empty", Volume(np.zeros((4, 8, 8), np.uint8), (1.0, 1.0, 1.0)), None)
    assert foreground_confidence(empty) == 0.0
    assert foreground_confidence(prediction(with_probabilities=False)) == 1.0
    assert ConfidencePseudoLabeler(ConfidenceConfig(threshold=0.5)).select([empty]) == []


@pytest.mark.parametrize("settings, message", [
    ({"threshold": 1.5}, "confidence threshold 1.5 outside"),
    ({"vs_components": 0}, "each must be at least 1"),
])
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        ConfidenceConfig(**settings)
