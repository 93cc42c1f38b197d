"""``vstk bench``: translators alone and in multi-view combinations, under one protocol.

Every method gets the same segmenter (same config, same seeds, same budget) and the same
test set; only its training images differ:

* ``none``: the raw ceT1 with its labels, no adaptation (the floor);
* one row per translator: that translator's view of every labelled ceT1;
* one row per named combination (``cyclegan+qsattn``): all of its views together;
* ``supervised``: the labelled training hrT2, when their labels exist (the ceiling).

Each translator trains once (``OUT/translators/NAME``), one pool holds every view
(``OUT/pool.h5``), and each method trains its own segmenter in ``OUT/methods/METHOD/segmenter``
(its own nnU-Net workspace, the dataset named after the method). With ``--seeds`` every method
trains once per segmenter seed, in ``OUT/methods/METHOD/seed{N}``, and the report gives the
seed-averaged scores and the spread over seeds. Stages (``OUT/state/{stage}.json`` marks a
finished one with what it was computed from; a rerun skips it, refuses a training stage of
other settings and redoes a test stage of other test data): ``translator-{name}``, ``pool``,
``fidelity`` (PSNR/SSIM on paired cases), then per method (and seed: ``{method}-s{N}``)
``segment-{method}-r{k}``, ``predict-{method}``, ``evaluate-{method}``. The report
(``OUT/bench.md``, ``OUT/bench.json``, ``OUT/figures/*.png``) is rewritten every time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ..atomic import write_json_atomic
from ..crossmoda import discover, load_case, read_image
from ..errors import ConfigError, InputError
from ..plugins import PluginHost, host_from_environment
from ..progress import progress_bar
from ..protocols import TrainingCase
from ..resources import usable_cores
from ..volume import Volume, read_nifti, write_nifti
from . import records, stages
from .bench_model import NONE, SUPERVISED, BenchOptions, BenchPlan, Method, Replicate
from .bench_report import write_bench_report
from .plan import RunOptions, check_labels_inside, component_classes, phantom_data, plan_run
from .predictions import write_predictions
from .regions import EARS_DIR, Region, crop_labelled, crop_to_region, locate_regions
from .run import stage_inputs

log = logging.getLogger(__name__)

def _dataset_name(method: str) -> str:
    return (re.sub(r"[^A-Za-z0-9]+", "-", method).strip("-") or "method")[:64]


def method_config(base: Any, replicate: Replicate, segmenter: str) -> Any:
    """The segmenter config of one replicate: the shared one, with the method's name as the
    dataset name (``dataset_name``, nnU-Net) and the replicate's seed under ``--seeds``.

    Every row has its own workspace, so all rows keep the same dataset id: adding a translator
    to the command never moves a finished row's results. Every other setting is shared.
    """
    if not dataclasses.is_dataclass(base):
        if replicate.seed is not None:
            raise ConfigError(f"--seeds: the segmenter {segmenter!r} has no settings (no seed to vary)",
                              fix="leave out --seeds")
        return base
    fields = {f.name for f in dataclasses.fields(base)}
    changes: dict[str, Any] = {}
    if "dataset_name" in fields:
        changes["dataset_name"] = _dataset_name(replicate.method.name)
    if replicate.seed is not None:
        if "seed" not in fields:
            raise ConfigError(f"--seeds: the segmenter {segmenter!r} has no seed setting", fix="leave out --seeds")
        changes["seed"] = replicate.seed
    return dataclasses.replace(base, **changes) if changes else base


def _paired_cases(paired_dir: Path) -> tuple[Any, ...]:
    """The cases of ``--paired``, each a ceT1 and an hrT2 on one grid."""
    paired = tuple(c for c in discover(paired_dir).source if c.hrT2 is not None)
    if not paired:
        raise InputError("no paired case: every case needs {case}_ceT1 and {case}_hrT2 on one grid",
                         path=paired_dir, fix="point --paired at the phantom's paired/ folder")
    for case in paired:
        ce, t2 = read_image(case.ceT1), read_image(case.hrT2)
        mismatch = ce.grid_mismatch(t2)
        if mismatch is not None:
            raise InputError(f"paired case {case.case_id}: ceT1 and hrT2 are not on one grid ({mismatch})",
                             path=case.hrT2, fix="paired cases render both contrasts on the same grid")
    return paired


def plan_bench(options: BenchOptions, host: PluginHost) -> BenchPlan:
    """Resolve plugins, configs and data; raise on any bad input before training starts."""
    component_classes(options, host)  # unknown names and --set keys fail before the phantom is made
    options.out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    data, test, test_labels = options.data, options.test, options.test_labels
    target_labels, paired_dir = options.target_labels, options.paired
    if data is None:
        from ..phantom import TARGET_LABELS

        # the benchmark's own phantom has labels of the training hrT2, for the supervised row
        root = phantom_data(options.out, cases=options.phantom_cases, seed=options.phantom_seed, target_labels=True,
                           geometry=options.phantom_geometry)
        data, test, test_labels = root / "train", root / "test", root / "test_labels"
        target_labels = root / TARGET_LABELS if (root / TARGET_LABELS).is_dir() else None
        paired_dir = root / "paired"
    run_options = RunOptions(out=options.out, translators=options.translators, data=data, test=test,
                             test_labels=test_labels, profile=options.profile, rounds=options.rounds,
                             segmenter=options.segmenter, pseudo_labeler=options.pseudo_labeler,
                             settings=options.settings, device=options.device, progress=options.progress,
                             ear_offset_mm=options.ear_offset_mm, ear_size_mm=options.ear_size_mm,
                             ears=options.ears, segment_on=options.segment_on)
    # the extra folders are matched first: finding the ears of every image takes minutes
    labelled_targets: tuple[Any, ...] = ()
    if target_labels is not None:
        folder = discover(data, labels=target_labels, require_target=True)
        labelled_targets = tuple(c for c in folder.target if c.label is not None)
        if not labelled_targets:
            raise InputError("no label matches a training hrT2 image", path=target_labels,
                             fix="name them {case}_Label.nii.gz for {case}_hrT2.nii.gz in --data")
    paired = _paired_cases(paired_dir) if paired_dir is not None else ()
    run_plan = plan_run(run_options, host)
    assert run_plan.test is not None

    if target_labels is not None:
        for case in labelled_targets:  # a label off its grid, its ear region or its boxes stops here, not after hours
            image, label = _supervised_case(run_plan, case)
            if run_plan.segment_rule is not None:
                check_labels_inside(case.hrT2, image, label, run_plan.segment_rule)
        if len(labelled_targets) < len(folder.target):
            notes.append(f"{SUPERVISED}: {len(labelled_targets)} of {len(folder.target)} training hrT2 are "
                         "labelled; it trains on those.")
    else:
        notes.append(f"{SUPERVISED}: skipped: the training hrT2 have no labels (pass --target-labels DIR, "
                     "or generate the phantom with --target-labels).")

    if paired_dir is None:
        notes.append("translation fidelity: skipped: no paired ceT1/hrT2 cases (pass --paired DIR).")

    methods = tuple(m for m in options.methods() if m.name != SUPERVISED or labelled_targets)
    replicates = options.replicates(methods)
    segmenter_cls = type(run_plan.segmenter)
    plan = BenchPlan(options, run_plan, methods, replicates, {}, Path(test_labels), labelled_targets, paired, notes)
    for replicate in replicates:
        config = method_config(run_plan.segmenter.config, replicate, options.segmenter)
        plan.segmenters[replicate.key] = segmenter_cls(config, plan.method_dir(replicate) / "segmenter")
    return plan


def _supervised_case(run_plan: Any, case: Any) -> tuple[Volume, Volume]:
    """A labelled training hrT2 and its label, both cut to the image's ear region with
    ``--ears found`` (the region the run found for that file; no labelled voxel cropped away)."""
    image, label = load_case(case, "hrT2")
    if run_plan.regions is None:
        return image, label
    cropped, cropped_label = crop_labelled(image, label, run_plan.regions[str(case.hrT2)].box, case.label)
    assert cropped_label is not None
    return cropped, cropped_label


class _TimedTranslator:
    """A translator whose ``translate_volume`` calls add up their wall time in ``seconds``."""

    def __init__(self, translator: Any) -> None:
        self._translator = translator
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._translator, name)

    def translate_volume(self, volume: Volume, **kwargs: Any) -> Volume:
        started = time.perf_counter()
        out = self._translator.translate_volume(volume, **kwargs)
        self.seconds += time.perf_counter() - started
        return out


def _ear_cases(pairs: Iterable[tuple[str, Volume, Volume]], plan: BenchPlan, *,
               pseudo_labelled: bool = False, truth_target: bool = False) -> list[TrainingCase]:
    cases = []
    for prefix, image, label in pairs:
        for cid, _, image_crop, label_crop in stages.segmenter_parts(image, label, plan.run.segment_rule, prefix):
            cases.append(TrainingCase(cid, image_crop, label_crop, pseudo_labelled=pseudo_labelled,
                                      truth_target=truth_target))
    return cases


def training_cases(plan: BenchPlan, method: Method) -> list[TrainingCase]:
    """Round 0 training set of a method: ear crops of its images with their labels."""
    if method.name == NONE:
        return _ear_cases(((f"ceT1__{c.case_id}", *load_case(c, "ceT1")) for c in plan.run.train.source), plan)
    if method.name == SUPERVISED:
        return _ear_cases(((f"hrT2__{c.case_id}", *_supervised_case(plan.run, c)) for c in plan.labelled_targets),
                          plan, truth_target=True)  # real hrT2: augmented as the pseudo-labelled ones are
    return stages.pool_training_cases(plan.run.pool, plan.run.segment_rule, views=method.views)


def pseudo_labels(plan: BenchPlan, replicate: Replicate, round_index: int, show: bool | None) -> list[TrainingCase]:
    """Ear crops of the real training hrT2 pseudo-labelled by the replicate's round ``round_index - 1``.

    The labels are written to ``METHOD/pseudo_r{k}/`` (``selected.json`` last) and always read
    back from there, so an interrupted round resumes on byte-identical cases.
    """
    folder = plan.method_dir(replicate) / f"pseudo_r{round_index}"
    images = {c.case_id: read_image(c.hrT2) for c in plan.run.train.target}
    if not (folder / "selected.json").exists():
        segmenter = plan.segmenters[replicate.key]
        with progress_bar(len(images) * 2, f"pseudo-label {replicate.key} r{round_index}", enabled=show) as bar:
            predictions = stages.predict_full(segmenter, images, plan.run.segment_rule, round_index=round_index - 1,
                                              progress=bar)
        selected = plan.run.pseudo_labeler.select(predictions)
        for item in selected:
            write_nifti(item.label, folder / f"{item.case_id}_Label.nii.gz")
        write_json_atomic(folder / "selected.json", {item.case_id: float(item.confidence) for item in selected})
    chosen = json.loads((folder / "selected.json").read_text())
    return _ear_cases(((f"pseudo_r{round_index}__{case}", images[case],
                        read_nifti(folder / f"{case}_Label.nii.gz")) for case in chosen), plan,
                      pseudo_labelled=True)


def _predict(plan: BenchPlan, replicate: Replicate, images: "_TestImages", show: bool | None) -> dict[str, Any]:
    folder = plan.method_dir(replicate) / "predictions"
    shutil.rmtree(folder, ignore_errors=True)  # no prediction of an earlier test set stays behind
    written = write_predictions(plan.segmenters[replicate.key], plan.run.segment_rule, images(), folder,
                                round_index=plan.rounds_of(replicate.method), keep_largest_vs=False, show=show,
                                title=f"predict {replicate.key}", onto=images.onto)
    return {"cases": len(written), "folder": str(folder)}


def row_inputs(plan: BenchPlan, replicate: Replicate) -> dict[str, dict[str, Any]]:
    """What each stage of one replicate is computed from (recorded with it, as in ``vstk run``):
    its training images (the translators' settings are checked as the translator stages'),
    the segmenter's result settings, the ear boxes, the pseudo-labeler of the self-training
    rounds, and for the test stages the test set and rounds."""
    method, options = replicate.method, plan.options
    if method.name == NONE:
        training: dict[str, Any] = {"training": "ceT1", "data.ceT1": records.case_ids(plan.run.train.source)}
    elif method.name == SUPERVISED:
        training = {"training": "labelled hrT2", "data.hrT2_labelled": records.case_ids(plan.labelled_targets),
                    "data.hrT2_labels": records.file_digest(c.label for c in plan.labelled_targets)}
    else:
        training = {"training": "views", "views": list(method.views),
                    "data.ceT1": records.case_ids(plan.run.train.source)}
    segmenter = plan.segmenters[replicate.key]
    segment = {**training, "segmenter": options.segmenter, **records.named_settings(options.segmenter, segmenter),
               "ear_offset_mm": list(options.ear_offset_mm), "ear_size_mm": list(options.ear_size_mm)}
    if options.ears != "rule":  # on the ear regions found (a record without the key: the rule)
        segment["ears"] = options.ears
    if plan.run.segment_rule is None:  # (a record without the key: ear boxes)
        segment["segment_on"] = "whole"
    labeler = records.named_settings(options.pseudo_labeler, plan.run.pseudo_labeler)
    inputs = {f"segment-{replicate.key}-r0": records.first_round_settings(segment, options.segmenter, segmenter)}
    for round_index in range(1, plan.rounds_of(method) + 1):
        inputs[f"segment-{replicate.key}-r{round_index}"] = {
            **segment, "data.hrT2": records.case_ids(plan.run.train.target), "pseudo_labeler": options.pseudo_labeler,
            **labeler}
    tested = {"test.hrT2": records.case_ids(plan.run.test.target), "rounds": plan.rounds_of(method)}
    inputs[f"predict-{replicate.key}"] = tested
    inputs[f"evaluate-{replicate.key}"] = {**tested, "test.labels": records.file_digest(
        c.label for c in plan.run.test.target if c.label)}
    return inputs


def _refuse_older_layout(plan: BenchPlan) -> None:
    """A benchmark OUT of a vstk before recorded stage inputs gave each row its own dataset id
    (and its rows' records say nothing of their settings): it cannot be resumed safely."""
    for replicate in plan.replicates:
        done = records.stage_done(plan.run.state, f"segment-{replicate.key}-r0")
        if done is not None and "inputs" not in done:
            raise ConfigError(f"{plan.out} holds a benchmark of an older vstk: its row {replicate.key} was trained "
                              "without recording its settings, in an nnU-Net dataset of the older numbering",
                              fix="give the benchmark a new --out (its translators can be copied: "
                                  "OUT/translators/NAME/translator.pt is checked against the settings)")


def _training_stages(inputs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: value for name, value in inputs.items() if name.startswith("segment-")}


def bench(options: BenchOptions, host: PluginHost) -> dict[str, Any]:
    """Run (or resume) the benchmark; returns the report's numbers (also in ``OUT/bench.json``)."""
    plan = plan_bench(options, host)
    show = options.progress
    stages_done: dict[str, dict[str, Any]] = {}

    def stage(name: str, work: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
        stages_done[name] = records.timed(plan.run, name, work)
        return stages_done[name]

    # a rerun must not skip translators or segmenters of other settings (the test stages are redone)
    _refuse_older_layout(plan)
    translator_inputs = {k: v for k, v in stage_inputs(plan.run).items() if k.startswith("translator-")}
    rows = {k: v for r in plan.replicates for k, v in _training_stages(row_inputs(plan, r)).items()}
    records.check_inputs(plan.run, {**translator_inputs, **rows})

    checkpoints = stages.train_translators(plan.run.translators, plan.run.translator_work, plan.run.train.source,
                                           plan.run.train.target, show=show, plan=plan.run, inputs=translator_inputs)
    for name in plan.run.translators:
        stages_done[f"translator-{name}"] = records.stage_done(plan.run.state, f"translator-{name}")

    def pool_stage(names: Sequence[str], extend: bool) -> dict[str, Any]:
        timed = {name: _TimedTranslator(t) for name, t in plan.run.translators.items() if name in names}
        total = len(plan.run.train.source) * len(timed) + (0 if extend else len(plan.run.train.target))
        with progress_bar(total, "pool", enabled=show) as bar:
            stages.build_pool(plan.run.pool, timed, checkpoints, plan.run.train.source, plan.run.train.target,
                              host, extend=extend, progress=bar)
        return {"pool": str(plan.run.pool), "volumes": len(plan.run.train.source),
                "translate_seconds": {name: round(t.seconds, 2) for name, t in timed.items()}}

    stage("pool", lambda: pool_stage(list(plan.run.translators), extend=False))
    from ..pool import Pool

    in_pool = set(Pool(plan.run.pool).views())
    for name in plan.run.translators:  # translators added to the command since the pool was built
        if name not in in_pool or records.stage_done(plan.run.state, f"pool-{name}"):
            stage(f"pool-{name}", lambda name=name: pool_stage([name], extend=True))
    if plan.paired:
        done = records.stage_done(plan.run.state, "fidelity")
        if done is not None and set(done["methods"]) != {NONE, *plan.run.translators}:
            (plan.run.state / "fidelity.json").unlink()  # other translators than this command's: score again
        stage("fidelity", lambda: fidelity_stage(plan, plan.run.translators, show))

    pending = [r for r in plan.replicates if _pending(plan, r)]
    if options.jobs > 1 and len(pending) > 1:
        _replicates_in_processes(options, pending)
    images = _TestImages(plan)
    for replicate in plan.replicates:  # finished ones (all of them after the processes) are only read back
        stages_done.update(run_replicate(plan, replicate, images, show))

    return write_bench_report(plan, stages_done)


class _TestImages:
    """The test hrT2 of a plan, read once on first use; with ``--ears found`` each is cut to
    its ear region and ``onto`` gives the region and the original, to put predictions back."""

    def __init__(self, plan: BenchPlan) -> None:
        self._plan = plan
        self._images: dict[str, Volume] = {}
        self.onto: dict[str, tuple[Region, Volume]] | None = None

    def __call__(self) -> dict[str, Volume]:
        if not self._images:
            images = {c.case_id: read_image(c.hrT2) for c in self._plan.run.test.target}
            regions = self._plan.run.regions
            if regions is not None:
                self.onto = {c.case_id: (regions[str(c.hrT2)], images[c.case_id]) for c in self._plan.run.test.target}
                images = {case: crop_to_region(image, self.onto[case][0]) for case, image in images.items()}
            self._images.update(images)
        return self._images


def _pending(plan: BenchPlan, replicate: Replicate) -> bool:
    """True when a stage of the replicate is missing or must be redone (the test stages, as
    :func:`run_replicate` decides)."""
    return any(records.reusable_record(plan.run, name, wanted, redo_if_changed=not name.startswith("segment-")) is None
               for name, wanted in row_inputs(plan, replicate).items())


def run_replicate(plan: BenchPlan, replicate: Replicate, test_images: _TestImages,
                  show: bool | None) -> dict[str, dict[str, Any]]:
    """Train (every round), predict and evaluate one replicate, skipping finished stages."""
    from ..evaluation.evaluate import evaluate_folders

    method = replicate.method
    segmenter = plan.segmenters[replicate.key]
    inputs = row_inputs(plan, replicate)
    done: dict[str, dict[str, Any]] = {}

    def segment(round_index: int) -> dict[str, Any]:
        cases = training_cases(plan, method)
        if round_index > 0:
            cases += pseudo_labels(plan, replicate, round_index, show)
        with progress_bar(0, f"segmenter {replicate.key} r{round_index}", enabled=show) as bar:
            segmenter.train(cases, round_index=round_index, progress=bar)
        return {"training_cases": len(cases)}

    for round_index in range(plan.rounds_of(method) + 1):
        name = f"segment-{replicate.key}-r{round_index}"
        done[name] = records.timed(plan.run, name, lambda r=round_index: segment(r), inputs=inputs[name])
    name = f"predict-{replicate.key}"
    done[name] = records.timed(plan.run, name, lambda: _predict(plan, replicate, test_images, show), inputs=inputs[name],
                       redo_if_changed=True)
    name = f"evaluate-{replicate.key}"
    done[name] = records.timed(plan.run, name, lambda: evaluate_folders(plan.method_dir(replicate) / "predictions",
                                                                plan.test_labels).as_dict(),
                       inputs=inputs[name], redo_if_changed=True)
    return done


def _replicates_in_processes(options: BenchOptions, replicates: Sequence[Replicate]) -> None:
    """Run rows (and seeds) side by side, ``options.jobs`` worker processes ("spawn") at a time.

    nnU-Net runs one job per process; each process gets cores / jobs torch threads (the cpu
    profile's nnU-Net uses torch's default), so two rows on two cores use one thread each.
    Workers write the same stage markers as a serial run.
    """
    import concurrent.futures
    import multiprocessing

    workers = min(options.jobs, len(replicates))
    log.info("training %d benchmark rows in %d processes: %s", len(replicates), workers,
             ", ".join(r.key for r in replicates))
    log_files = [Path(h.baseFilename) for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    context = multiprocessing.get_context("spawn")
    # a fresh process per row where Python allows it (3.11+): nnU-Net's state and memory go with it
    fresh = {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, **fresh) as pool:
        futures = {pool.submit(_replicate_worker, options, r.key, log_files[0] if log_files else None): r
                   for r in replicates}
        try:
            for future in concurrent.futures.as_completed(futures):
                future.result()
                log.info("benchmark row %s finished", futures[future].key)
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _replicate_worker(options: BenchOptions, key: str, log_file: Path | None) -> None:
    """Entry point of a worker process: plan again (same options), run one replicate's stages."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "vstk_bench_row", False)]:
        root.removeHandler(handler)  # a reused worker process: the previous row's handler
        handler.close()
    if log_file is not None:
        handler = logging.FileHandler(log_file)
        handler.vstk_bench_row = True  # type: ignore[attr-defined]
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s %(name)s [{key}]: %(message)s"))
        handler.setLevel(logging.INFO)
        root.addHandler(handler)
        root.setLevel(logging.INFO)
    import torch

    # the rows share the cores: a segmenter that uses torch's default threads gets its share
    torch.set_num_threads(max(1, usable_cores() // options.jobs))
    options = dataclasses.replace(options, progress=False)
    plan = plan_bench(options, host_from_environment())
    replicate = next(r for r in plan.replicates if r.key == key)
    run_replicate(plan, replicate, _TestImages(plan), show=False)


def fidelity_stage(plan: BenchPlan, translators: dict[str, Any], show: bool | None) -> dict[str, Any]:
    """Translate every paired ceT1 with every translator; PSNR/SSIM against the true hrT2."""
    from ..evaluation.fidelity import translation_fidelity

    truths, outputs = {}, {NONE: {}}
    seconds = {name: 0.0 for name in translators}
    outputs.update({name: {} for name in translators})
    with progress_bar(len(plan.paired) * len(translators), "fidelity", enabled=show) as bar:
        for i, case in enumerate(plan.paired):
            ce, truth = read_image(case.ceT1), read_image(case.hrT2)
            if plan.run.regions is not None:  # both cut to the region of the ears found on the ceT1
                region = locate_regions({case.case_id: (case.ceT1, ce)}, plan.out / EARS_DIR)[case.case_id]
                ce, truth = crop_to_region(ce, region), crop_to_region(truth, region)
            truths[case.case_id] = truth
            outputs[NONE][case.case_id] = ce
            for j, (name, translator) in enumerate(translators.items()):
                started = time.perf_counter()
                outputs[name][case.case_id] = translator.translate_volume(ce)
                seconds[name] += time.perf_counter() - started
                bar(i * len(translators) + j + 1, len(plan.paired) * len(translators), f"{name} {case.case_id}")
    scores = translation_fidelity(outputs, truths)
    for name in translators:
        scores[name]["translate_seconds_per_volume"] = round(seconds[name] / len(plan.paired), 2)
    return {"methods": scores, "cases": len(plan.paired)}


