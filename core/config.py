"""Frozen configuration dataclasses, named profiles, and ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

from .errors import ConfigError

C = TypeVar("C")


def _coerce(text: Any, annotation: Any, field: str) -> Any:
    """Convert a command-line string (or JSON value) to the field's annotated type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if text is None or (isinstance(text, str) and text.lower() in ("none", "null")):
            if type(None) in args:
                return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(text, arg, field)
            except (ConfigError, ValueError, TypeError):
                continue
        raise ConfigError(f"{field}={text!r} is not a valid {annotation}")
    if origin is tuple:
        inner = args[0] if args else str
        raw = str(text)
        if inner in (int, float):  # "0.41x0.41x1.5" reads like "0.41,0.41,1.5"
            raw = raw.replace("x", ",")
        items = text if isinstance(text, (list, tuple)) else [t for t in raw.split(",") if t]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(t, inner, field) for t in items)
        if args and len(items) != len(args):
            raise ConfigError(f"{field} needs {len(args)} values, got {text!r}", fix=f"e.g. {field}=" +
                              ",".join(["1"] * len(args)))
        return tuple(_coerce(t, a, field) for t, a in zip(items, args or [str] * len(items)))
    if annotation is bool:
        if isinstance(text, bool):
            return text
        lowered = str(text).lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{field}={text!r} is not a boolean", fix="use true or false")
    if annotation in (int, float, str):
        try:
            return annotation(text)
        except (TypeError, ValueError):
            raise ConfigError(f"{field}={text!r} is not a valid {annotation.__name__}") from None
    return text


def apply_overrides(config: C, overrides: Mapping[str, Any]) -> C:
    """A copy of the frozen dataclass ``config`` with ``overrides`` (strings are coerced).

    Unknown keys raise :class:`ConfigError` listing the valid ones.
    """
    if not overrides:
        return config
    fields = {f.name: f for f in dataclasses.fields(config)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(type(config))
    changes = {}
    for key, value in overrides.items():
        if key not in fields:
            raise ConfigError(f"unknown setting {key!r} for {type(config).__name__}",
                              fix=f"valid settings: {', '.join(sorted(fields))}")
        changes[key] = _coerce(value, hints[key], key)
    try:
        return dataclasses.replace(config, **changes)  # type: ignore[type-var]
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid settings {dict(overrides)}: {exc}") from None


def select_profile(profiles: Mapping[str, C], name: str, overrides: Mapping[str, Any], *, owner: str) -> C:
    """Profile ``name`` of ``profiles`` with ``overrides``; an unknown name raises ConfigError
    naming ``owner`` (e.g. "translator 'cyclegan'") and the known profiles."""
    if name not in profiles:
        raise ConfigError(f"unknown profile {name!r} for {owner}", fix=f"use one of {', '.join(sorted(profiles))}")
    return apply_overrides(profiles[name], overrides)


def parse_overrides(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``; malformed items raise ConfigError."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"malformed setting {pair!r}", fix="write --set key=value")
        out[key.strip()] = value.strip()
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON config file of ``{"section": {"key": value}}`` or flat ``{"key": value}``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError("config file not found", fix="check the path") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object")
    return data


def to_json_dict(config: Any) -> dict[str, Any]:
    """A JSON-able dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def result_defaults(config: Any) -> dict[str, Any]:
    """The class defaults of a config's result settings (JSON-like; fields without a default
    are left out): what an older version of a component did before a setting existed, as
    long as new settings are added with defaults that keep the old behaviour."""
    defaults = {}
    for field in _result_fields(config):
        if field.default is not dataclasses.MISSING:
            defaults[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            defaults[field.name] = field.default_factory()
    return json.loads(json.dumps(defaults, default=str))


def result_settings(config: Any) -> dict[str, Any]:
    """The settings of a config dataclass that decide what its component produces: every field
    except those its class names in ``execution_fields`` (where and how fast it runs: device,
    threads, worker processes, how often it checkpoints). ``vstk run`` records them with each
    finished stage and refuses a rerun that would change them. A component without a
    dataclass config has no settings to compare."""
    names = {field.name for field in _result_fields(config)}
    return {key: value for key, value in to_json_dict(config).items() if key in names} if names else {}


def _result_fields(config: Any) -> list[dataclasses.Field]:
    """The fields of a config dataclass that are result settings (not ``execution_fields``)."""
    if not dataclasses.is_dataclass(config):
        return []
    skip = set(getattr(type(config), "execution_fields", ()))
    return [field for field in dataclasses.fields(config) if field.name not in skip]

