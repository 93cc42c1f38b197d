"""``vstk run``: the whole method on one data set, resumable stage by stage.

Stages (``OUT/state/{stage}.json`` marks a finished one, with what it was computed from; a
rerun skips it, and refuses to go on when the command would compute it from other inputs,
see :func:`stage_inputs`):

1. ``data``: the phantom when no ``--data`` is given; every input is read and validated
   before any training starts.
2. ``translator-{name}``: each translator trains (resuming its own checkpoint).
3. ``pool``: every labelled ceT1 through every translator into ``OUT/pool.h5``.
4. ``segment-r0``: the segmenter trains on all views (ear crops, ceT1 labels).
5. ``segment-r{k}``: self-training rounds: predict the real hrT2, pseudo-label, retrain.
6. ``predict``: the test hrT2 with the last round (and round 0, to show what self-training
   added) -> ``OUT/predictions/{case}_Label.nii.gz`` on each test image's grid.
7. ``evaluate`` / ``report``: with test labels, ``OUT/evaluation.json`` and ``OUT/report.md``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

from ..crossmoda import DataFolder, discover, load_case, read_image
from ..errors import ConfigError, InputError
from ..labels import VS, keep_largest_components
from ..plugins import PluginHost
from ..progress import progress_bar
from ..resources import usable_cores
from ..roi import DEFAULT_OFFSET_MM, DEFAULT_SIZE_MM, EarRule
from ..volume import write_nifti
from . import stages
from .components import configure, route_default, split_settings

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """Everything ``vstk run`` needs; see ``vstk run --help`` for the meaning of each."""

    out: Path
    translators: tuple[str, ...] = ("cyclegan", "qsattn")
    data: Path | None = None
    test: Path | None = None
    test_labels: Path | None = None
    profile: str = "cpu"
    rounds: int = 1
    segmenter: str = "nnunet"
    pseudo_labeler: str = "all"
    settings: tuple[tuple[str, str], ...] = ()
    device: str | None = None
    phantom_cases: int = 10
    phantom_seed: int = 0
    ear_offset_mm: tuple[float, float, float] = DEFAULT_OFFSET_MM
    ear_size_mm: tuple[float, float, float] = DEFAULT_SIZE_MM
    keep_largest_vs: bool = False
    progress: bool | None = None

    def __post_init__(self) -> None:
        if not self.translators:
            raise ConfigError("no translator named", fix="e.g. --translators cyclegan,qsattn")
        if len(set(self.translators)) != len(self.translators):
            raise ConfigError(f"a translator is named twice in {','.join(self.translators)}")
        if self.rounds < 0:
            raise ConfigError(f"--rounds {self.rounds} must be 0 or more")
        if self.test_labels is not None and self.test is None:
            raise ConfigError("--test-labels needs --test")


@dataclasses.dataclass
class Plan:
    """The resolved run: folders, components and their configs, checked before training."""

    options: RunOptions
    train: DataFolder
    test: DataFolder | None
    translators: dict[str, Any]
    segmenter: Any
    pseudo_labeler: Any
    ear_rule: EarRule

    @property
    def out(self) -> Path:
        return self.options.out

    @property
    def state(self) -> Path:
        return self.options.out / "state"

    @property
    def pool(self) -> Path:
        return self.options.out / "pool.h5"

    @property
    def components(self) -> dict[str, Any]:
        """Every configured plugin of the run by its name: translators, segmenter, pseudo-labeler."""
        return {**self.translators, self.options.segmenter: self.segmenter,
                self.options.pseudo_labeler: self.pseudo_labeler}


def _phantom(options: RunOptions) -> Path:
    from ..phantom import PhantomConfig, generate_phantom

    root = options.out / "phantom"
    record = root / "phantom.json"
    if not record.exists():
        log.info("generating phantom data in %s", root)
        generate_phantom(root, PhantomConfig(cases=options.phantom_cases, seed=options.phantom_seed),
                         workers=usable_cores())
        return root
    made = json.loads(record.read_text()).get("config", {})
    if (made.get("cases"), made.get("seed")) != (options.phantom_cases, options.phantom_seed):
        raise ConfigError(f"the phantom in {root} has {made.get('cases')} cases of seed {made.get('seed')}, "
                          f"not {options.phantom_cases} of seed {options.phantom_seed}",
                          fix=f"give this phantom a new --out, or run with --phantom-cases {made.get('cases')}")
    return root


def _validate_folder(folder: DataFolder, *, with_source: bool) -> None:
    """Read every file once so a bad one stops the run before any training."""
    cases: list[tuple[Any, str]] = [(c, "hrT2") for c in folder.target]
    if with_source:
        cases += [(c, "ceT1") for c in folder.source]
    for case, modality in cases:
        load_case(case, modality)


def plan_run(options: RunOptions, host: PluginHost) -> Plan:
    """Resolve plugins, configs and data; raise on any bad input before training starts."""
    classes = component_classes(options, host)  # unknown plugin names fail before any data is read
    data, test, test_labels = options.data, options.test, options.test_labels
    if data is None:
        root = _phantom(options)
        data, test, test_labels = root / "train", root / "test", root / "test_labels"
    train = discover(data, require_source=True, require_target=True)
    test_folder = None
    if test is not None:
        test_folder = discover(test, labels=test_labels, require_target=True)
        if test_labels is not None and not any(c.label for c in test_folder.target):
            raise InputError("no test label matches a test image", path=test_labels,
                             fix="test labels must be named {case}_Label.nii.gz for {case}_hrT2.nii.gz")
    _validate_folder(train, with_source=True)
    if test_folder is not None:
        _validate_folder(test_folder, with_source=False)
    translators, segmenter, labeler = build_components(options, classes)
    return Plan(options, train, test_folder, translators, segmenter, labeler, ear_rule(options))


def component_classes(options: RunOptions, host: PluginHost) -> dict[str, dict[str, type]]:
    """The run's plugin classes by kind (``translator``, ``segmenter``, ``pseudo-labeler``) and
    name; an unknown name raises the plugin host's error."""
    return {"translator": {name: host.get("translator", name) for name in options.translators},
            "segmenter": {options.segmenter: host.get("segmenter", options.segmenter)},
            "pseudo-labeler": {options.pseudo_labeler: host.get("pseudo-labeler", options.pseudo_labeler)}}


