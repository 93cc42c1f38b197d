"""Test predictions of a run: which models segment the test set, into which folders, and
writing label maps on each image's own grid (``vstk run``'s predict stage, ``vstk predict``
and ``vstk bench``'s rows)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from ..atomic import write_json_atomic
from ..crossmoda import read_image
from ..errors import ConfigError
from ..labels import LABEL_NAMES, VS, keep_largest_components
from ..progress import progress_bar
from ..roi import EarRule, paste_probabilities
from ..volume import Volume, write_nifti
from .records import case_ids, stage_done
from .regions import Region, crop_to_region, restore
from .stages import predict_full

if TYPE_CHECKING:
    from .plan import Plan


def prediction_rounds(plan: Plan) -> dict[int, Path]:
    """Where each model's test predictions go: the final round, and round 0 when it differs."""
    out = {plan.options.rounds: plan.out / "predictions"}
    if plan.options.rounds > 0:
        out[0] = plan.out / "predictions_round0"
    return out


def prediction_dirs(plan: Plan) -> dict[str, Path]:
    """:func:`prediction_rounds` keyed by the model names of the report (``"round 1"``)."""
    return {f"round {r}": folder for r, folder in prediction_rounds(plan).items()}


def predict_inputs(plan: Plan) -> dict[str, Any]:
    """What the test predictions are computed from besides the trained segmenters: the test
    images, the rounds that are predicted (and their folders, named inside OUT) and the VS
    post-processing. A rerun with any of them changed predicts and scores again
    (``redo_if_changed``)."""
    return {"test.hrT2": case_ids(plan.test.target), "rounds": plan.options.rounds,
            "keep_largest_vs": plan.options.keep_largest_vs, "folders": folder_names(plan)}


def remove_stale_predictions(plan: Plan, previous: dict[str, Any] | None) -> None:
    """Remove the prediction folders of the ``previous`` record that this run does not write
    (e.g. ``predictions_round0`` after ``--rounds 0``); never a folder outside OUT."""
    if previous is None:
        return
    recorded = {_name_in_out(plan, folder) for folder in previous.get("folders", {}).values()}
    for name in recorded - set(folder_names(plan).values()):
        if not Path(name).is_absolute():
            shutil.rmtree(plan.out / name, ignore_errors=True)


def folder_names(plan: Plan) -> dict[str, str]:
    """The test prediction folders of this run by round, as names inside OUT."""
    return {str(k): v.name for k, v in prediction_rounds(plan).items()}


def _name_in_out(plan: Plan, recorded: str) -> str:
    """A recorded folder as a name inside OUT, or unchanged when it lies elsewhere."""
    path = Path(recorded)
    if not path.is_absolute():
        return recorded
    return path.name if path.parent.resolve() == plan.out.resolve() else recorded


def predict_test(plan: Plan, show: bool | None) -> dict[str, Any]:
    """The run's predict stage: the test hrT2 with every model of :func:`prediction_rounds`
    (with ``--ears found``, each cut to its ear region and the labels put back on its grid)."""
    images = {c.case_id: read_image(c.hrT2) for c in plan.test.target}
    originals = None
    if plan.regions is not None:
        originals = {c.case_id: (plan.regions[str(c.hrT2)], images[c.case_id]) for c in plan.test.target}
        images = {case: crop_to_region(image, originals[case][0]) for case, image in images.items()}
    rounds = prediction_rounds(plan)
    remove_stale_predictions(plan, stage_done(plan.state, "predict"))  # the record this run replaces
    for folder in rounds.values():  # no prediction of an earlier test set or run stays behind
        shutil.rmtree(folder, ignore_errors=True)
    for round_index, folder in rounds.items():
        write_predictions(plan.segmenter, plan.segment_rule, images, folder, round_index=round_index,
                          keep_largest_vs=plan.options.keep_largest_vs, show=show, onto=originals)
    return {"cases": len(images), "folders": folder_names(plan), "keep_largest_vs": plan.options.keep_largest_vs}


def write_predictions(segmenter: Any, rule: EarRule | None, images: Mapping[str, Volume], folder: Path, *,
                      round_index: int, keep_largest_vs: bool, show: bool | None,
                      title: str | None = None,
                      onto: Mapping[str, tuple[Region, Volume]] | None = None,
                      save_probabilities: bool = False) -> list[Path]:
    """Segment ``images`` (``{case}_hrT2`` ids) with round ``round_index``'s model (in the ear
    boxes of ``rule``, or whole with None) and write ``folder/{case}_Label.nii.gz`` on each
    image's own grid; returns the files written.

    ``keep_largest_vs`` keeps only the largest connected VS component of each label map.
    ``onto`` gives, for images that are ear regions, the region and the original image: the
    label is put back on the original's grid. ``save_probabilities`` also writes the softmax
    as nnU-Net's ``--save_probabilities`` does (:func:`write_probabilities`).
    """
    with progress_bar(len(images) * 2, title or f"predict (round {round_index})", enabled=show) as bar:
        predictions = predict_full(segmenter, images, rule, round_index=round_index, progress=bar)
    written = []
    for prediction in predictions:
        label = prediction.label
        if keep_largest_vs:
            label = label.with_array(keep_largest_components(label.array, {VS: 1}))
        probabilities = prediction.probabilities
        if onto is not None and prediction.case_id in onto:
            label = restore(label, *onto[prediction.case_id])
            if probabilities is not None:
                region, original = onto[prediction.case_id]
                probabilities = paste_probabilities(probabilities, region.box, original.shape)
        name = f"{prediction.case_id.removesuffix('_hrT2')}_Label"
        if save_probabilities:
            if probabilities is None:
                raise ConfigError(f"the segmenter {getattr(segmenter, 'name', type(segmenter).__name__)!r} "
                                  "computes no probabilities to save",
                                  fix="predict without --save-probabilities")
            write_probabilities(probabilities, label, folder / name)
        written.append(write_nifti(label, folder / f"{name}.nii.gz"))
    return written


def write_probabilities(probabilities: np.ndarray, label: Volume, stem: Path) -> tuple[Path, Path]:
    """``stem.npz`` holding ``probabilities`` (float32 ``[classes, z, y, x]``, nnU-Net's key and
    axis order, on the label's grid) and ``stem.json`` with that grid and the class names.

    nnU-Net writes the grid as a pickle beside the ``.npz``; vstk writes JSON (no pickles).
    Each file is written under a temporary name and renamed, so none is left half-written.
    """
    if probabilities.shape[1:] != label.shape:
        raise ValueError(f"probabilities {probabilities.shape} do not match the label {label.shape}")
    stem.parent.mkdir(parents=True, exist_ok=True)
    npz = stem.with_name(stem.name + ".npz")
    partial = stem.with_name(stem.name + ".partial.npz")
    np.savez_compressed(partial, probabilities=probabilities.astype(np.float32, copy=False))
    os.replace(partial, npz)
    grid = {"shape_zyx": list(label.shape), "spacing_xyz": list(label.spacing), "origin_xyz": list(label.origin),
            "direction": list(label.direction),
            "classes": {str(c): LABEL_NAMES.get(c, str(c)) for c in range(probabilities.shape[0])}}
    sidecar = stem.with_name(stem.name + ".json")
    write_json_atomic(sidecar, grid)
    return npz, sidecar
