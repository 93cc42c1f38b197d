"""What the ``vstk`` commands share: their click options, the plugin host of an invocation,
the default profile, ``--set`` / ``--config`` settings and the per-run log file.

Heavy imports (torch, the plugins) happen only when an option's value is used.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Callable, Iterator

import click

_SCRIPT_HOST = None

#: vstk.phantom.GEOMETRIES and DEFAULT_GEOMETRY, spelt out so that ``vstk --help`` does not
#: import the phantom generator (a test keeps them equal).
PHANTOM_GEOMETRIES = ("slab", "crossmoda")
DEFAULT_PHANTOM_GEOMETRY = "crossmoda"


def plugin_host(ctx: click.Context | None = None):
    """The plugin host of this invocation (loaded once, honouring ``VSTK_DISABLE_PLUGINS``);
    outside a command, one host per process."""
    from .plugins import host_from_environment

    ctx = ctx or click.get_current_context(silent=True)
    if ctx is None:
        global _SCRIPT_HOST
        if _SCRIPT_HOST is None:
            _SCRIPT_HOST = host_from_environment()
        return _SCRIPT_HOST
    root = ctx.find_root()
    if root.meta.get("vstk.host") is None:
        root.meta["vstk.host"] = host_from_environment()
    return root.meta["vstk.host"]


class ProfileName(click.ParamType):
    """A settings profile that an installed translator or segmenter declares (``profiles``),
    so a plugin can add one; checked against the installed plugins when it is used."""

    name = "profile"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        known = plugin_host(ctx).profiles()
        if known and value not in known:
            self.fail(f"{value!r} is not a profile of the installed plugins: use one of {', '.join(known)}",
                      param, ctx)
        return str(value)


def default_profile(profile: str | None, device: str | None) -> str:
    """``profile``, else ``paper`` on a GPU (``--device cuda`` or one found) and ``cpu`` without."""
    if profile:
        return profile
    if device and device.startswith("cuda"):
        return "paper"
    import torch

    return "paper" if torch.cuda.is_available() else "cpu"


translators_option = click.option("--translators", "translators", required=True,
                                  help="Comma-separated translator plugins, e.g. cyclegan,qsattn.")
translator_option = click.option("--translator", "-t", "translator", required=True, help="Translator plugin name.")
profile_option = click.option("--profile", type=ProfileName(), default=None, metavar="NAME",
                              help="Settings profile of every component: cpu, paper, or one a plugin declares "
                                   "[paper with a GPU, else cpu].")
set_option = click.option("--set", "settings", multiple=True, metavar="[NAME.]KEY=VALUE",
                          help="Override a setting: NAME.key=value for one component, key=value for every "
                               "component that has it (repeatable).")
config_option = click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
                             default=None, help='JSON file of settings: {"NAME": {"key": value}} or {"key": value}.')
device_option = click.option("--device", default=None, help="cpu or cuda[:N] [cuda if available].")


def _mm_triple(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, float, float] | None:
    if value is None:
        return None
    try:
        numbers = tuple(float(v) for v in value.split(","))
    except ValueError:
        numbers = ()
    if len(numbers) != 3:
        example = "44,40,34" if param.name == "ear_size" else "27,-6,2"
        raise click.BadParameter(f"{value!r} is not three numbers in mm (x,y,z), e.g. {example}")
    if param.name == "ear_size" and min(numbers) <= 0:
        raise click.BadParameter(f"{value!r}: every size must be positive, e.g. 44,40,34")
    return numbers  # type: ignore[return-value]


def ear_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--ear-offset`` / ``--ear-size``: the boxes around the inner ears (vstk.roi.EarRule)."""
    command = click.option("--ear-size", callback=_mm_triple, default=None, metavar="X,Y,Z",
                           help="Size of each ear box in mm [44,40,34].")(command)
    command = click.option("--ears", type=click.Choice(["rule", "found"]), default=None,
                           help="found: find the inner ears of every image from its content and crop it to the "
                                "region around them first (any field of view: whole-head ceT1, hrT2 slabs); "
                                "rule: the boxes at --ear-offset from the field-of-view centre [found; rule where "
                                "--ear-offset is given or the segmenter trains on whole volumes].")(command)
    return click.option("--ear-offset", callback=_mm_triple, default=None, metavar="X,Y,Z",
                        help="Centre of the right-hand ear box in mm from the field-of-view centre, along the "
                             "image axes; the other ear is mirrored in x [27,-6,2, fitted to the phantom: "
                             "set it for your site's protocol].")(command)


def segment_on_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--segment-on ears|whole``: what the segmenter trains on and predicts."""
    return click.option("--segment-on", type=click.Choice(["ears", "whole"]), default=None,
                        help="ears: the two ear boxes of every image; whole: whole volumes with nnU-Net's own "
                             "preprocessing, as the paper [the profile's: whole for paper, ears for cpu].")(command)


def ear_settings(ear_offset: tuple[float, float, float] | None, ear_size: tuple[float, float, float] | None,
                 ears: str | None = None) -> dict[str, Any]:
    """The ``ear_offset_mm`` / ``ear_size_mm`` / ``ears`` options of a run, the defaults where
    not given: a box offset asks for the rule; otherwise the run chooses (JobOptions.ears)."""
    from .roi import DEFAULT_OFFSET_MM, DEFAULT_SIZE_MM

    if ears is None and ear_offset is not None:
        ears = "rule"
    return {"ear_offset_mm": ear_offset or DEFAULT_OFFSET_MM, "ear_size_mm": ear_size or DEFAULT_SIZE_MM,
            "ears": ears}


def collect_settings(settings: tuple[str, ...], config_file: Path | None = None) -> tuple[tuple[str, str], ...]:
    """``--config`` then ``--set`` (later wins) as ``(("name.key" | "key", value), ...)``."""
    from .config import load_config_file, parse_overrides

    merged: dict[str, Any] = {}
    if config_file is not None:
        for key, value in load_config_file(config_file).items():
            if isinstance(value, dict):
                merged.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                merged[key] = value
    merged.update(parse_overrides(settings))
    return tuple((k, v if isinstance(v, str) else _json_value(v)) for k, v in merged.items())


def _json_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


@contextlib.contextmanager
def log_to_file(path: Path) -> Iterator[None]:
    """Log INFO and above to ``path`` while the block runs (the console keeps WARNING)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)
        for other in root.handlers:
            if other is not handler and other.level == logging.NOTSET:
                other.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain-text table with a header rule (used by several commands)."""
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns).rstrip(),
             "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns).rstrip() for r in rows]
    return "\n".join(lines)