def build_components(options: RunOptions, classes: dict[str, dict[str, type]]) -> tuple[dict[str, Any], Any, Any]:
    """The run's translators (by name), segmenter and pseudo-labeler, configured from the profile
    and the ``--set`` settings routed to each."""
    components = {name: cls for kind in classes.values() for name, cls in kind.items()}
    routed = split_settings(dict(options.settings), components)
    route_default(routed, components, "device", options.device)  # --device cuda: the segmenter too
    # the translators' ear frames follow the run's ear boxes
    route_default(routed, components, "ear_offset_mm", ",".join(str(v) for v in options.ear_offset_mm))
    translators = {name: cls(configure(cls, options.profile, routed[name]), device=options.device)
                   for name, cls in classes["translator"].items()}
    segmenter_cls = classes["segmenter"][options.segmenter]
    segmenter = segmenter_cls(configure(segmenter_cls, options.profile, routed[options.segmenter]),
                              options.out / "segmenter")
    labeler_cls = classes["pseudo-labeler"][options.pseudo_labeler]
    labeler = labeler_cls(configure(labeler_cls, options.profile, routed[options.pseudo_labeler]))
    return translators, segmenter, labeler


def ear_rule(options: RunOptions) -> EarRule:
    return EarRule(options.ear_offset_mm, options.ear_size_mm)


def _inputs_digest(inputs: dict[str, Any]) -> str:
    """A short name of a stage's inputs (what made a self-training round's pseudo labels)."""
    text = json.dumps(inputs, sort_keys=True, default=str)
    return "vstk run inputs sha256 " + hashlib.sha256(text.encode()).hexdigest()[:16]


