"""The conformance kit (vstk.testing) on the in-tree translators, and on translators that break it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vstk.errors import ConfigError
from vstk.plugins import load_plugins
from vstk.protocols import Translator
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


class SettingsForgettingCycleGAN(CycleGAN):
    """Loads a checkpoint's weights but keeps the settings it was built with."""

    name = "forgetful"

    def load(self, checkpoint):
        config = self.config
        super().load(checkpoint)
        self.config = config


class ElsewhereCycleGAN(CycleGAN):
    """Renames its final checkpoint, so the pipeline cannot find a finished training."""

    name = "elsewhere"

    def train(self, source, target, workdir, **kwargs):
        path = super().train(source, target, workdir, **kwargs).rename(Path(workdir) / "final.pt")
        self.checkpoint = path
        return path


class EagerCycleGAN(CycleGAN):
    """Builds its generator with random weights at once: it translates before any training."""

    name = "eager"

    def __init__(self, config=None, device=None):
        super().__init__(config, device)
        self.generator = self.build_generator().eval()


class DuckTranslator:
    """Every member vstk.Translator declares, and nothing from vstk's base class."""

    name = "duck"
    config_class = object
    config = None
    checkpoint = None

    @classmethod
    def profile(cls, name, **overrides): ...

    def train(self, source, target, workdir, *, progress=None, distributed=None): ...

    def load(self, checkpoint): ...

    def translate_volume(self, volume): ...


def test_the_protocol_declares_what_the_pipeline_reads_and_nothing_else():
    assert isinstance(DuckTranslator(), Translator)  # no translate_batch: the core never calls it
    for member in ("config", "checkpoint", "translate_volume", "load"):
        lacking = type("Lacking", (DuckTranslator,), {member: property(lambda self: _raise())})
        assert not isinstance(lacking(), Translator), member


def _raise():
    raise AttributeError("not here")


def test_a_load_that_keeps_the_old_settings_fails_the_round_trip(tmp_path):
    with pytest.raises(ConformanceError, match=r"- round_trip: after load\(\) into the 'cpu' profile, config holds "
                                               r"other settings than the training \(centre: 'ears' instead of "
                                               r"'head'; decay_steps: 660 instead of 2; n_blocks: 3 instead of 1; "
                                               r"ndf: 16 instead of 4; \d+ more\) \(fix: store the training config"):
        check_translator(SettingsForgettingCycleGAN, workdir=tmp_path, checks=("round_trip",))


def test_a_final_checkpoint_under_another_name_fails_the_train_check(tmp_path):
    with pytest.raises(ConformanceError) as info:
        check_translator(ElsewhereCycleGAN, workdir=tmp_path, checks=("round_trip",))
    lines = str(info.value).splitlines()
    assert lines[1] == (f"- train: train() returned {tmp_path / 'train' / 'final.pt'}, but the pipeline looks for "
                        f"the final checkpoint at WORK/translator.pt (fix: write it there)")
    assert len(lines) == 2  # round_trip, which needs train, is skipped, not failed


def test_a_translator_with_weights_before_training_fails_the_geometry_check(tmp_path):
    with pytest.raises(ConformanceError, match=r"- volume_geometry: translate_volume\(\) translated before train\(\) "
                                               r"or load\(\) gave the translator weights"):
        check_translator(EagerCycleGAN, workdir=tmp_path, checks=("volume_geometry",))


def test_a_subset_of_checks_runs_what_it_needs_and_says_what_passed(tmp_path):
    report = check_translator(CycleGAN, workdir=tmp_path, checks=("round_trip",))
    messages = {r.name: r.message for r in report.results}
    assert list(messages) == ["profiles", "train", "round_trip"]
    assert messages["round_trip"] == "identical outputs and settings after load(), also into the default profile"


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
