"""The stages of the main job as plain functions of explicit inputs: train the translators,
build the pool, cut ear crops for the segmenter, predict whole images, store pseudo labels.

:mod:`vstk.pipeline.run` and :mod:`vstk.pipeline.bench` chain them (with stage records,
:mod:`vstk.pipeline.records`); ``vstk pool build`` uses the first two alone."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ..config import result_settings, to_json_dict
from ..crossmoda import CaseFiles, load_case, read_image
from ..errors import ConfigError, InputError
from ..plugins import PluginHost
from ..progress import progress_bar
from ..protocols import Prediction, ProgressFn, TrainingCase
from ..resources import usable_cores
from ..roi import Box, EarRule, crop, ear_boxes, labels_outside, paste, paste_probabilities
from ..volume import Volume
from ..components import plugin_provenance
from .records import changed_inputs, mark_done, mark_started, stage_done, timed

if TYPE_CHECKING:
    from .plan import Plan

log = logging.getLogger(__name__)


def train_translator(translator: Any, sources: Sequence[Volume], targets: Sequence[Volume], workdir: Path,
                     progress: ProgressFn | None = None, *, same_settings: bool = False) -> Path:
    """Train (or resume, or just load) one translator; returns its final checkpoint.

    A final checkpoint already in ``workdir`` (e.g. trained by ``vstk translate train``) is
    loaded with the settings it was trained with. With ``same_settings`` (``vstk run`` and
    ``vstk bench``, which record the command's settings as the ones that made their results)
    it is refused when those differ from the translator's result settings."""
    final = workdir / "translator.pt"
    if final.exists():
        wanted = result_settings(translator.config)
        translator.load(final)  # takes the settings the checkpoint was trained with
        if not same_settings:
            return final
        trained = result_settings(translator.config)
        changed = changed_inputs({k: v for k, v in trained.items() if k in wanted}, wanted)
        if changed:
            raise ConfigError(f"it was trained with other settings: {'; '.join(changed)} (checkpoint -> now)",
                              path=final, fix="name the settings it was trained with, or move it away to train "
                                              "anew")
        return final
    return translator.train(sources, targets, workdir, progress=progress)


def train_translators(translators: Mapping[str, Any], work: Path, source_cases: Sequence[CaseFiles],
                      target_cases: Sequence[CaseFiles], *, show: bool | None = None, plan: Plan | None = None,
                      inputs: Mapping[str, dict[str, Any]] | None = None) -> dict[str, Path]:
    """Train (or resume, or load) every translator in ``work/NAME``; return their checkpoints.

    Every translator is loaded when this returns, ready to translate. The training volumes
    are read only when a translator still has to train. With ``plan`` (``vstk run``, ``vstk
    bench``) each translator is the recorded stage ``translator-NAME`` computed from
    ``inputs["translator-NAME"]``, a checkpoint of other settings is refused, and on a
    multi-core CPU the unfinished ones train side by side (:func:`train_side_by_side`).
    Without it (``vstk pool build``) a checkpoint found is loaded with its own settings.
    """
    volumes: dict[str, list[Volume]] = {}

    def training_volumes() -> tuple[list[Volume], list[Volume]]:
        if not volumes:
            volumes["sources"] = [read_image(c.ceT1) for c in source_cases]
            volumes["targets"] = [read_image(c.hrT2) for c in target_cases]
        return volumes["sources"], volumes["targets"]

    side_by_side: set[str] = set()
    if plan is not None:
        side_by_side = train_side_by_side(plan, translators, work, source_cases, target_cases, show,
                                          inputs or {})
    checkpoints: dict[str, Path] = {}
    loaded: set[str] = set()
    for name, translator in translators.items():
        workdir = work / name
        checkpoints[name] = workdir / "translator.pt"

        def train_one(name: str = name, translator: Any = translator, workdir: Path = workdir) -> dict[str, Any]:
            sources, targets = training_volumes() if not (workdir / "translator.pt").exists() else ([], [])
            with progress_bar(0, f"train {name}", enabled=show) as bar:
                path = train_translator(translator, sources, targets, workdir, progress=bar,
                                        same_settings=plan is not None)
            loaded.add(name)
            return {"checkpoint": str(path)}

        if plan is None:
            if not checkpoints[name].exists():
                log.info("no checkpoint for %s in %s: training it", name, workdir)
            train_one()
        else:
            timed(plan, f"translator-{name}", train_one, inputs=(inputs or {}).get(f"translator-{name}"),
                  announce_skip=name not in side_by_side)
        if name not in loaded:  # trained in another process, or in an earlier run
            translator.load(checkpoints[name])
    return checkpoints


def train_side_by_side(plan: Plan, translators: Mapping[str, Any], work: Path, source_cases: Sequence[CaseFiles],
                       target_cases: Sequence[CaseFiles], show: bool | None,
                       inputs: Mapping[str, dict[str, Any]]) -> set[str]:
    """On a multi-core CPU, train every unfinished translator at once, one process each
    (see :mod:`vstk.pipeline.parallel`), recording each as stage ``translator-NAME``; on a
    GPU, or for one translator, nothing happens here (they train in turn in this process).
    Returns the names trained here."""
    from ..translation.base import pick_device
    from .parallel import TranslatorJob, train_in_parallel

    todo = [name for name in translators
            if stage_done(plan.state, f"translator-{name}") is None and not (work / name / "translator.pt").exists()]
    if len(todo) < 2 or usable_cores() < 2 or pick_device(plan.options.device) != "cpu":
        return set()
    sources = tuple(c.ceT1 for c in source_cases)
    targets = tuple(c.hrT2 for c in target_cases)
    jobs = [TranslatorJob(name, type(translators[name]), translators[name].config, plan.options.device,
                          sources, targets, work / name) for name in todo]
    for name in todo:
        mark_started(plan.state, f"translator-{name}", inputs[f"translator-{name}"])
    with progress_bar(0, "train " + "+".join(todo), enabled=show) as bar:
        results = train_in_parallel(jobs, progress=bar)
    for name, (path, seconds) in results.items():
        mark_done(plan.state, f"translator-{name}",
                  {"checkpoint": str(path), "seconds": round(seconds, 1), "processes": len(jobs),
                   "inputs": inputs[f"translator-{name}"]})
        log.info("stage translator-%s done in %.0f s (side by side)", name, seconds)
    return set(results)


def build_pool(pool_path: Path, translators: Mapping[str, Any], checkpoints: Mapping[str, Path],
               source_cases: Sequence[CaseFiles], target_cases: Sequence[CaseFiles], host: PluginHost,
               *, extend: bool = False, progress: ProgressFn | None = None, shard: Any = None,
               ears: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Translate every labelled ceT1 with every translator into the pool (resumable).

    Labels are stored once; real hrT2 images go to the target group. With ``extend`` the
    translators are added as new views to an existing pool (``vstk pool add-view``). With
    ``shard`` (a :class:`vstk.pool.shard.ShardSpec`) only that shard's share of the view
    entries and targets is written, to a shard file for ``vstk pool merge``; ``checkpoints``
    then needs only the translators of that share. ``ears`` (``vstk run --ears found``): the
    ears found on each labelled ceT1 by case id, kept with its views' provenance
    (``ears_found``, as :meth:`vstk.ears.Ears.as_dict`).
    """
    from ..pool import PoolBuilder
    from ..pool.schema import ATTR_SHARD
    from ..pool.shard import ShardPlan
    from ..translation.checkpoint import file_sha256
    from ..translation.structures import grey_tumour

    root_attrs = None
    units = None
    if shard is not None:
        plan = ShardPlan.of(translators, [c.case_id for c in source_cases], [c.case_id for c in target_cases])
        share = plan.share(shard)
        units = set(share.views)
        source_cases = [c for c in source_cases if c.case_id in share.labels]
        target_cases = [c for c in target_cases if c.case_id in share.targets]
        translators = {name: t for name, t in translators.items() if any(v == name for v, _ in units)}
        root_attrs = {ATTR_SHARD: plan.attribute(shard)}
    provenance = {}
    for name, translator in translators.items():
        distribution, version = plugin_provenance(host, "translator", name)
        provenance[name] = {
            "translator": name, "plugin_distribution": distribution, "plugin_version": version,
            "checkpoint_sha256": file_sha256(checkpoints[name]),
            "translator_config": to_json_dict(translator.config), "seed": int(translator.config.seed),
        }
    builder = (PoolBuilder.extend(pool_path, on_entry_written=host.notify_pool_entry) if extend else
               PoolBuilder(pool_path, on_entry_written=host.notify_pool_entry, root_attrs=root_attrs))
    with builder:
        if extend:
            for name in translators:
                builder.check_view_is_new(name)
        total = (len(units) if units is not None else len(source_cases) * len(translators)) + (
            0 if extend else len(target_cases))
        done = 0
        for case in source_cases:
            image = label = greyed = None
            if not extend and not builder.has_label(case.case_id):
                image, label = load_case(case, "ceT1")
                builder.add_label(case.case_id, label)
            for name, translator in translators.items():
                if units is not None and (name, case.case_id) not in units:
                    continue
                if not builder.has(name, case.case_id):
                    if image is None:
                        image, label = load_case(case, "ceT1")
                    found = {} if ears is None or case.case_id not in ears else {"ears_found": dict(ears[case.case_id])}
                    source = image
                    if getattr(translator.config, "grey_tumour", False):
                        greyed = grey_tumour(image, label) if greyed is None else greyed  # once per case
                        source = greyed
                    builder.add_view(name, case.case_id, translator.translate_volume(source),
                                     {**provenance[name], **found})
                done += 1
                if progress:
                    progress(done, total, f"{name} {case.case_id}")
        if not extend:
            for case in target_cases:
                if not builder.has_target(case.case_id):
                    builder.add_target(case.case_id, read_image(case.hrT2))
                done += 1
                if progress:
                    progress(done, total, f"hrT2 {case.case_id}")
        return builder.finalize()


EAR_SIDES = ("R", "L")  # box order of EarRule.centres: -x first (patient right in LPS)


def ear_crops(image: Volume, label: Volume | None, rule: EarRule,
              case_id: str) -> list[tuple[str, Box, Volume, Volume | None]]:
    """(case id with side, box, image crop, label crop) for both ears; image padding is the
    image's 1st intensity percentile (its background).

    A label with voxels outside both boxes raises :class:`InputError`: a crop never drops a
    label without a word (the run checks its inputs before training; this holds for every
    other caller too).
    """
    boxes = ear_boxes(image, rule)
    if label is not None:
        outside = labels_outside(label, boxes)
        if outside:
            raise InputError(f"training case {case_id}: " + "; ".join(o.describe() for o in outside),
                fix="move or widen the boxes (--ear-offset / --ear-size) so that they hold every label")
    fill = float(np.percentile(image.array, 1.0))
    return [(f"{case_id}__{side}", box, crop(image, box, fill=fill), None if label is None else crop(label, box, fill=0))
            for side, box in zip(EAR_SIDES, boxes)]


def segmenter_parts(image: Volume, label: Volume | None, rule: EarRule | None,
                    case_id: str) -> list[tuple[str, Box | None, Volume, Volume | None]]:
    """What the segmenter sees of one image: its two ear crops (:func:`ear_crops`), or with
    ``rule`` None the whole volume as ``(case_id, None, image, label)``."""
    if rule is None:
        return [(case_id, None, image, label)]
    return list(ear_crops(image, label, rule, case_id))


def pool_training_cases(pool_path: Path, rule: EarRule | None, *, pseudo_round: int | None = None,
                        views: Sequence[str] | None = None) -> list[TrainingCase]:
    """Ear crops (with ``rule`` None: whole volumes) of every view entry (with its ceT1 label)
    and, from ``pseudo_round``, of every pseudo-labelled real hrT2: the segmenter's training set."""
    from ..pool import Pool

    pool = Pool(pool_path)
    cases = []
    for view in views or pool.views():
        for case in pool.cases(view):
            image, label = pool.read(view, case)
            for cid, _, image_crop, label_crop in segmenter_parts(image, label, rule, f"{view}__{case}"):
                cases.append(TrainingCase(cid, image_crop, label_crop))
    if pseudo_round is not None:
        for case in pool.pseudo_labels(pseudo_round):
            image = pool.read_target(case)
            label, _ = pool.read_pseudo_label(pseudo_round, case)
            for cid, _, image_crop, label_crop in segmenter_parts(image, label, rule,
                                                                  f"pseudo_r{pseudo_round}__{case}"):
                cases.append(TrainingCase(cid, image_crop, label_crop, pseudo_labelled=True))
    return cases


def predict_full(segmenter: Any, images: Mapping[str, Volume], rule: EarRule | None, *, round_index: int,
                 progress: ProgressFn | None = None) -> list[Prediction]:
    """Predict both ear crops of each image and paste them onto the image's own grid (outside
    the ear boxes the label is background with probability 1); with ``rule`` None, predict
    each whole image."""
    if rule is None:
        return list(segmenter.predict(dict(images), round_index=round_index, progress=progress))
    crops = {case_id: ear_crops(image, None, rule, case_id) for case_id, image in images.items()}
    inputs = {key: part for parts in crops.values() for key, _, part, _ in parts}
    predictions = {p.case_id: p for p in segmenter.predict(inputs, round_index=round_index, progress=progress)}
    out = []
    for case_id, image in images.items():
        label = np.zeros(image.shape, dtype=np.uint8)
        probabilities = None
        for key, box, _, _ in crops[case_id]:
            prediction = predictions[key]
            paste(prediction.label.array.astype(np.uint8), box, image.shape, into=label)
            if prediction.probabilities is not None:
                probabilities = paste_probabilities(prediction.probabilities, box, image.shape, into=probabilities)
        out.append(Prediction(case_id, image.with_array(label), probabilities))
    return out


def store_pseudo_labels(pool_path: Path, round_index: int, pseudo: Sequence[Any], made_by: str) -> None:
    """Add a self-training round's pseudo labels (with confidence) to the pool.

    ``made_by`` names the model and settings that produced them. A round already in the pool
    (a resumed run) is kept only when it was made by the same; pseudo labels of another run
    (a pool copied after its self-training) are refused rather than trained on."""
    from ..pool import Pool, PoolBuilder

    pool = Pool(pool_path)
    if round_index in pool.rounds():
        makers = set(pool.pseudo_labels_made_by(round_index).values())
        if makers != {made_by}:
            raise ConfigError(f"the pool already holds round-{round_index} pseudo labels made by "
                              f"{', '.join(sorted(m or 'an unrecorded run' for m in makers))}, not by this run's round "
                              f"{round_index - 1} ({made_by}): a pool copied from a run after its self-training?",
                              path=pool_path, fix="copy the pool of a run before self-training, or delete it and "
                                                  "its state/pool.json to build it again")
        return
    with PoolBuilder.extend(pool_path) as builder:
        for item in pseudo:
            builder.add_pseudo_label(round_index, item.case_id, item.label, float(item.confidence), made_by=made_by)
        builder.finalize()