def stage_inputs(plan: Plan) -> dict[str, dict[str, Any]]:
    """What each training stage computes its result from, as flat ``{key: value}`` records:
    the training cases, the plugins and their result settings (not where or how fast they run:
    see :func:`vstk.config.result_settings`), the ear boxes. Recorded with each stage; a rerun
    whose inputs differ from a record is refused before anything trains (:func:`check_inputs`)."""
    options = plan.options
    data = {"data.ceT1": stages.case_ids(plan.train.source), "data.hrT2": stages.case_ids(plan.train.target)}

    inputs = {f"translator-{name}": {**data, "translator": name, **stages.named_settings(name, translator)}
              for name, translator in plan.translators.items()}
    inputs["pool"] = {**data, "views": sorted(plan.translators)}
    segment = {**inputs["pool"], "segmenter": options.segmenter,
               **stages.named_settings(options.segmenter, plan.segmenter),
               "ear_offset_mm": list(options.ear_offset_mm), "ear_size_mm": list(options.ear_size_mm)}
    inputs["segment-r0"] = stages.first_round_settings(segment, options.segmenter, plan.segmenter)
    for round_index in range(1, options.rounds + 1):
        inputs[f"segment-r{round_index}"] = {**segment, "pseudo_labeler": options.pseudo_labeler,
                                             **stages.named_settings(options.pseudo_labeler, plan.pseudo_labeler)}
    return inputs


def setting_defaults(plan: Plan) -> dict[str, Any]:
    """``{"NAME.key": default}`` of every plugin's result settings: a record of an older vstk
    that lacks a setting is read as having it at its default (:func:`stages.changed_inputs`)."""
    return {key: value for name, component in plan.components.items()
            for key, value in stages.named_defaults(name, component).items()}


def check_inputs(plan: Plan, inputs: dict[str, dict[str, Any]]) -> None:
    """Refuse to resume an OUT whose finished (or started) stages were computed from other
    inputs: skipping them would report results of settings the command no longer names."""
    problems = []
    defaults = setting_defaults(plan)
    # a round-0 record of an older vstk also holds the self-training-only settings: not compared
    later = stages.self_training_keys(plan.options.segmenter, plan.segmenter)
    for name, wanted in inputs.items():  # in pipeline order
        record = stages.recorded_inputs(plan.state, name)
        if record is None:
            continue
        recorded, path = record
        recorded = {k: v for k, v in recorded.items() if k in wanted or k not in later}
        changed = stages.changed_inputs(recorded, wanted, defaults)
        if changed:
            problems.append((name, path, changed))
    if problems:
        name, path, changed = problems[0]
        what = "started" if path.name.endswith(".started.json") else "finished"
        later = f" (and in {', '.join(p[0] for p in problems[1:])})" if problems[1:] else ""
        raise ConfigError(f"{plan.out} holds a run of other settings: stage {name} was {what} with "
                          f"{stages.at_most_six(changed)} (recorded -> now){later}",
                          fix=f"give these settings a new --out, or rerun with the recorded ones (in {path})")


def reusable_record(plan: Plan, name: str, inputs: dict[str, Any] | None, *, redo_if_changed: bool,
                    announce: bool = False) -> dict[str, Any] | None:
    """The record of finished stage ``name`` if a rerun may skip it, else None: not finished,
    or (``redo_if_changed``) recorded with other inputs or, by an older vstk, without them."""
    done = stages.stage_done(plan.state, name)
    if done is None or not redo_if_changed or inputs is None:
        return done
    changed = stages.changed_inputs(done.get("inputs", {}), inputs)  # test stages: no plugin settings
    if not changed:
        return done
    if announce:
        log.info("stage %s again: %s (recorded -> now)", name, stages.at_most_six(changed))
    return None


def timed(plan: Plan, name: str, work, *, announce_skip: bool = True, inputs: dict[str, Any] | None = None,
          redo_if_changed: bool = False) -> dict[str, Any]:
    """Run stage ``name`` unless it is done; ``inputs`` are recorded with it. A finished stage
    whose recorded inputs differ (or that an older vstk recorded without them) is run again
    with ``redo_if_changed`` (the cheap test stages); the training stages are refused earlier
    instead (:func:`check_inputs`)."""
    done = reusable_record(plan, name, inputs, redo_if_changed=redo_if_changed, announce=True)
    if done is not None:
        if announce_skip:
            log.info("stage %s already done (%.0f s), skipped", name, done.get("seconds", 0))
        return done
    if inputs is not None:
        stages.mark_started(plan.state, name, inputs)
    started = time.perf_counter()
    info = work() or {}
    info["seconds"] = round(time.perf_counter() - started, 1)
    if inputs is not None:
        info["inputs"] = inputs
    stages.mark_done(plan.state, name, info)
    log.info("stage %s done in %.0f s", name, info["seconds"])
    return info


