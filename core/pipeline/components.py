"""Resolving plugin names and ``--set`` overrides into configured components."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from ..config import apply_overrides
from ..errors import ConfigError
from ..plugins import PluginHost


def split_settings(settings: Mapping[str, str], components: Mapping[str, type]) -> dict[str, dict[str, str]]:
    """Route ``--set`` items to components.

    ``name.key=value`` goes to the component called ``name``; a bare ``key=value`` goes to
    every component whose config has ``key`` (an error when none has it).
    """
    routed: dict[str, dict[str, str]] = {name: {} for name in components}
    for key, value in settings.items():
        if "." in key:
            name, _, field = key.partition(".")
            if name not in components:
                raise ConfigError(f"--set {key}: no component named {name!r} in this run",
                                  fix=f"use one of {', '.join(components)}")
            routed[name][field] = value
            continue
        owners = [n for n, cls in components.items()
                  if key in {f.name for f in dataclasses.fields(cls.config_class)}]
        if not owners:
            raise ConfigError(f"--set {key}: no component of this run has a setting {key!r}",
                              fix="check the name; `--set NAME.key=value` targets one component")
        for name in owners:
            routed[name][key] = value
    return routed


def route_default(routed: dict[str, dict[str, str]], components: Mapping[str, type], key: str,
                  value: str | None) -> None:
    """Give a run-wide option (``--device``, ``--ear-offset``) to every component whose config
    has ``key``, unless ``--set`` already chose a value for it."""
    if value is None:
        return
    for name, cls in components.items():
        config_class = getattr(cls, "config_class", None)
        if (config_class is not None and dataclasses.is_dataclass(config_class)
                and key in {f.name for f in dataclasses.fields(config_class)}):
            routed[name].setdefault(key, value)


def configure(cls: type, profile: str, overrides: Mapping[str, Any]) -> Any:
    """The config of plugin class ``cls``: its profile (or defaults) with ``overrides``."""
    profiles = getattr(cls, "profiles", None)
    if hasattr(cls, "profile"):
        try:
            base = cls.profile(profile)
        except ConfigError:
            if profiles and profile not in profiles:
                raise
            base = cls.config_class()
    else:
        base = cls.config_class()
    return apply_overrides(base, dict(overrides))


def plugin_provenance(host: PluginHost, kind: str, name: str) -> tuple[str, str]:
    """(distribution, version) of the plugin that registered ``name``."""
    owner = host.registry(kind).owner(name)
    for info in host.infos():
        if info.kind == kind and info.name == name and info.plugin == owner:
            return info.distribution or owner, info.version or "unknown"
    return owner, "unknown"
