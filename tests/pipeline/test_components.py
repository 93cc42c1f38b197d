"""`vstk run --device` reaches the segmenter; nnU-Net's device setting is checked."""

from __future__ import annotations

import dataclasses

import pytest

from vstk.errors import ConfigError
from vstk.components import configure, route_default, split_settings
from vstk.plugins import load_plugins
from vstk_nnunet.config import CPU


@pytest.fixture(scope="module")
def components():
    host = load_plugins()
    return {"cyclegan": host.get("translator", "cyclegan"), "nnunet": host.get("segmenter", "nnunet"),
            "all": host.get("pseudo-labeler", "all")}


def test_run_device_goes_to_the_segmenter_config(components):
    routed = split_settings({}, components)
    route_default(routed, components, "device", "cpu")
    assert routed == {"cyclegan": {}, "nnunet": {"device": "cpu"}, "all": {}}
    assert configure(components["nnunet"], "paper", routed["nnunet"]).device == "cpu"


def test_an_explicit_segmenter_device_wins_over_run_device(components):
    routed = split_settings({"nnunet.device": "cpu"}, components)
    route_default(routed, components, "device", "cuda")
    assert routed["nnunet"] == {"device": "cpu"}


def test_no_run_device_leaves_the_profile_device(components):
    routed = split_settings({}, components)
    route_default(routed, components, "device", None)
    assert configure(components["nnunet"], "cpu", routed["nnunet"]).device == "cpu"


def test_nnunet_device_index():
    assert dataclasses.replace(CPU, device="cuda:0").device == "cuda"
    with pytest.raises(ConfigError, match="first visible GPU") as error:
        dataclasses.replace(CPU, device="cuda:1")
    assert "CUDA_VISIBLE_DEVICES=1" in str(error.value.fix)


def test_ear_offset_reaches_the_translators_ear_frames(components):
    routed = split_settings({"cyclegan.ear_offset_mm": "30,0,0"}, components)
    route_default(routed, components, "ear_offset_mm", "25,-5,1")
    assert routed["nnunet"] == {} and routed["cyclegan"] == {"ear_offset_mm": "30,0,0"}  # --set wins
    routed = split_settings({}, components)
    route_default(routed, components, "ear_offset_mm", "25,-5,1")
    assert configure(components["cyclegan"], "cpu", routed["cyclegan"]).ear_offset_mm == (25.0, -5.0, 1.0)


@pytest.mark.parametrize("option, value, message", [
    ("--ear-offset", "27,-6", "is not three numbers in mm (x,y,z), e.g. 27,-6,2"),
    ("--ear-size", "44,x,34", "is not three numbers in mm (x,y,z), e.g. 44,40,34"),
    ("--ear-size", "44,0,34", "every size must be positive"),
])
def test_bad_ear_boxes_are_refused_by_the_cli(tmp_path, option, value, message):
    from click.testing import CliRunner

    from vstk.cli import cli

    result = CliRunner().invoke(cli, ["run", "--translators", "cyclegan", "--out", str(tmp_path / "out"),
                                       option, value])
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "out").exists()  # refused before anything is written
