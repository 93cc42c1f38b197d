"""Test predictions of a run: which models segment the test set, into which folders, and
writing label maps on each image's own grid (``vstk run``'s predict stage, ``vstk predict``
and ``vstk bench``'s rows)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ..crossmoda import read_image
from ..labels import VS, keep_largest_components
from ..progress import progress_bar
from ..roi import EarRule
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
        write_predictions(plan.segmenter, plan.ear_rule, images, folder, round_index=round_index,
                          keep_largest_vs=plan.options.keep_largest_vs, show=show, onto=originals)
    return {"cases": len(images), "folders": folder_names(plan), "keep_largest_vs": plan.options.keep_largest_vs}


def write_predictions(segmenter: Any, rule: EarRule, images: Mapping[str, Volume], folder: Path, *,
                      round_index: int, keep_largest_vs: bool, show: bool | None,
                      title: str | None = None,
                      onto: Mapping[str, tuple[Region, Volume]] | None = None) -> list[Path]:
    """Segment ``images`` (``{case}_hrT2`` ids) with round ``round_index``'s model and write
    ``folder/{case}_Label.nii.gz`` on each image's own grid; returns the files written.

    ``keep_largest_vs`` keeps only the largest connected VS component of each label map.
    ``onto`` gives, for images that are ear regions, the region and the original image: the
    label is put back on the original's grid.
    """
    with progress_bar(len(images) * 2, title or f"predict (round {round_index})", enabled=show) as bar:
        predictions = predict_full(segmenter, images, rule, round_index=round_index, progress=bar)
    written = []
    for prediction in predictions:
        label = prediction.label
        if keep_largest_vs:
            label = label.with_array(keep_largest_components(label.array, {VS: 1}))
        if onto is not None and prediction.case_id in onto:
            label = restore(label, *onto[prediction.case_id])
        written.append(write_nifti(label, folder / f"{prediction.case_id.removesuffix('_hrT2')}_Label.nii.gz"))
    return written
