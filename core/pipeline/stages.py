"""The stages of the main job as plain functions."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..config import result_defaults, result_settings, to_json_dict
from ..crossmoda import CaseFiles, load_case, read_image
from ..errors import ConfigError
from ..plugins import PluginHost
from ..protocols import Prediction, ProgressFn, TrainingCase
from ..roi import Box, EarRule, crop, ear_boxes, paste
from ..volume import Volume
from .components import plugin_provenance

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


def build_pool(pool_path: Path, translators: Mapping[str, Any], checkpoints: Mapping[str, Path],
               source_cases: Sequence[CaseFiles], target_cases: Sequence[CaseFiles], host: PluginHost,
               *, extend: bool = False, progress: ProgressFn | None = None, shard: Any = None) -> Path:
    """Translate every labelled ceT1 with every translator into the pool (resumable).

    Labels are stored once; real hrT2 images go to the target group. With ``extend`` the
    translators are added as new views to an existing pool (``vstk pool add-view``). With
    ``shard`` (a :class:`vstk.pool.shard.ShardSpec`) only that shard's share of the view
    entries and targets is written, to a shard file for ``vstk pool merge``; ``checkpoints``
    then needs only the translators of that share.
    """
    from ..pool import PoolBuilder
    from ..pool.schema import ATTR_SHARD
    from ..pool.shard import ShardPlan
    from ..translation.checkpoint import file_sha256

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
            image = label = None
            if not extend and not builder.has_label(case.case_id):
                image, label = load_case(case, "ceT1")
                builder.add_label(case.case_id, label)
            for name, translator in translators.items():
                if units is not None and (name, case.case_id) not in units:
                    continue
                if not builder.has(name, case.case_id):
                    if image is None:
                        image, label = load_case(case, "ceT1")
                    builder.add_view(name, case.case_id, translator.translate_volume(image), provenance[name])
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
    image's 1st intensity percentile (its background)."""
    fill = float(np.percentile(image.array, 1.0))
    return [(f"{case_id}__{side}", box, crop(image, box, fill=fill), None if label is None else crop(label, box, fill=0))
            for side, box in zip(EAR_SIDES, ear_boxes(image, rule))]


def pool_training_cases(pool_path: Path, rule: EarRule, *, pseudo_round: int | None = None,
                        views: Sequence[str] | None = None) -> list[TrainingCase]:
    """Ear crops of every view entry (with its ceT1 label) and, from ``pseudo_round``, of every
    pseudo-labelled real hrT2: the segmenter's training set."""
    from ..pool import Pool

    pool = Pool(pool_path)
    cases = []
    for view in views or pool.views():
        for case in pool.cases(view):
            image, label = pool.read(view, case)
            for cid, _, image_crop, label_crop in ear_crops(image, label, rule, f"{view}__{case}"):
                cases.append(TrainingCase(cid, image_crop, label_crop))
    if pseudo_round is not None:
        for case in pool.pseudo_labels(pseudo_round):
            image = pool.read_target(case)
            label, _ = pool.read_pseudo_label(pseudo_round, case)
            for cid, _, image_crop, label_crop in ear_crops(image, label, rule, f"pseudo_r{pseudo_round}__{case}"):
                cases.append(TrainingCase(cid, image_crop, label_crop, pseudo_labelled=True))
    return cases


def predict_full(segmenter: Any, images: Mapping[str, Volume], rule: EarRule, *, round_index: int,
                 progress: ProgressFn | None = None) -> list[Prediction]:
    """Predict both ear crops of each image and paste them onto the image's own grid.

    Outside the ear boxes the label is background with probability 1.
    """
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
                if probabilities is None:
                    classes = prediction.probabilities.shape[0]
                    probabilities = np.zeros((classes, *image.shape), dtype=np.float32)
                    probabilities[0] = 1.0
                for c in range(probabilities.shape[0]):
                    paste(prediction.probabilities[c].astype(np.float32), box, image.shape, into=probabilities[c])
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


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def stage_done(state_dir: Path, name: str) -> dict[str, Any] | None:
    path = state_dir / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def mark_started(state_dir: Path, name: str, inputs: Mapping[str, Any]) -> None:
    """Record what a stage is about to be computed from (``{name}.started.json``), so a rerun
    after a kill can tell whether the half-done work on disk is of the same settings."""
    write_json_atomic(state_dir / f"{name}.started.json", {"inputs": dict(inputs)})


