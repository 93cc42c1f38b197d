"""`vstk run --device` reaches the segmenter; nnU-Net's device setting is checked."""

from __future__ import annotations

import dataclasses

import pytest

from vstk.errors import ConfigError
from vstk.pipeline.components import configure, route_device, split_settings
from vstk.plugins import load_plugins
from vstk_nnunet.config import CPU


@pytest.fixture(scope="module")
def components():
    host = load_plugins()
    return {"cyclegan": host.get("translator", "cyclegan"), "nnunet": host.get("segmenter", "nnunet"),
            "all": host.get("pseudo-labeler", "all")}


def test_run_device_goes_to_the_segmenter_config(components):
    routed = split_settings({}, components)
    route_device(routed, components, "cpu")
    assert routed == {"cyclegan": {}, "nnunet": {"device": "cpu"}, "all": {}}
    assert configure(components["nnunet"], "paper", routed["nnunet"]).device == "cpu"


def test_an_explicit_segmenter_device_wins_over_run_device(components):
    routed = split_settings({"nnunet.device": "cpu"}, components)
    route_device(routed, components, "cuda")
    assert routed["nnunet"] == {"device": "cpu"}


def test_no_run_device_leaves_the_profile_device(components):
    routed = split_settings({}, components)
    route_device(routed, components, None)
    assert configure(components["nnunet"], "cpu", routed["nnunet"]).device == "cpu"


def test_nnunet_device_index():
    assert dataclasses.replace(CPU, device="cuda:0").device == "cuda"
    with pytest.raises(ConfigError, match="first visible GPU") as error:
        dataclasses.replace(CPU, device="cuda:1")
    assert "CUDA_VISIBLE_DEVICES=1" in str(error.value.fix)
