"""The conformance kit (vstk.testing) on the in-tree translators, and on translators that break it."""

from __future__ import annotations

import numpy as np
import pytest

from vstk.errors import ConfigError
from vstk.plugins import load_plugins
from vstk.testing import CHECKS, ConformanceError, check_translator
from vstk.volume import Volume

HOST = load_plugins()
CycleGAN = HOST.get("translator", "cyclegan")


@pytest.mark.parametrize("name", ["cyclegan", "qsattn"])
def test_in_tree_translator_passes_every_check(name, tmp_path):
    report = check_translator(name, workdir=tmp_path)
    assert [r.name for r in report.results] == list(CHECKS)
    assert all(r.status == "passed" for r in report.results), str(report)
    assert "checkpoint translator.pt" in report.results[CHECKS.index("train")].message
    assert (tmp_path / "train" / "translator.pt").is_file() and (tmp_path / "train_again" / "translator.pt").is_file()


def test_unknown_name_fails_registration_and_skips_the_rest(tmp_path):
    with pytest.raises(ConformanceError) as info:
        check_translator("no-such-translator", workdir=tmp_path)
    message = str(info.value)
    assert message.splitlines()[0] == "translator 'no-such-translator' failed 1 conformance check(s):"
    assert "no translator named 'no-such-translator' is registered (known: " in message
    assert "cyclegan" in message and "entry-point group" in message


class UnseededCycleGAN(CycleGAN):
    """Perturbs its initial weights from an unseeded generator: two runs never agree."""

    name = "unseeded"

    def build_model(self):
        import torch

        model = super().build_model()
        noise = np.random.default_rng()
        with torch.no_grad():
            for p in model.nets["G_A"].parameters():
                p.add_(torch.from_numpy(noise.normal(0, 0.05, tuple(p.shape)).astype(np.float32)))
        return model


class RawLoadCycleGAN(CycleGAN):
    """Reads checkpoints with a bare torch.load: corrupt files leak torch's own exceptions."""

    name = "rawload"

    def load(self, checkpoint):
        import torch

        torch.load(checkpoint, weights_only=True)
        super().load(checkpoint)


class GridLosingCycleGAN(CycleGAN):
    """Returns the translation with the identity direction instead of the input's."""

    name = "gridlosing"

    def translate_volume(self, volume, *, progress=None):
        out = super().translate_volume(volume, progress=progress)
        return Volume(out.array, out.spacing, out.origin)


def test_a_translator_that_ignores_its_seed_fails_the_seed_check(tmp_path):
    with pytest.raises(ConformanceError, match=r"- seed: two CPU trainings with seed 0 give outputs that differ "
                                               r"by up to [0-9.e+-]+ \(fix: seed torch and every random source"):
        check_translator(UnseededCycleGAN, workdir=tmp_path, checks=("seed",))


def test_a_checkpoint_error_that_is_not_a_checkpoint_error_fails_with_each_case(tmp_path):
    with pytest.raises(ConformanceError) as info:
        check_translator(RawLoadCycleGAN, workdir=tmp_path, checks=("corrupt_checkpoint",))
    line = [l for l in str(info.value).splitlines() if l.startswith("- corrupt_checkpoint:")][0]
    assert "truncated file: load() raised" in line and "garbage file: load() raised" in line
    assert "empty file: load() raised" in line and "missing file: load() raised FileNotFoundError" in line
    assert "vstk.CheckpointError(problem, path=path, fix=...)" in line


def test_a_translation_off_the_input_grid_fails_the_geometry_check(tmp_path):
    with pytest.raises(ConformanceError, match=r"- volume_geometry: the translated volume is not on the input grid: "
                                               r"direction .* \(fix: return volume.with_array"):
        check_translator(GridLosingCycleGAN, workdir=tmp_path, checks=("volume_geometry",))


def test_overrides_must_be_fields_of_the_config(tmp_path):
    with pytest.raises(ConformanceError, match=r"- profiles: .*unknown setting 'widht'.*pass valid `overrides`"):
        check_translator("cyclegan", overrides={"widht": 3}, workdir=tmp_path, checks=("profiles",))
    with pytest.raises(ValueError, match="unknown conformance checks \\['speed'\\]"):
        check_translator("cyclegan", checks=("speed",))
    assert issubclass(ConformanceError, AssertionError) and not issubclass(ConfigError, AssertionError)
