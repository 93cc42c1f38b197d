"""``vstk run``: the whole method on one data set, resumable stage by stage.

Stages (``OUT/state/{stage}.json`` marks a finished one, with what it was computed from; a
rerun skips it, and refuses to go on when the command would compute it from other inputs,
see :func:`stage_inputs`):

1. ``data``: the phantom when no ``--data`` is given; every input is read and validated
   before any training starts.
2. ``translator-{name}``: each translator trains (resuming its own checkpoint).
3. ``pool``: every labelled ceT1 through every translator into ``OUT/pool.h5``.
4. ``segment-r0``: the segmenter trains on all views (ear crops, or whole volumes with
   ``--segment-on whole``; ceT1 labels).
5. ``segment-r{k}``: self-training rounds: predict the real hrT2, pseudo-label, retrain.
6. ``predict``: the test hrT2 with the last round (and round 0, to show what self-training
   added) -> ``OUT/predictions/{case}_Label.nii.gz`` on each test image's grid.
7. ``evaluate`` / ``report``: with test labels, ``OUT/evaluation.json`` and ``OUT/report.md``.
"""

from __future__ import annotations

import logging
from typing import Any

from ..atomic import write_json_atomic
from ..plugins import PluginHost
from ..progress import progress_bar
from . import records, stages
from .plan import Plan, RunOptions, plan_run
from .predictions import predict_inputs, predict_test
from .regions import ears_by_case
from .report import evaluate_run, write_report

log = logging.getLogger(__name__)


def stage_inputs(plan: Plan) -> dict[str, dict[str, Any]]:
    """What each training stage computes its result from, as flat ``{key: value}`` records:
    the training cases, the plugins and their result settings (not where or how fast they run:
    see :func:`vstk.config.result_settings`), the ear boxes. Recorded with each stage; a rerun
    whose inputs differ from a record is refused before anything trains
    (:func:`vstk.pipeline.records.check_inputs`)."""
    options = plan.options
    data = {"data.ceT1": records.case_ids(plan.train.source), "data.hrT2": records.case_ids(plan.train.target)}
    if options.ears != "rule":  # trained on the ear regions found (a record without the key: the rule)
        data["ears"] = options.ears

    inputs = {f"translator-{name}": {**data, "translator": name, **records.named_settings(name, translator)}
              for name, translator in plan.translators.items()}
    inputs["pool"] = {**data, "views": sorted(plan.translators)}
    segment = {**inputs["pool"], "segmenter": options.segmenter,
               **records.named_settings(options.segmenter, plan.segmenter),
               "ear_offset_mm": list(options.ear_offset_mm), "ear_size_mm": list(options.ear_size_mm)}
    if options.segments_whole_volumes:  # (a record without the key: ear boxes)
        segment["segment_on"] = "whole"
    inputs["segment-r0"] = records.first_round_settings(segment, options.segmenter, plan.segmenter)
    for round_index in range(1, options.rounds + 1):
        inputs[f"segment-r{round_index}"] = {**segment, "pseudo_labeler": options.pseudo_labeler,
                                             **records.named_settings(options.pseudo_labeler, plan.pseudo_labeler)}
    return inputs


def run(options: RunOptions, host: PluginHost) -> dict[str, Any]:
    """Run (or resume) the whole job; returns the stage summaries."""
    options.out.mkdir(parents=True, exist_ok=True)
    plan = plan_run(options, host)
    inputs = stage_inputs(plan)
    records.check_inputs(plan, inputs)
    summary: dict[str, Any] = {}
    show = options.progress

    checkpoints = stages.train_translators(plan.translators, plan.translator_work, plan.train.source,
                                           plan.train.target, show=show, plan=plan, inputs=inputs)
    for name in plan.translators:
        summary[f"translator-{name}"] = records.stage_done(plan.state, f"translator-{name}")

    def pool_stage() -> dict[str, Any]:
        total = len(plan.train.source) * len(plan.translators) + len(plan.train.target)
        with progress_bar(total, "pool", enabled=show) as bar:
            stages.build_pool(plan.pool, plan.translators, checkpoints, plan.train.source, plan.train.target, host,
                              progress=bar,
                              ears=None if plan.regions is None else ears_by_case(plan.regions, "_ceT1.nii.gz"))
        return {"pool": str(plan.pool)}

    summary["pool"] = records.timed(plan, "pool", pool_stage, inputs=inputs["pool"])
    for round_index in range(options.rounds + 1):
        name = f"segment-r{round_index}"
        summary[name] = records.timed(plan, name, lambda r=round_index: _segment(plan, r, inputs, show),
                                      inputs=inputs[name])

    if plan.test is not None:
        predicted = predict_inputs(plan)
        summary["predict"] = records.timed(plan, "predict", lambda: predict_test(plan, show), inputs=predicted,
                                           redo_if_changed=True)
        labelled = [c for c in plan.test.target if c.label]
        if labelled:
            scored = {**predicted, "test.labels": records.file_digest(c.label for c in labelled)}
            summary["evaluate"] = records.timed(plan, "evaluate", lambda: evaluate_run(plan), inputs=scored,
                                                redo_if_changed=True)
            write_report(plan, summary)
    write_json_atomic(plan.out / "run.json", {"options": records.dataclass_dict(options), "stages": summary},
                      default=str)
    return summary


def _segment(plan: Plan, round_index: int, inputs: dict[str, dict[str, Any]], show: bool | None) -> dict[str, Any]:
    """Train the segmenter of one round; from round 1 on, first pseudo-label the pool's real
    hrT2 with the previous round's model."""
    pseudo_round = round_index if round_index > 0 else None
    if round_index > 0:
        from ..pool import Pool

        pool = Pool(plan.pool)
        images = {case: pool.read_target(case) for case in pool.targets()}
        with progress_bar(len(images) * 2, f"pseudo-label r{round_index}", enabled=show) as bar:
            predictions = stages.predict_full(plan.segmenter, images, plan.segment_rule,
                                              round_index=round_index - 1, progress=bar)
        selected = plan.pseudo_labeler.select(predictions)
        stages.store_pseudo_labels(plan.pool, round_index, selected,
                                   made_by=records.inputs_digest(inputs[f"segment-r{round_index}"]))
    cases = stages.pool_training_cases(plan.pool, plan.segment_rule, pseudo_round=pseudo_round)
    with progress_bar(0, f"segmenter r{round_index}", enabled=show) as bar:
        plan.segmenter.train(cases, round_index=round_index, progress=bar)
    pseudo = [c for c in cases if c.case_id.startswith("pseudo_")]
    return {"training_cases": len(cases),
            "pseudo_labelled": len(pseudo) // (1 if plan.segment_rule is None else len(stages.EAR_SIDES))}
