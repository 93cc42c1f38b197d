from __future__ import annotations

import importlib.metadata
import inspect
import json
import os
import subprocess
import sys
import textwrap

import pytest

import vstk
from vstk import hookspecs
from vstk.errors import PluginError
from vstk.plugins import PluginHost, load_plugins


class Tiny:
    name = "tiny"


class TinyPlugin:
    @vstk.hookimpl
    def vstk_register_translators(self, registry):
        registry.add(Tiny)


def test_inline_plugin_registers_a_translator():
    host = PluginHost()
    assert host.register(TinyPlugin(), "tinyplugin", distribution="tests", version="1.0")
    assert host.get("translator", "tiny") is Tiny
    row = [i for i in host.infos() if i.name == "tiny"][0]
    assert (row.kind, row.plugin, row.distribution, row.status) == ("translator", "tinyplugin", "tests", "ok")


def test_duplicate_name_names_both_plugins():
    host = PluginHost()
    host.register(TinyPlugin(), "first")
    assert not host.register(TinyPlugin(), "second")
    [(name, reason)] = host.failures()
    assert name == "second"
    assert "'tiny' is registered by both plugin 'first' and plugin 'second'" in reason
    assert host.get("translator", "tiny") is Tiny  # the first one keeps working


def test_registry_add_raises_on_duplicates_directly():
    host = PluginHost()
    registry = host.registry("translator")
    registry.add(Tiny)
    with pytest.raises(PluginError, match="registered by both"):
        registry.add(Tiny)


def test_misspelled_hook_fails_loudly_with_a_suggestion():
    class Misspelled:
        @vstk.hookimpl
        def vstk_register_translator(self, registry):  # missing "s"
            registry.add(Tiny)

    host = PluginHost()
    assert not host.register(Misspelled(), "typo")
    [(_, reason)] = host.failures()
    assert "unknown hook vstk_register_translator; did you mean vstk_register_translators?" in reason
    assert "tiny" not in host.registry("translator")


def test_plugin_whose_registration_raises_is_rolled_back():
    class Broken:
        @vstk.hookimpl
        def vstk_register_translators(self, registry):
            registry.add(Tiny)
            raise RuntimeError("boom")

    host = PluginHost()
    assert not host.register(Broken(), "broken")
    assert "tiny" not in host.registry("translator")
    assert host.failures() == [("broken", "registration failed: RuntimeError: boom")]


def test_unknown_name_lists_known_names_and_suggests():
    host = PluginHost()
    host.register(TinyPlugin(), "tinyplugin")
    with pytest.raises(PluginError, match=r"unknown translator 'tinny'.*did you mean 'tiny'.*known translators: tiny"):
        host.get("translator", "tinny")


def test_entry_point_that_fails_to_import_is_reported_and_others_load():
    eps = [
        importlib.metadata.EntryPoint("ghost", "vstk_no_such_module_xyz", "vstk"),
        importlib.metadata.EntryPoint("pseudolabel", "vstk_pseudolabel", "vstk"),
    ]
    host = PluginHost()
    host.load_entry_points(entry_points=eps)
    failures = dict(host.failures())
    assert "ModuleNotFoundError" in failures["ghost"]
    assert "pip install vstk_no_such_module_xyz" in failures["ghost"]
    assert "VSTK_DISABLE_PLUGINS=ghost" in failures["ghost"]
    assert host.registry("pseudo-labeler").names() == ["all", "confidence"]


def test_disabled_plugins_are_skipped():
    host = load_plugins(disabled=["pseudolabel"])
    assert "all" not in host.registry("pseudo-labeler")


def test_every_hook_is_documented_with_its_parameters():
    names = [n for n in dir(hookspecs) if n.startswith("vstk_")]
    assert len(names) >= 3
    for name in names:
        function = getattr(hookspecs, name)
        doc = inspect.getdoc(function) or ""
        assert len(doc.splitlines()[0]) > 10, name
        for parameter in inspect.signature(function).parameters:
            assert f":param {parameter}:" in doc, f"{name} does not document {parameter}"
        assert ":returns:" in doc


def _write_fake_distribution(root, module_source: str, module: str = "fake_vstk_plugin"):
    """A real installed-looking distribution on a path: dist-info with a vstk entry point."""
    (root / f"{module}.py").write_text(textwrap.dedent(module_source))
    info = root / "fake_vstk_plugin-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-vstk-plugin\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(f"[vstk]\nfake = {module}\n")


def _vstk(args, tmp_path, **env):
    full_env = {**os.environ, "PYTHONPATH": str(tmp_path), **env}
    return subprocess.run([sys.executable, "-m", "vstk.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=120)


def test_cli_lists_third_party_plugin_and_its_distribution(tmp_path):
    _write_fake_distribution(tmp_path, """
        import vstk

        class Fancy:
            name = "fancy"

        @vstk.hookimpl
        def vstk_register_translators(registry):
            registry.add(Fancy)
    """)
    result = _vstk(["plugins", "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["fancy"] == {"name": "fancy", "kind": "translator", "plugin": "fake",
                             "distribution": "fake-vstk-plugin", "version": "0.3", "status": "ok"}
    assert rows["all"]["status"] == "ok" and rows["all"]["distribution"] == "vstk"


def test_cli_shows_a_broken_plugin_as_failed_and_keeps_working(tmp_path):
    _write_fake_distribution(tmp_path, "import a_dependency_that_is_not_installed\n")
    result = _vstk(["plugins", "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["fake"]["status"].startswith("failed: import of fake_vstk_plugin failed: ModuleNotFoundError")
    assert "pip install a_dependency_that_is_not_installed" in rows["fake"]["status"]
    assert rows["confidence"]["status"] == "ok"
    table = _vstk(["plugins"], tmp_path)
    assert "fake" in table.stdout and "failed:" in table.stdout
    disabled = _vstk(["plugins", "--json"], tmp_path, VSTK_DISABLE_PLUGINS="fake")
    assert "fake" not in {r["name"] for r in json.loads(disabled.stdout)}


def test_plugin_commands_are_added_to_the_cli(tmp_path):
    _write_fake_distribution(tmp_path, """
        import click
        import vstk

        @click.command("hello")
        def hello():
            click.echo("hello from a plugin")

        @vstk.hookimpl
        def vstk_add_commands(cli):
            cli.add_command(hello)
    """)
    result = _vstk(["hello"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hello from a plugin"


def test_profile_choices_are_the_profiles_the_registered_components_declare():
    import click

    from vstk.cli_options import ProfileName

    class Profiled:
        name = "profiled"
        profiles = {"cpu": object(), "laptop": object()}

    class ProfiledPlugin:
        @vstk.hookimpl
        def vstk_register_translators(self, registry):
            registry.add(Profiled)

    host = PluginHost()
    host.register(ProfiledPlugin(), "profiled")
    assert host.profiles() == ["cpu", "laptop"]
    ctx = click.Context(click.Command("run"))
    ctx.meta["vstk.host"] = host
    assert ProfileName().convert("laptop", None, ctx) == "laptop"  # a plugin's own profile is a choice
    with pytest.raises(click.BadParameter, match="'paper' is not a profile of the installed plugins: use one of "
                                                 "cpu, laptop"):
        ProfileName().convert("paper", None, ctx)
    assert {"cpu", "paper"} <= set(load_plugins().profiles())  # the in-tree translators and segmenter
