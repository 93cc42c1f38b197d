"""nnU-Net's model choice after cross-validation, recorded for vstk, and its postprocessing.

After the last fold, :func:`select_model` calls nnU-Net's own ``find_best_configuration``
(what ``nnUNetv2_find_best_configuration`` runs): it gathers each configuration's validation
predictions over the folds, scores them, ensembles every pair of configurations from their
saved softmax, picks the best single configuration or pair on the mean foreground Dice
(a single one wins a tie) and decides the postprocessing for it: keep only the largest
foreground component, then the largest component of each label, each step kept only where it
raises the cross-validation Dice (and no label gets worse). vstk then writes what it found to
``workdir/model_selection_round{r}.json`` (:data:`SCHEMA`), which prediction reads: nnU-Net
keeps its postprocessing as a pickle of functions, vstk reads the JSON twin it writes
beside it and applies nnU-Net's own function with the recorded labels.

Light at import; :func:`select_model` imports nnunetv2 and must run inside
:func:`vstk_nnunet.environment.nnunet_environment`.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vstk.atomic import write_json_atomic
from vstk.errors import VstkError
from vstk.labels import LABEL_NAMES

from .layout import PLANS_NAME, TRAINER_NAME, RoundLayout, read_json

log = logging.getLogger(__name__)

SCHEMA = "vstk-nnunet-model-selection"
VERSION = 1
_LARGEST_COMPONENT = "remove_all_but_largest_component_from_segmentation"  # nnU-Net's postprocessing step


@dataclasses.dataclass(frozen=True)
class ChosenModel:
    """What prediction runs: the folds of one configuration, or a pair ensemble, then postprocessing.

    Attributes:
        configurations: plans configurations whose softmax is averaged (one, or two for an ensemble).
        folds: the folds of each configuration (their logits averaged, as nnU-Net does).
        postprocessing: label groups, in order; for each, only the largest connected component
            of the voxels carrying any of its labels is kept (the rest becomes background).
    """

    configurations: tuple[str, ...]
    folds: tuple[int | str, ...]
    postprocessing: tuple[tuple[int, ...], ...] = ()


def _folds_string(folds: Sequence[int]) -> str:
    return "_".join(str(f) for f in folds)  # nnU-Net's folds_tuple_to_string


def _identifier(configuration: str) -> str:
    return f"{TRAINER_NAME}__{PLANS_NAME}__{configuration}"


def _scores(summary_file: Path) -> dict[str, Any]:
    """Mean foreground Dice and Dice per label from an nnU-Net ``summary.json``."""
    summary = read_json(summary_file)
    return {"dice": float(summary["foreground_mean"]["Dice"]),
            "dice_per_label": {LABEL_NAMES.get(int(k), k): float(v["Dice"]) for k, v in summary["mean"].items()},
            "cases": len(summary.get("metric_per_case", []))}


def _relative(path: Path, workdir: Path) -> str:
    try:
        return str(path.relative_to(workdir))
    except ValueError:
        return str(path)


def _label_group(value: Any) -> tuple[int, ...]:
    """nnU-Net's ``labels_or_regions`` argument as a tuple of labels (an int, a list, or a region)."""
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return (int(value),)


def select_model(layout: RoundLayout, configurations: Sequence[str], folds: Sequence[int],
                 num_processes: int) -> dict[str, Any]:
    """Run nnU-Net's ``find_best_configuration`` over the trained ``configurations`` and
    ``folds`` of the round, write :attr:`RoundLayout.selection_file` and return its content.

    ``num_processes``: nnU-Net's worker processes for gathering, ensembling, scoring and
    postprocessing (each pool spawns its workers).
    """
    from nnunetv2.evaluation.find_best_configuration import find_best_configuration

    models = [{"plans": PLANS_NAME, "configuration": name, "trainer": TRAINER_NAME} for name in configurations]
    folds = tuple(int(f) for f in folds)
    log.info("nnU-Net: choosing among %s (%d fold(s)), with pair ensembles and postprocessing",
             ", ".join(configurations), len(folds))
    info = find_best_configuration(layout.dataset_name, models, allow_ensembling=len(models) > 1,
                                   num_processes=num_processes, overwrite=True, folds=folds, strict=True)
    record = _record(layout, configurations, folds, info)
    write_json_atomic(layout.selection_file, record)
    chosen = record["chosen"]
    log.info("nnU-Net chose %s: cross-validation Dice %.4f, %.4f after postprocessing (%s)", chosen["model"],
             chosen["dice"], chosen["dice_after_postprocessing"],
             "; ".join(s["description"] for s in record["postprocessing"]) or "no postprocessing")
    return record


