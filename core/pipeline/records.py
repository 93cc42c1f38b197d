"""Stage records: what each finished (or started) stage of a run was computed from.

``OUT/state/{stage}.json`` marks a finished stage, with its summary and the flat ``inputs``
record it was computed from; ``{stage}.started.json`` marks one that is under way. A rerun
skips a finished stage, redoes a cheap test stage whose inputs changed, and refuses a
training stage of other inputs (:func:`check_inputs`) before anything trains.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from ..atomic import write_json_atomic
from ..config import result_defaults, result_settings
from ..errors import ConfigError

if TYPE_CHECKING:
    from .plan import Plan

log = logging.getLogger(__name__)


def stage_done(state_dir: Path, name: str) -> dict[str, Any] | None:
    """The record of finished stage ``name``, or None."""
    path = state_dir / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def mark_started(state_dir: Path, name: str, inputs: Mapping[str, Any]) -> None:
    """Record what a stage is about to be computed from (``{name}.started.json``), so a rerun
    after a kill can tell whether the half-done work on disk is of the same settings."""
    write_json_atomic(state_dir / f"{name}.started.json", {"inputs": dict(inputs)}, default=str)


def mark_done(state_dir: Path, name: str, info: dict[str, Any]) -> None:
    write_json_atomic(state_dir / f"{name}.json", info, default=str)
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
    """A dataclass instance as plain JSON values (paths and other objects as strings)."""
    return json.loads(json.dumps(dataclasses.asdict(value), default=str))


def case_ids(cases: Iterable[Any]) -> str:
    """A short, stable name of a list of cases: their number and a digest of their ids."""
    ids = sorted(c.case_id for c in cases)
    return f"{len(ids)} cases, ids sha256 {hashlib.sha256(chr(10).join(ids).encode()).hexdigest()[:16]}"


def file_digest(paths: Iterable[Path]) -> str:
    """SHA-256 of the files' names and bytes (the test labels: small, and corrected in place)."""
    digest = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def inputs_digest(inputs: Mapping[str, Any]) -> str:
    """A short name of a stage's inputs (what made a self-training round's pseudo labels)."""
    text = json.dumps(inputs, sort_keys=True, default=str)
    return "vstk run inputs sha256 " + hashlib.sha256(text.encode()).hexdigest()[:16]


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


def setting_defaults(plan: Plan) -> dict[str, Any]:
    """``{"NAME.key": default}`` of every plugin's result settings: a record of an older vstk
    that lacks a setting is read as having it at its default (:func:`changed_inputs`)."""
    return {key: value for name, component in plan.components.items()
            for key, value in named_defaults(name, component).items()}


def check_inputs(plan: Plan, inputs: dict[str, dict[str, Any]]) -> None:
    """Refuse to resume an OUT whose finished (or started) stages were computed from other
    inputs: skipping them would report results of settings the command no longer names."""
    problems = []
    defaults = setting_defaults(plan)
    # a round-0 record of an older vstk also holds the self-training-only settings: not compared
    later = self_training_keys(plan.options.segmenter, plan.segmenter)
    for name, wanted in inputs.items():  # in pipeline order
        record = recorded_inputs(plan.state, name)
        if record is None:
            continue
        recorded, path = record
        recorded = {k: v for k, v in recorded.items() if k in wanted or k not in later}
        changed = changed_inputs(recorded, wanted, defaults)
        if changed:
            problems.append((name, path, changed))
    if problems:
        name, path, changed = problems[0]
        what = "started" if path.name.endswith(".started.json") else "finished"
        others = f" (and in {', '.join(p[0] for p in problems[1:])})" if problems[1:] else ""
        raise ConfigError(f"{plan.out} holds a run of other settings: stage {name} was {what} with "
                          f"{at_most_six(changed)} (recorded -> now){others}",
                          fix=f"give these settings a new --out, or rerun with the recorded ones (in {path})")


def reusable_record(plan: Plan, name: str, inputs: dict[str, Any] | None, *, redo_if_changed: bool,
                    announce: bool = False) -> dict[str, Any] | None:
    """The record of finished stage ``name`` if a rerun may skip it, else None: not finished,
    or (``redo_if_changed``) recorded with other inputs or, by an older vstk, without them."""
    done = stage_done(plan.state, name)
    if done is None or not redo_if_changed or inputs is None:
        return done
    changed = changed_inputs(done.get("inputs", {}), inputs)  # test stages: no plugin settings
    if not changed:
        return done
    if announce:
        log.info("stage %s again: %s (recorded -> now)", name, at_most_six(changed))
    return None


def timed(plan: Plan, name: str, work: Callable[[], dict[str, Any] | None], *, announce_skip: bool = True,
          inputs: dict[str, Any] | None = None, redo_if_changed: bool = False) -> dict[str, Any]:
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
        mark_started(plan.state, name, inputs)
    started = time.perf_counter()
    info = work() or {}
    info["seconds"] = round(time.perf_counter() - started, 1)
    if inputs is not None:
        info["inputs"] = inputs
    mark_done(plan.state, name, info)
    log.info("stage %s done in %.0f s", name, info["seconds"])
    return info
