"""Pseudo-labelers for self-training on real hrT2: ``all`` (the paper) and ``confidence``."""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import vstk
from vstk.labels import COCHLEA, VS, keep_largest_components
from vstk.protocols import Prediction, PseudoLabel

log = logging.getLogger(__name__)


def foreground_confidence(prediction: Prediction) -> float:
    """Mean over predicted-foreground voxels of the maximum class probability, in [0, 1].

    1.0 when the prediction has no probabilities; 0.0 when nothing is predicted as foreground
    (an empty prediction gives no evidence worth training on).
    """
    foreground = prediction.label.array > 0
    if not foreground.any():
        return 0.0
    if prediction.probabilities is None:
        return 1.0
    return float(prediction.probabilities.max(axis=0)[foreground].mean())


@dataclasses.dataclass(frozen=True)
class AllConfig:
    """``all`` has no settings: every prediction is used (Kang et al.)."""


class AllPseudoLabeler:
    """Every real hrT2 case with its prediction, as in the paper."""

    name = "all"
    config_class = AllConfig

    @classmethod
    def profile(cls, name: str) -> AllConfig:
        return AllConfig()

    def __init__(self, config: AllConfig | None = None) -> None:
        self.config = config or AllConfig()

    def select(self, predictions: Sequence[Prediction]) -> list[PseudoLabel]:
        return [PseudoLabel(p.case_id, p.label, foreground_confidence(p)) for p in predictions]


@dataclasses.dataclass(frozen=True)
class ConfidenceConfig:
    """Settings of the ``confidence`` pseudo-labeler.

    Attributes:
        threshold: minimum mean max-probability over the (cleaned) predicted foreground, in
            [0, 1]; cases below it are left out of the round (0 keeps every case).
        largest_components: keep only the largest connected components per structure before
            scoring: one tumour per patient, one cochlea per ear.
        vs_components: components kept for VS.
        cochlea_components: components kept for cochlea (one per ear).
    """

    threshold: float = 0.8
    largest_components: bool = True
    vs_components: int = 1
    cochlea_components: int = 2

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise vstk.ConfigError(f"confidence threshold {self.threshold} outside [0, 1]",
                                   fix="e.g. --set threshold=0.8")
        if self.vs_components < 1 or self.cochlea_components < 1:
            raise vstk.ConfigError(f"vs_components={self.vs_components}, cochlea_components="
                                   f"{self.cochlea_components}: each must be at least 1",
                                   fix="e.g. vs_components=1 cochlea_components=2")

    def clean(self, prediction: Prediction) -> Prediction:
        """``prediction`` with its label cleaned when ``largest_components`` is on."""
        if not self.largest_components:
            return prediction
        cleaned = keep_largest_components(prediction.label.array,
                                          {VS: self.vs_components, COCHLEA: self.cochlea_components})
        return dataclasses.replace(prediction, label=prediction.label.with_array(cleaned))


class ConfidencePseudoLabeler:
    """Cases whose foreground confidence passes a threshold, optionally cleaned to the
    largest connected components of each structure."""

    name = "confidence"
    config_class = ConfidenceConfig

    @classmethod
    def profile(cls, name: str) -> ConfidenceConfig:
        return ConfidenceConfig()

    def __init__(self, config: ConfidenceConfig | None = None) -> None:
        self.config = config or ConfidenceConfig()

    def select(self, predictions: Sequence[Prediction]) -> list[PseudoLabel]:
        selected = []
        for prediction in predictions:
            prediction = self.config.clean(prediction)
            confidence = foreground_confidence(prediction)
            if confidence >= self.config.threshold:
                selected.append(PseudoLabel(prediction.case_id, prediction.label, confidence))
            else:
                log.info("pseudo-label of %s rejected: confidence %.3f < %.3f",
                         prediction.case_id, confidence, self.config.threshold)
        return selected


@vstk.hookimpl
def vstk_register_pseudo_labelers(registry) -> None:
    registry.add(AllPseudoLabeler)
    registry.add(ConfidencePseudoLabeler)