def mark_done(state_dir: Path, name: str, info: dict[str, Any]) -> None:
    write_json_atomic(state_dir / f"{name}.json", info)
    (state_dir / f"{name}.started.json").unlink(missing_ok=True)


def recorded_inputs(state_dir: Path, name: str) -> tuple[dict[str, Any], Path] | None:
    """The inputs a stage was computed (or started) from, and the record that says so; None
    when there is no record, or an older one that kept no inputs."""
    for path in (state_dir / f"{name}.json", state_dir / f"{name}.started.json"):
        if path.exists():
            inputs = json.loads(path.read_text()).get("inputs")
            if inputs is not None:
                return inputs, path
    return None


def changed_inputs(recorded: Mapping[str, Any], wanted: Mapping[str, Any],
                   defaults: Mapping[str, Any] | None = None) -> list[str]:
    """``key: recorded -> wanted`` for every input that differs (both flat, JSON-like).

    A setting the record lacks counts as unchanged when it is wanted at its default in
    ``defaults`` (``{key: default}``, see :func:`named_defaults`): the record was written by
    a vstk without that setting, which did what its default does."""
    wanted = json.loads(json.dumps(dict(wanted), default=str))
    defaults = defaults or {}
    missing = "(not set)"

    def same(key: str) -> bool:
        if key not in recorded and key in wanted and key in defaults:
            return wanted[key] == defaults[key]
        return recorded.get(key, missing) == wanted.get(key, missing)

    return [f"{key}: {json.dumps(recorded.get(key, missing))} -> {json.dumps(wanted.get(key, missing))}"
            for key in sorted(set(recorded) | set(wanted)) if not same(key)]


def dataclass_dict(value: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(value), default=str))


def case_ids(cases) -> str:
    """A short, stable name of a list of cases: their number and a digest of their ids."""
    ids = sorted(c.case_id for c in cases)
    return f"{len(ids)} cases, ids sha256 {hashlib.sha256(chr(10).join(ids).encode()).hexdigest()[:16]}"


def file_digest(paths) -> str:
    """SHA-256 of the files' names and bytes (the test labels: small, and corrected in place)."""
    digest = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def at_most_six(changed: list[str]) -> str:
    """Changed settings for one line: another --profile changes dozens, the rest are counted."""
    return "; ".join(changed[:6] + ([f"{len(changed) - 6} more"] if len(changed) > 6 else []))


def named_settings(name: str, component: Any) -> dict[str, Any]:
    """A component's result settings as flat stage inputs, ``{"NAME.key": value}``."""
    return {f"{name}.{key}": value for key, value in result_settings(getattr(component, "config", None)).items()}


def self_training_keys(name: str, component: Any) -> set[str]:
    """``{"NAME.key"}`` of the settings that change only the self-training rounds: the fields
    the component's config class names in ``self_training_fields``."""
    return {f"{name}.{key}" for key in getattr(type(getattr(component, "config", None)), "self_training_fields", ())}


def first_round_settings(settings: Mapping[str, Any], name: str, component: Any) -> dict[str, Any]:
    """``settings`` without the segmenter's self-training-only settings: what a round-0 stage
    is computed from."""
    later = self_training_keys(name, component)
    return {key: value for key, value in settings.items() if key not in later}


def named_defaults(name: str, component: Any) -> dict[str, Any]:
    """The class defaults of those settings, ``{"NAME.key": default}`` (see :func:`changed_inputs`)."""
    return {f"{name}.{key}": value for key, value in result_defaults(getattr(component, "config", None)).items()}
