"""Resolving plugin names and ``--set`` overrides into configured components.

One resolver for every command that composes plugins (``vstk run``, ``bench``, ``predict``,
``pool build`` / ``add-view`` and ``translate``): :func:`resolve_classes` looks the names up
(an unknown one fails with the plugin host's suggestions), :func:`build_components` gives
each class its profile with the settings routed to it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

from .config import apply_overrides
from .errors import ConfigError
from .plugins import PluginHost

KINDS = ("translator", "segmenter", "pseudo-labeler")


@dataclasses.dataclass(frozen=True)
class Components:
    """Configured plugin instances: translators by name, and the segmenter and pseudo-labeler
    where they were asked for (else None)."""

    translators: dict[str, Any]
    segmenter: Any = None
    pseudo_labeler: Any = None


def resolve_classes(host: PluginHost, *, translators: Sequence[str] = (), segmenter: str | None = None,
                    pseudo_labeler: str | None = None,
                    settings: Mapping[str, Any] | None = None) -> dict[str, dict[str, type]]:
    """The plugin classes named, by kind (``translator``, ``segmenter``, ``pseudo-labeler``)
    and name. With ``settings``, every ``--set`` key must reach one of them (checked here, so
    a misspelt key fails before any data is read or generated)."""
    classes: dict[str, dict[str, type]] = {kind: {} for kind in KINDS}
    classes["translator"] = {name: host.get("translator", name) for name in translators}
    if segmenter is not None:
        classes["segmenter"][segmenter] = host.get("segmenter", segmenter)
    if pseudo_labeler is not None:
        classes["pseudo-labeler"][pseudo_labeler] = host.get("pseudo-labeler", pseudo_labeler)
    if settings:
        split_settings(settings, flatten(classes))
    return classes


def flatten(classes: Mapping[str, Mapping[str, type]]) -> dict[str, type]:
    """``{name: class}`` over every kind."""
    return {name: cls for kind in classes.values() for name, cls in kind.items()}


def build_components(classes: Mapping[str, Mapping[str, type]], profile: str, settings: Mapping[str, Any], *,
                     device: str | None = None, run_wide: Mapping[str, str | None] | None = None,
                     segmenter_workdir: Path | None = None) -> Components:
    """Instances of ``classes`` (from :func:`resolve_classes`): each class's ``profile`` with
    the ``settings`` routed to it (:func:`split_settings`) and the ``run_wide`` values for
    every component whose config has the key and no ``--set`` value for it
    (:func:`route_default`). Translators get ``device``; the segmenter its work folder."""
    every = flatten(classes)
    routed = split_settings(settings, every)
    for key, value in (run_wide or {}).items():
        route_default(routed, every, key, value)
    translators = {name: cls(configure(cls, profile, routed[name]), device=device)
                   for name, cls in classes.get("translator", {}).items()}
    segmenter = labeler = None
    for name, cls in classes.get("segmenter", {}).items():
        if segmenter_workdir is None:
            raise ConfigError(f"the segmenter {name!r} needs a work folder")
        segmenter = cls(configure(cls, profile, routed[name]), segmenter_workdir)
    for name, cls in classes.get("pseudo-labeler", {}).items():
        labeler = cls(configure(cls, profile, routed[name]))
    return Components(translators, segmenter, labeler)


def configured_translators(host: PluginHost, names: Sequence[str], profile: str, settings: Mapping[str, Any], *,
                           device: str | None = None) -> dict[str, Any]:
    """Translators alone (``vstk translate``, ``vstk pool build``): each named plugin with
    ``profile`` and the ``--set`` settings routed to it."""
    classes = resolve_classes(host, translators=names, settings=settings)
    return build_components(classes, profile, settings, device=device).translators


def split_settings(settings: Mapping[str, Any], components: Mapping[str, type]) -> dict[str, dict[str, Any]]:
    """Route ``--set`` items to components.

    ``name.key=value`` goes to the component called ``name``; a bare ``key=value`` goes to
    every component whose config has ``key`` (an error when none has it).
    """
    routed: dict[str, dict[str, Any]] = {name: {} for name in components}
    for key, value in settings.items():
        if "." in key:
            name, _, field = key.partition(".")
            if name not in components:
                raise ConfigError(f"--set {key}: no component named {name!r} in this run",
                                  fix=f"use one of {', '.join(components)}")
            routed[name][field] = value
            continue
        owners = [n for n, cls in components.items() if key in _config_fields(cls)]
        if not owners:
            raise ConfigError(f"--set {key}: no component of this run has a setting {key!r}",
                              fix="check the name; `--set NAME.key=value` targets one component")
        for name in owners:
            routed[name][key] = value
    return routed


def _config_fields(cls: type) -> set[str]:
    config_class = getattr(cls, "config_class", None)
    if config_class is None or not dataclasses.is_dataclass(config_class):
        return set()
    return {f.name for f in dataclasses.fields(config_class)}


def route_default(routed: dict[str, dict[str, Any]], components: Mapping[str, type], key: str,
                  value: str | None) -> None:
    """Give a run-wide option (``--device``, ``--ear-offset``) to every component whose config
    has ``key``, unless ``--set`` already chose a value for it."""
    if value is None:
        return
    for name, cls in components.items():
        if key in _config_fields(cls):
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
