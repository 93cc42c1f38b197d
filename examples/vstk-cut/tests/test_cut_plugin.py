"""The vstk conformance kit on the cut and fastcut translators, and their official defaults."""

from __future__ import annotations

import csv

import pytest

vstk_cut = pytest.importorskip("vstk_cut", reason="install the example: pip install -e examples/vstk-cut")

from vstk.errors import ConfigError  # noqa: E402
from vstk.plugins import load_plugins  # noqa: E402
from vstk.testing import check_translator, make_phantom_data  # noqa: E402


@pytest.mark.parametrize("name", ["cut", "fastcut"])
def test_translator_passes_the_conformance_kit(name, tmp_path):
    report = check_translator(name, workdir=tmp_path)
    assert [r.status for r in report.results] == ["passed"] * 7


def test_both_translators_come_from_the_vstk_cut_distribution():
    host = load_plugins()
    rows = {row.name: row for row in host.infos() if row.kind == "translator"}
    for name in ("cut", "fastcut"):
        assert (rows[name].distribution, rows[name].status) == ("vstk-cut", "ok")
    assert {"cyclegan", "qsattn"} <= set(rows)


def test_profiles_follow_the_official_cut_and_fastcut_defaults():
    cut, fast = vstk_cut.CUTTranslator, vstk_cut.FastCUTTranslator
    paper = cut.profile("paper")
    assert (paper.lambda_nce, paper.nce_idt, paper.flip_equivariance) == (1.0, True, False)
    assert (paper.nce_layers, paper.num_patches, paper.nce_t, paper.netf_nc) == ((0, 4, 8, 12, 16), 256, 0.07, 256)
    assert (paper.ngf, paper.n_blocks, paper.antialias, paper.init_type, paper.gan_mode) == (
        64, 9, True, "xavier", "lsgan")
    assert (paper.epochs, paper.decay_epochs, paper.lr) == (200, 200, 2e-4)
    fast_paper = fast.profile("paper")
    assert (fast_paper.lambda_nce, fast_paper.nce_idt, fast_paper.flip_equivariance) == (10.0, False, True)
    assert (fast_paper.epochs, fast_paper.decay_epochs) == (150, 50)
    # cpu: the in-tree QS-Attn cpu profile's slices, steps and widths
    qsattn = load_plugins().get("translator", "qsattn").profile("cpu")
    for profile in (cut.profile("cpu"), fast.profile("cpu")):
        for field in ("size", "spacing", "crop", "centre", "steps", "decay_steps", "ngf", "n_blocks", "ndf",
                      "num_patches", "netf_nc", "nce_layers"):
            assert getattr(profile, field) == getattr(qsattn, field), field


def test_bad_nce_settings_are_config_errors():
    with pytest.raises(ConfigError, match="lambda_nce=0.0 must be positive"):
        vstk_cut.CUTTranslator.profile("cpu", lambda_nce="0")
    with pytest.raises(ConfigError, match="nce_layers is empty"):
        vstk_cut.CUTTranslator.profile("cpu", nce_layers=())


def test_fastcut_flips_about_half_of_its_steps_and_cut_none(tmp_path):
    source, target, _ = make_phantom_data(tmp_path / "phantom")
    for name, (low, high) in (("cut", (0, 0)), ("fastcut", (3, 17))):
        cls = load_plugins().get("translator", name)
        config = cls.profile("cpu", size=32, centre="head", spacing="3.5,3.5", steps=10, decay_steps=10, cpu_precision="fp32", ngf=4,
                             ndf=4, n_blocks=1, num_patches=16, netf_nc=8, checkpoint_every=10, sample_every=0)
        cls(config, device="cpu").train(source, target, tmp_path / name)
        with open(tmp_path / name / "losses.csv") as handle:
            rows = list(csv.DictReader(handle))
        flips = sum(float(r["flipped"]) for r in rows)
        assert len(rows) == 20 and low <= flips <= high
        nce_y = [float(r["NCE_Y"]) for r in rows]
        assert all(v > 0 for v in nce_y) if name == "cut" else all(v == 0 for v in nce_y)  # identity NCE