def _record(layout: RoundLayout, configurations: Sequence[str], folds: tuple[int, ...],
            info: dict[str, Any]) -> dict[str, Any]:
    """vstk's JSON record of a ``find_best_configuration`` result (see docs/nnunet.md)."""
    workdir = layout.workdir
    tag = _folds_string(folds)
    candidates = []
    for name in configurations:
        source = layout.model_dir(name) / f"crossval_results_folds_{tag}"
        candidates.append({"model": name, "configurations": [name], **_scores(source / "summary.json"),
                           "nnunet_results": _relative(source, workdir)})
    for first, second in itertools.combinations(configurations, 2):
        source = layout.results / "ensembles" / f"ensemble___{_identifier(first)}___{_identifier(second)}___{tag}"
        candidates.append({"model": f"{first} + {second}", "configurations": [first, second],
                           **_scores(source / "summary.json"), "nnunet_results": _relative(source, workdir)})
    best = info["best_model_or_ensemble"]
    chosen_names = [m["configuration"] for m in best["selected_model_or_models"]]
    source = Path(best["postprocessing_file"]).parent
    postprocessing = read_json(source / "postprocessing.json")
    steps = []
    for function, kwargs in zip(postprocessing["postprocessing_fns"], postprocessing["postprocessing_kwargs"]):
        if function != _LARGEST_COMPONENT:
            raise VstkError(f"nnU-Net chose a postprocessing step vstk does not know: {function}",
                            fix="use the nnunetv2 version vstk supports (2.8)")
        labels = _label_group(kwargs["labels_or_regions"])
        steps.append({"largest_component_of": list(labels),
                      "description": "largest connected component of " +
                                     " + ".join(LABEL_NAMES.get(v, str(v)) for v in labels)})
    after = postprocessing["postprocessed"]
    return {
        "schema": SCHEMA, "version": VERSION,
        "round": layout.round_index, "dataset": layout.dataset_name,
        "folds": list(folds), "configurations": list(configurations),
        "cross_validation": candidates,
        "chosen": {
            "model": " + ".join(chosen_names), "configurations": chosen_names,
            "dice": float(best["result_on_crossval_pre_pp"]),
            "dice_after_postprocessing": float(best["result_on_crossval_post_pp"]),
            "dice_per_label_after_postprocessing": {LABEL_NAMES.get(int(k), k): float(v["Dice"])
                                                    for k, v in after["mean"].items()},
        },
        "postprocessing": steps,
        "nnunet": {"inference_information": _relative(layout.results / "inference_information.json", workdir),
                   "postprocessing": _relative(source / "postprocessing.json", workdir)},
    }


def read_selection(layout: RoundLayout) -> dict[str, Any] | None:
    """The round's selection record, or None when there is none (or an unreadable one)."""
    path = layout.selection_file
    if not path.is_file():
        return None
    try:
        record = read_json(path)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("schema") == SCHEMA else None


def chosen_model(record: dict[str, Any]) -> ChosenModel:
    """The :class:`ChosenModel` of a selection record."""
    return ChosenModel(tuple(record["chosen"]["configurations"]), tuple(record["folds"]),
                       tuple(tuple(step["largest_component_of"]) for step in record["postprocessing"]))


def postprocess(label: np.ndarray, steps: Sequence[Sequence[int]]) -> np.ndarray:
    """Apply nnU-Net's largest-component postprocessing (its own function) step by step."""
    if not steps:
        return label
    from nnunetv2.postprocessing.remove_connected_components import (
        remove_all_but_largest_component_from_segmentation,
    )

    for labels in steps:
        label = remove_all_but_largest_component_from_segmentation(label, [int(v) for v in labels])
    return label


def describe(record: dict[str, Any]) -> str:
    """A selection record as Markdown for the run report: cross-validation Dice per
    configuration and pair ensemble, the choice and its postprocessing."""
    folds = ",".join(str(f) for f in record["folds"])
    lines = [f"nnU-Net's cross-validation over folds {folds} (each held-out case scored once; "
             f"mean foreground Dice is what nnU-Net's `find_best_configuration` compares):", "",
             "| model | VS | cochlea | mean foreground | cases |", "|---|---|---|---|---|"]
    for candidate in record["cross_validation"]:
        per_label = candidate["dice_per_label"]
        mark = " (chosen)" if candidate["model"] == record["chosen"]["model"] else ""
        lines.append(f"| {candidate['model']}{mark} | {per_label.get('VS', float('nan')):.4f} | "
                     f"{per_label.get('cochlea', float('nan')):.4f} | {candidate['dice']:.4f} | {candidate['cases']} |")
    chosen = record["chosen"]
    steps = "; ".join(step["description"] for step in record["postprocessing"]) or "none (no step raised the Dice)"
    after = chosen["dice_per_label_after_postprocessing"]
    lines += ["", f"Chosen: {chosen['model']}. Postprocessing: {steps}; cross-validation Dice "
                  f"{chosen['dice']:.4f} before, {chosen['dice_after_postprocessing']:.4f} after "
                  f"(VS {after.get('VS', float('nan')):.4f}, cochlea {after.get('cochlea', float('nan')):.4f})."]
    return "\n".join(lines)
