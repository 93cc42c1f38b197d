"""Hook specifications: the reference for vstk plugin authors.

A plugin is a module (or object) exposed in the ``vstk`` entry-point group whose functions
are marked with :data:`vstk.hookimpl` and named after the specs below. Registration hooks
receive a registry and add classes to it; the work itself (training, translating,
predicting, selecting) is done by methods of those classes, never by broadcast hooks.
Hooks are always called with keyword arguments.

This module imports nothing at run time beyond pluggy, so loading plugins stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from .plugins import Registry

PROJECT = "vstk"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def vstk_register_translators(registry: "Registry") -> None:
    """Add image-to-image translator classes (ceT1 -> hrT2) to ``registry``.

    Call ``registry.add(cls)`` once per class. A class implements the
    :class:`vstk.protocols.Translator` protocol; its ``name`` attribute is the name users
    type (``vstk run --translators NAME``) and must be unique across installed plugins.

    :param registry: the translator registry; raises :class:`vstk.errors.PluginError`
        when the name is already taken, naming both plugins.
    :returns: nothing; the return value is ignored.
    """


@hookspec
def vstk_register_segmenters(registry: "Registry") -> None:
    """Add segmenter classes (e.g. nnU-Net) to ``registry``.

    Call ``registry.add(cls)`` once per class implementing
    :class:`vstk.protocols.Segmenter`; ``cls.name`` is the user-facing name.

    :param registry: the segmenter registry (duplicate names are rejected).
    :returns: nothing; the return value is ignored.
    """


@hookspec
def vstk_register_pseudo_labelers(registry: "Registry") -> None:
    """Add pseudo-labeler classes for self-training to ``registry``.

    Call ``registry.add(cls)`` once per class implementing
    :class:`vstk.protocols.PseudoLabeler`; ``cls.name`` is the user-facing name
    (``vstk run --pseudo-labeler NAME``).

    :param registry: the pseudo-labeler registry (duplicate names are rejected).
    :returns: nothing; the return value is ignored.
    """


@hookspec
def vstk_add_commands(cli: "click.Group") -> None:
    """Add sub-commands to the ``vstk`` command line.

    Called once when the CLI starts a plugin-aware command. Add commands with
    ``cli.add_command(command)``; a name that already exists is ignored with a warning (the
    built-in or first command keeps it).

    :param cli: the top-level click group.
    :returns: nothing; the return value is ignored.
    """


@hookspec
def vstk_pool_entry_written(pool_path: str, view: str, case_id: str, attrs: dict[str, Any]) -> None:
    """Observe a pool entry that has just been written completely.

    For progress reporting, external catalogues or notifications; must not modify the pool.

    :param pool_path: path of the HDF5 pool file.
    :param view: the view (translator name) of the entry.
    :param case_id: the case id of the entry.
    :param attrs: the entry's attributes (geometry and provenance; numbers, strings, JSON).
    :returns: nothing; the return value is ignored.
    """
