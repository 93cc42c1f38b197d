"""The vstk conformance kit on the template translator, and what the template itself promises."""

from __future__ import annotations

import numpy as np
import pytest

vstk_template = pytest.importorskip("vstk_template",
                                    reason="install the example: pip install -e examples/vstk-template")

from vstk.errors import ConfigError  # noqa: E402
from vstk.plugins import load_plugins  # noqa: E402
from vstk.testing import CHECKS, check_translator  # noqa: E402


def test_template_passes_the_conformance_kit(tmp_path):
    report = check_translator("template", workdir=tmp_path)
    assert [(r.name, r.status) for r in report.results] == [(name, "passed") for name in CHECKS], str(report)


def test_template_is_registered_by_the_vstk_template_distribution():
    host = load_plugins()
    row = [r for r in host.infos() if r.kind == "translator" and r.name == "template"][0]
    assert (row.plugin, row.distribution, row.version, row.status) == ("template", "vstk-template", "0.1.0", "ok")
    assert host.get("translator", "template") is vstk_template.TemplateTranslator


def test_profiles_share_the_in_tree_slices_and_budget():
    cpu, paper = vstk_template.TemplateTranslator.profile("cpu"), vstk_template.TemplateTranslator.profile("paper")
    cyclegan = load_plugins().get("translator", "cyclegan").profile("cpu")
    for field in ("size", "spacing", "crop", "centre", "steps", "decay_steps", "ngf", "n_blocks", "ndf"):
        assert getattr(cpu, field) == getattr(cyclegan, field), field
    assert (paper.size, paper.crop, paper.epochs, paper.decay_epochs, paper.ngf, paper.n_blocks) == (
        256, 384, 200, 200, 64, 9)
    assert (cpu.lambda_gan, cpu.lambda_structure, cpu.gan_mode, cpu.seed) == (1.0, 10.0, "lsgan", 0)


def test_bad_settings_are_config_errors_naming_the_fix():
    with pytest.raises(ConfigError, match=r"lambda_gan=0.0 must be positive .*fix: use lambda_gan=1"):
        vstk_template.TemplateTranslator.profile("cpu", lambda_gan="0")
    with pytest.raises(ConfigError, match=r"lambda_structure=-1.0 is negative"):
        vstk_template.TemplateTranslator.profile("cpu", lambda_structure="-1")
    with pytest.raises(ConfigError, match=r"gan_mode='wgan' is not allowed \(fix: use one of lsgan, vanilla"):
        vstk_template.TemplateTranslator.profile("cpu", gan_mode="wgan")


def test_gradient_magnitude_of_a_ramp_is_its_slope():
    import torch

    from vstk_template.model import gradient_magnitude

    ramp = torch.arange(6, dtype=torch.float32).mul(0.25).expand(1, 1, 5, 6)  # 0.25 per column
    magnitude = gradient_magnitude(ramp)
    assert magnitude.shape == ramp.shape
    assert torch.allclose(magnitude[..., :-1], torch.full((1, 1, 5, 5), 0.25), atol=1e-4)
    assert torch.allclose(magnitude[..., -1], torch.zeros(1, 1, 5), atol=1e-3)  # no column after the last


def test_training_steps_bring_the_input_edges_in_and_teach_the_discriminator():
    import torch

    from vstk.translation.trainer import seed_everything
    from vstk_template.model import TemplateModel

    seed_everything(0)
    config = vstk_template.TemplateTranslator.profile("cpu", size=32, ngf=4, ndf=4, n_blocks=1, lr=2e-3)
    model = TemplateModel(config, "cpu")
    y, x = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    disk = (x**2 + y**2 < 0.4).float()[None, None].repeat(2, 1, 1, 1)
    ce_t1, hr_t2 = disk * 1.6 - 0.8, 0.8 - disk * 1.6  # the same disk, bright on ceT1 and dark on hrT2
    model.setup(ce_t1, hr_t2, config.schedule())
    before = [p.detach().clone() for p in model.nets["G"].parameters()]
    losses = [model.train_step(ce_t1, hr_t2) for _ in range(40)]
    structure = np.array([float(step["structure"]) for step in losses])
    discriminator = np.array([float(step["D"]) for step in losses])
    # G starts from weights near zero (a flat image, no edges); the structure term brings the disk's edge in
    assert structure[-10:].mean() < 0.6 * structure[0]
    assert np.median(discriminator[-20:]) < 0.5 * discriminator[0]
    assert all(not torch.equal(a, b) for a, b in zip(before, model.nets["G"].parameters()))
    assert sorted(losses[0]) == ["D", "G_GAN", "structure"] and all(v.dim() == 0 for v in losses[0].values())