def run(options: RunOptions, host: PluginHost) -> dict[str, Any]:
    """Run (or resume) the whole job; returns the stage summaries."""
    options.out.mkdir(parents=True, exist_ok=True)
    plan = plan_run(options, host)
    inputs = stage_inputs(plan)
    check_inputs(plan, inputs)
    summary: dict[str, Any] = {}
    show = options.progress

    sources = targets = None

    def load_inputs():
        nonlocal sources, targets
        if sources is None:
            sources = [read_image(c.ceT1) for c in plan.train.source]
            targets = [read_image(c.hrT2) for c in plan.train.target]

    trained_side_by_side = _train_translators_side_by_side(plan, show, inputs)
    checkpoints = {}
    for name, translator in plan.translators.items():
        workdir = plan.out / "translators" / name

        def train_one(name=name, translator=translator, workdir=workdir):
            load_inputs()
            with progress_bar(0, f"train {name}", enabled=show) as bar:
                path = stages.train_translator(translator, sources, targets, workdir, progress=bar,
                                               same_settings=True)
            return {"checkpoint": str(path)}

        summary[f"translator-{name}"] = timed(plan, f"translator-{name}", train_one,
                                              inputs=inputs[f"translator-{name}"],
                                              announce_skip=name not in trained_side_by_side)
        checkpoints[name] = workdir / "translator.pt"
        if plan.translators[name].generator is None:
            translator.load(checkpoints[name])

    def pool_stage():
        total = len(plan.train.source) * len(plan.translators) + len(plan.train.target)
        with progress_bar(total, "pool", enabled=show) as bar:
            stages.build_pool(plan.pool, plan.translators, checkpoints, plan.train.source, plan.train.target, host,
                              progress=bar)
        return {"pool": str(plan.pool)}

    summary["pool"] = timed(plan, "pool", pool_stage, inputs=inputs["pool"])

    def segment(round_index: int):
        def work():
            pseudo_round = round_index if round_index > 0 else None
            if round_index > 0:
                from ..pool import Pool

                pool = Pool(plan.pool)
                images = {case: pool.read_target(case) for case in pool.targets()}
                with progress_bar(len(images) * 2, f"pseudo-label r{round_index}", enabled=show) as bar:
                    predictions = stages.predict_full(plan.segmenter, images, plan.ear_rule,
                                                      round_index=round_index - 1, progress=bar)
                selected = plan.pseudo_labeler.select(predictions)
                stages.store_pseudo_labels(plan.pool, round_index, selected,
                                           made_by=_inputs_digest(inputs[f"segment-r{round_index}"]))
            cases = stages.pool_training_cases(plan.pool, plan.ear_rule, pseudo_round=pseudo_round)
            with progress_bar(0, f"segmenter r{round_index}", enabled=show) as bar:
                plan.segmenter.train(cases, round_index=round_index, progress=bar)
            return {"training_cases": len(cases), "pseudo_labelled": 0 if pseudo_round is None else
                    len([c for c in cases if c.case_id.startswith("pseudo_")]) // 2}

        return work

    for round_index in range(options.rounds + 1):
        summary[f"segment-r{round_index}"] = timed(plan, f"segment-r{round_index}", segment(round_index),
                                                   inputs=inputs[f"segment-r{round_index}"])

    if plan.test is not None:
        predicted = predict_inputs(plan)
        summary["predict"] = timed(plan, "predict", lambda: predict_test(plan, show), inputs=predicted,
                                   redo_if_changed=True)
        labelled = [c for c in plan.test.target if c.label]
        if labelled:
            from .report import evaluate_run, write_report

            scored = {**predicted, "test.labels": stages.file_digest(c.label for c in labelled)}
            summary["evaluate"] = timed(plan, "evaluate", lambda: evaluate_run(plan), inputs=scored,
                                        redo_if_changed=True)
            write_report(plan, summary)
    stages.write_json_atomic(plan.out / "run.json", {"options": stages.dataclass_dict(options), "stages": summary})
    return summary


def _train_translators_side_by_side(plan: Plan, show: bool | None, inputs: dict[str, dict[str, Any]]) -> set[str]:
    """On a multi-core CPU, train every unfinished translator at once, one process each
    (see :mod:`vstk.pipeline.parallel`); on a GPU, or for one translator, they train in turn
    in this process (the loop in :func:`run`). Returns the names trained here."""
    from ..translation.base import pick_device
    from .parallel import TranslatorJob, train_in_parallel

    todo = [name for name in plan.translators
            if stages.stage_done(plan.state, f"translator-{name}") is None
            and not (plan.out / "translators" / name / "translator.pt").exists()]
    if len(todo) < 2 or usable_cores() < 2 or pick_device(plan.options.device) != "cpu":
        return set()
    sources = tuple(c.ceT1 for c in plan.train.source)
    targets = tuple(c.hrT2 for c in plan.train.target)
    jobs = [TranslatorJob(name, type(plan.translators[name]), plan.translators[name].config, plan.options.device,
                          sources, targets, plan.out / "translators" / name) for name in todo]
    for name in todo:
        stages.mark_started(plan.state, f"translator-{name}", inputs[f"translator-{name}"])
    with progress_bar(0, "train " + "+".join(todo), enabled=show) as bar:
        results = train_in_parallel(jobs, progress=bar)
    for name, (path, seconds) in results.items():
        stages.mark_done(plan.state, f"translator-{name}",
                         {"checkpoint": str(path), "seconds": round(seconds, 1), "processes": len(jobs),
                          "inputs": inputs[f"translator-{name}"]})
        log.info("stage translator-%s done in %.0f s (side by side)", name, seconds)
    return set(results)


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
    return {"test.hrT2": stages.case_ids(plan.test.target), "rounds": plan.options.rounds,
            "keep_largest_vs": plan.options.keep_largest_vs, "folders": _folder_names(plan)}


def remove_stale_predictions(plan: Plan, previous: dict[str, Any] | None) -> None:
    """Remove the prediction folders of the ``previous`` record that this run does not write
    (e.g. ``predictions_round0`` after ``--rounds 0``); never a folder outside OUT."""
    if previous is None:
        return
    recorded = {_name_in_out(plan, folder) for folder in previous.get("folders", {}).values()}
    for name in recorded - set(_folder_names(plan).values()):
        if not Path(name).is_absolute():
            shutil.rmtree(plan.out / name, ignore_errors=True)


def _folder_names(plan: Plan) -> dict[str, str]:
    """The test prediction folders of this run by round, as names inside OUT."""
    return {str(k): v.name for k, v in prediction_rounds(plan).items()}


def _name_in_out(plan: Plan, recorded: str) -> str:
    """A recorded folder as a name inside OUT, or unchanged when it lies elsewhere."""
    path = Path(recorded)
    if not path.is_absolute():
        return recorded
    return path.name if path.parent.resolve() == plan.out.resolve() else recorded


def predict_test(plan: Plan, show: bool | None) -> dict[str, Any]:
    images = {c.case_id: read_image(c.hrT2) for c in plan.test.target}
    rounds = prediction_rounds(plan)
    remove_stale_predictions(plan, stages.stage_done(plan.state, "predict"))  # the record this run replaces
    for folder in rounds.values():  # no prediction of an earlier test set or run stays behind
        shutil.rmtree(folder, ignore_errors=True)
    for round_index, folder in rounds.items():
        write_predictions(plan.segmenter, plan.ear_rule, images, folder, round_index=round_index,
                          keep_largest_vs=plan.options.keep_largest_vs, show=show)
    return {"cases": len(images), "folders": _folder_names(plan), "keep_largest_vs": plan.options.keep_largest_vs}


def write_predictions(segmenter: Any, rule: EarRule, images: dict[str, Any], folder: Path, *, round_index: int,
                      keep_largest_vs: bool, show: bool | None) -> list[Path]:
    """Segment ``images`` (``{case}_hrT2`` ids) with round ``round_index``'s model and write
    ``folder/{case}_Label.nii.gz`` on each image's own grid; returns the files written."""
    with progress_bar(len(images) * 2, f"predict (round {round_index})", enabled=show) as bar:
        predictions = stages.predict_full(segmenter, images, rule, round_index=round_index, progress=bar)
    written = []
    for prediction in predictions:
        stem = prediction.case_id[:-len("_hrT2")] if prediction.case_id.endswith("_hrT2") else prediction.case_id
        label = prediction.label
        if keep_largest_vs:
            label = label.with_array(keep_largest_components(label.array, {VS: 1}))
        written.append(write_nifti(label, folder / f"{stem}_Label.nii.gz"))
    return written


def parse_translators(value: str | Sequence[str]) -> tuple[str, ...]:
    names = value.split(",") if isinstance(value, str) else list(value)
    return tuple(n.strip() for n in names if n.strip())
