"""Score predicted label maps against truth: the paper's Table 1 per structure and overall.

File pairing: ``PRED_DIR/{case}_Label.nii.gz`` (or ``{case}.nii.gz``) with
``LABEL_DIR/{case}_Label.nii.gz``; every truth file needs a prediction, and the two must
share the grid. Empty-mask convention: see :mod:`vstk.evaluation.metrics`.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..crossmoda import read_label, site_of
from ..errors import InputError
from ..labels import STRUCTURES
from .metrics import segmentation_scores

_CASE = re.compile(r"^(?P<case>.+?)(_Label)?\.nii(\.gz)?$")
METRICS = tuple(f"{name}_{m}" for name in STRUCTURES.values() for m in ("dice", "assd"))
VOLUMES = tuple(f"{name}_{v}" for name in STRUCTURES.values() for v in ("ml", "true_ml"))


def _by_case(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise InputError("folder not found", path=folder, fix="check the path")
    out = {}
    for path in sorted(folder.iterdir()):
        match = _CASE.match(path.name)
        if match and path.is_file():
            out[match.group("case")] = path
    return out


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Per-case scores and their summary."""

    cases: dict[str, dict[str, float]]

    def summary(self) -> dict[str, dict[str, float]]:
        """mean and std of every metric, plus ``mean_dice`` / ``mean_assd`` over structures, and
        of the volumes (ml) where every case has them (scores of older files may not)."""
        out: dict[str, dict[str, float]] = {}
        if not self.cases:
            return out
        present = [v for v in VOLUMES if all(v in scores for scores in self.cases.values())]
        for metric in METRICS + ("mean_dice", "mean_assd") + tuple(present):
            values = np.array([scores[metric] for scores in self.cases.values()], dtype=np.float64)
            out[metric] = {"mean": float(values.mean()), "std": float(values.std(ddof=0)), "n": int(len(values))}
        return out

    def volume_ratios(self) -> dict[str, float | None]:
        """Per structure, the median over cases of predicted / true volume (cases with a true
        volume only; None where there is none): 1 is unbiased, 2 twice too large."""
        out: dict[str, float | None] = {}
        for name in STRUCTURES.values():
            ratios = [s[f"{name}_ml"] / s[f"{name}_true_ml"] for s in self.cases.values()
                      if s.get(f"{name}_true_ml", 0.0) > 0 and f"{name}_ml" in s]
            out[name] = float(np.median(ratios)) if ratios else None
        return out

    def by_site(self) -> dict[str, "Evaluation"]:
        """The cases of each acquisition site (CrossMoDA reports London and Tilburg apart), in
        name order; empty when no case id names a site."""
        sites: dict[str, dict[str, dict[str, float]]] = {}
        for case, scores in self.cases.items():
            site = site_of(case)
            if site is not None:
                sites.setdefault(site, {})[case] = scores
        return {site: Evaluation(sites[site]) for site in sorted(sites)}

    def as_dict(self) -> dict[str, Any]:
        return {"cases": self.cases, "summary": self.summary(), "volume_ratio_median": self.volume_ratios(),
                "summary_by_site": {site: part.summary() for site, part in self.by_site().items()},
                "convention": "both masks empty: Dice 1, ASSD 0; one empty: Dice 0, ASSD = image diagonal (mm)"}


def score_case(prediction: np.ndarray, truth: np.ndarray, spacing_zyx: Sequence[float]) -> dict[str, float]:
    scores = segmentation_scores(prediction, truth, spacing_zyx, STRUCTURES)
    scores["mean_dice"] = float(np.mean([scores[f"{n}_dice"] for n in STRUCTURES.values()]))
    scores["mean_assd"] = float(np.mean([scores[f"{n}_assd"] for n in STRUCTURES.values()]))
    return scores


def evaluate_folders(predictions: str | Path, labels: str | Path) -> Evaluation:
    """Score every truth label in ``labels`` against its prediction in ``predictions``."""
    preds, truths = _by_case(Path(predictions)), _by_case(Path(labels))
    if not truths:
        raise InputError("no label files (*_Label.nii.gz)", path=labels, fix="point at the folder of truth labels")
    missing = sorted(set(truths) - set(preds))
    if missing:
        raise InputError(f"no prediction for {len(missing)} case(s), e.g. {missing[0]}", path=predictions,
                         fix="predict every test image, or evaluate a matching label folder")
    cases = {}
    for case, truth_path in truths.items():
        truth = read_label(truth_path)
        prediction = read_label(preds[case])
        mismatch = prediction.grid_mismatch(truth)
        if mismatch is not None:
            raise InputError(f"prediction grid does not match the truth {truth_path.name}: {mismatch}",
                             path=preds[case], fix="predict on the test image's own grid")
        cases[case] = score_case(prediction.array, truth.array, truth.spacing[::-1])
    return Evaluation(cases)


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Two-sided paired t-test of per-case scores (the paper's Fig. 3)."""
    from scipy import stats

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) != len(b) or len(a) < 2:
        return {"t": float("nan"), "p": float("nan"), "n": int(len(a))}
    if np.allclose(a, b):
        return {"t": 0.0, "p": 1.0, "n": int(len(a))}
    result = stats.ttest_rel(a, b)
    return {"t": float(result.statistic), "p": float(result.pvalue), "n": int(len(a))}


def summary_table(rows: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown table (Table 1 style) of ``{method: summary}``."""
    header = "| method | VS Dice | VS ASSD (mm) | cochlea Dice | cochlea ASSD (mm) | mean Dice |"
    lines = [header, "|---|---|---|---|---|---|"]
    for method, s in rows.items():
        cell = lambda m, f: f"{s[m]['mean']:{f}} +- {s[m]['std']:{f}}" if m in s else "-"  # noqa: E731
        lines.append(f"| {method} | {cell('VS_dice', '.3f')} | {cell('VS_assd', '.2f')} | "
                     f"{cell('cochlea_dice', '.3f')} | {cell('cochlea_assd', '.2f')} | {cell('mean_dice', '.3f')} |")
    return "\n".join(lines)


def volume_table(rows: dict[str, tuple[dict[str, dict[str, float]], dict[str, float | None]]]) -> str:
    """Markdown table of ``{method: (summary, volume ratios)}``: mean predicted and true volume
    (ml) per structure and the median per-case ratio predicted / true."""
    header = ("| method | VS predicted (ml) | VS true (ml) | VS predicted / true | cochlea predicted (ml) | "
              "cochlea true (ml) | cochlea predicted / true |")
    lines = [header, "|---" * 7 + "|"]
    for method, (s, ratios) in rows.items():
        cells = []
        for name, digits in (("VS", 2), ("cochlea", 3)):
            for key in (f"{name}_ml", f"{name}_true_ml"):
                cells.append(f"{s[key]['mean']:.{digits}f}" if key in s else "-")
            cells.append("-" if ratios.get(name) is None else f"{ratios[name]:.2f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
