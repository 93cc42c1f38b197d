"""Plugin loading and the registries of translators, segmenters and pseudo-labelers.

Plugins come from the ``vstk`` entry-point group (in-tree plugins register there exactly
like third-party ones). Each entry point is loaded on its own: one that fails to import or
to register is recorded with the reason and a fix, and everything else keeps working.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
import logging
import os
from typing import Any, Iterable, Iterator, Mapping

import pluggy

from . import hookspecs
from .errors import PluginError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "vstk"
KINDS = ("translator", "segmenter", "pseudo-labeler")
_REGISTER_HOOKS = {
    "translator": "vstk_register_translators",
    "segmenter": "vstk_register_segmenters",
    "pseudo-labeler": "vstk_register_pseudo_labelers",
}
_KNOWN_HOOKS = tuple(name for name in dir(hookspecs) if name.startswith("vstk_"))


@dataclasses.dataclass(frozen=True)
class PluginInfo:
    """One row of ``vstk plugins``: a registered component, or a plugin that failed."""

    name: str
    kind: str
    plugin: str
    distribution: str
    version: str
    status: str = "ok"

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "kind": self.kind, "plugin": self.plugin,
                "distribution": self.distribution, "version": self.version, "status": self.status}


class Registry:
    """Named classes of one kind (translators, segmenters or pseudo-labelers)."""

    def __init__(self, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown registry kind {kind!r}")
        self.kind = kind
        self._classes: dict[str, type] = {}
        self._owners: dict[str, str] = {}
        self._current_plugin = "<direct>"

    def add(self, cls: type) -> type:
        """Register ``cls`` under ``cls.name``; a name already taken raises PluginError."""
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
            raise PluginError(f"{self.kind} class {cls.__qualname__} has no valid `name` attribute ({name!r})",
                              fix="set a class attribute name = 'lowercase-name'")
        if name in self._classes:
            raise PluginError(
                f"{self.kind} name {name!r} is registered by both plugin {self._owners[name]!r} "
                f"and plugin {self._current_plugin!r}",
                fix=f"uninstall one of them or disable it with VSTK_DISABLE_PLUGINS={self._current_plugin}",
            )
        self._classes[name] = cls
        self._owners[name] = self._current_plugin
        return cls

    def get(self, name: str) -> type:
        """The class registered as ``name``; unknown names raise PluginError with suggestions."""
        try:
            return self._classes[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._classes), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            known = ", ".join(sorted(self._classes)) or "none installed"
            raise PluginError(f"unknown {self.kind} {name!r}",
                              fix=f"{hint}known {self.kind}s: {known}; `vstk plugins` lists them") from None

    def owner(self, name: str) -> str:
        return self._owners[name]

    def names(self) -> list[str]:
        return sorted(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


@dataclasses.dataclass
class _Loaded:
    name: str
    distribution: str
    version: str
    obj: Any = None
    error: str | None = None


class PluginHost:
    """A typed wrapper around the pluggy manager holding vstk's registries.

    Use :func:`load_plugins` for the installed plugins; tests build a host and
    :meth:`register` inline plugin objects.
    """

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.registries = {kind: Registry(kind) for kind in KINDS}
        self._plugins: dict[str, _Loaded] = {}

    # -- loading -------------------------------------------------------------------------
    def register(self, obj: Any, name: str, *, distribution: str = "", version: str = "") -> bool:
        """Register a plugin object and let it fill the registries.

        Returns False (and records the failure) when the plugin implements an unknown
        ``vstk_*`` hook or its registration raises; the other plugins are not affected.
        """
        record = _Loaded(name, distribution, version, obj)
        self._plugins[name] = record
        unknown = [attr for attr in dir(obj) if attr.startswith("vstk_") and attr not in _KNOWN_HOOKS
                   and callable(getattr(obj, attr))]
        if unknown:
            bad = unknown[0]
            close = difflib.get_close_matches(bad, _KNOWN_HOOKS, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            return self._fail(record, f"unknown hook {bad}{hint}")
        try:
            self.pm.register(obj, name=name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            if self.pm.is_registered(obj):
                self.pm.unregister(obj)
            return self._fail(record, f"invalid hook implementation: {exc}")
        snapshots = {kind: dict(reg._classes) for kind, reg in self.registries.items()}
        try:
            for kind, hook_name in _REGISTER_HOOKS.items():
                registry = self.registries[kind]
                for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                    if impl.plugin is obj:
                        registry._current_plugin = name
                        try:
                            impl.function(registry=registry)
                        finally:
                            registry._current_plugin = "<direct>"
        except Exception as exc:  # a plugin's own bug must not take the others down
            for kind, classes in snapshots.items():
                registry = self.registries[kind]
                for added in set(registry._classes) - set(classes):
                    del registry._classes[added]
                    del registry._owners[added]
            self.pm.unregister(obj)
            reason = exc.one_line() if isinstance(exc, PluginError) else f"{type(exc).__name__}: {exc}"
            return self._fail(record, f"registration failed: {reason}")
        return True

    def _fail(self, record: _Loaded, reason: str) -> bool:
        record.error = reason
        record.obj = None
        log.warning("plugin %r disabled: %s", record.name, reason)
        return False

    def load_entry_points(self, *, disabled: Iterable[str] = (),
                          entry_points: Iterable[importlib.metadata.EntryPoint] | None = None) -> None:
        """Load every ``vstk`` entry point one by one, skipping the ``disabled`` names."""
        disabled = {d.strip() for d in disabled if d.strip()}
        if entry_points is None:
            entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        for ep in sorted(entry_points, key=lambda e: e.name):
            if ep.name in disabled or ep.name in self._plugins:
                continue
            dist = getattr(ep, "dist", None)
            dist_name = dist.name if dist is not None else ""
            version = dist.version if dist is not None else ""
            try:
                obj = ep.load()
            except Exception as exc:
                record = _Loaded(ep.name, dist_name, version)
                self._plugins[ep.name] = record
                missing = getattr(exc, "name", None) if isinstance(exc, ImportError) else None
                fix = (f"pip install {missing}" if missing else f"reinstall {dist_name or ep.value}") + \
                      f", or set VSTK_DISABLE_PLUGINS={ep.name}"
                self._fail(record, f"import of {ep.value} failed: {type(exc).__name__}: {exc} (fix: {fix})")
                continue
            self.register(obj, ep.name, distribution=dist_name, version=version)

    # -- queries ------------------------------------------------------------------------
    def registry(self, kind: str) -> Registry:
        return self.registries[kind]

    def get(self, kind: str, name: str) -> type:
        """Class of ``kind`` named ``name``; if it is unknown because a plugin failed, say so."""
        registry = self.registries[kind]
        if name in registry:
            return registry.get(name)
        failed = [p for p in self._plugins.values() if p.error and p.name == name]
        if failed:
            raise PluginError(f"{kind} {name!r} is unavailable: plugin {name!r} {failed[0].error}")
        return registry.get(name)

    def failures(self) -> list[tuple[str, str]]:
        return [(p.name, p.error) for p in self._plugins.values() if p.error]

    def infos(self) -> list[PluginInfo]:
        """Rows for ``vstk plugins``: every registered class, then every failed plugin."""
        rows = []
        for kind, registry in self.registries.items():
            for name in registry.names():
                plugin = self._plugins.get(registry.owner(name))
                rows.append(PluginInfo(name, kind, registry.owner(name),
                                       plugin.distribution if plugin else "",
                                       plugin.version if plugin else ""))
        for plugin in self._plugins.values():
            if plugin.error:
                rows.append(PluginInfo(plugin.name, "plugin", plugin.name, plugin.distribution,
                                       plugin.version, f"failed: {plugin.error}"))
        return rows

    def call_add_commands(self, cli: Any) -> None:
        for impl in self.pm.hook.vstk_add_commands.get_hookimpls():
            impl.function(cli=cli)

    def profiles(self) -> list[str]:
        """Every profile name a registered translator or segmenter declares (its ``profiles``)."""
        names: set[str] = set()
        for kind in ("translator", "segmenter"):
            registry = self.registry(kind)
            for name in registry.names():
                names.update(getattr(registry.get(name), "profiles", None) or ())
        return sorted(names)

    def notify_pool_entry(self, **kwargs: Any) -> None:
        self.pm.hook.vstk_pool_entry_written(**kwargs)


def parse_disabled(value: str | None) -> list[str]:
    """Names from a ``VSTK_DISABLE_PLUGINS`` style value: ``"a,b"``."""
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def load_plugins(disabled: Iterable[str] = ()) -> PluginHost:
    """A host with every installed plugin loaded, except the ``disabled`` ones."""
    host = PluginHost()
    host.load_entry_points(disabled=disabled)
    return host



def host_from_environment(environ: Mapping[str, str] | None = None) -> PluginHost:
    """A host with every installed plugin loaded, except those ``VSTK_DISABLE_PLUGINS``
    names in ``environ`` (default: this process's environment); what the command line and
    its worker processes use."""
    environ = os.environ if environ is None else environ
    return load_plugins(parse_disabled(environ.get("VSTK_DISABLE_PLUGINS")))
