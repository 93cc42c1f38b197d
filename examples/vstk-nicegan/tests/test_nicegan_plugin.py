"""The vstk conformance kit on the nicegan translator, and what makes it NICE-GAN."""

from __future__ import annotations

import pytest

vstk_nicegan = pytest.importorskip("vstk_nicegan", reason="install the example: pip install -e examples/vstk-nicegan")

import torch  # noqa: E402

from vstk.errors import ConfigError  # noqa: E402
from vstk.plugins import load_plugins  # noqa: E402
from vstk.testing import check_translator  # noqa: E402
from vstk.translation.checkpoint import load_checkpoint  # noqa: E402

from vstk_nicegan.model import NiceGANModel  # noqa: E402
from vstk_nicegan.networks import NiceDiscriminator  # noqa: E402

# The kit's 32-pixel slices are too small for a 7-layer discriminator's global head.
KIT_SETTINGS = {"size": 48, "n_layers_d": 6, "light": True}


def test_nicegan_passes_the_conformance_kit(tmp_path):
    report = check_translator("nicegan", overrides=KIT_SETTINGS, workdir=tmp_path)
    assert [r.status for r in report.results] == ["passed"] * 7
    rows = {row.name: row for row in load_plugins().infos()}
    assert (rows["nicegan"].distribution, rows["nicegan"].status) == ("vstk-nicegan", "ok")
    # The final checkpoint holds the ceT1 discriminator's encoder and the hrT2 decoder, nothing else.
    keys = load_checkpoint(tmp_path / "train" / "translator.pt")["generator"].keys()
    assert {k.split(".")[0] for k in keys} == {"encoder", "decoder"}
    assert any(k.startswith("encoder.cam_fc.parametrizations.weight") for k in keys)


def test_paper_profile_follows_the_official_defaults():
    paper = vstk_nicegan.NiceGANTranslator.profile("paper")
    assert (paper.ngf, paper.ndf, paper.n_blocks, paper.n_layers_d, paper.light) == (64, 64, 6, 7, False)
    assert (paper.adv_weight, paper.cycle_weight, paper.recon_weight) == (1.0, 10.0, 10.0)
    assert (paper.lr, paper.beta1, paper.beta2, paper.weight_decay, paper.batch_size) == (1e-4, 0.5, 0.999, 1e-4, 1)
    assert paper.steps + paper.decay_steps == 300_000 and paper.steps == paper.decay_steps
    cpu = vstk_nicegan.NiceGANTranslator.profile("cpu")
    in_tree = load_plugins().get("translator", "cyclegan").profile("cpu")  # the same slices as the in-tree translators
    assert (cpu.size, cpu.spacing, cpu.centre, cpu.light) == (in_tree.size, in_tree.spacing, "ears", True)


def test_discriminator_heads_have_the_official_receptive_field_outputs():
    local, global_, cam, z = NiceDiscriminator(1, 4, 7)(torch.zeros(2, 1, 256, 256))
    assert local.shape == (2, 1, 30, 30) and global_.shape == (2, 1, 6, 6)
    assert cam.shape == (2, 1) and z.shape == (2, 8, 64, 64)


def test_the_decoders_have_no_encoder_and_the_encoder_learns_only_from_the_discriminator_loss():
    config = vstk_nicegan.NiceGANTranslator.profile("cpu", size=48, n_layers_d=6, ngf=4, ndf=4, n_blocks=1)
    torch.manual_seed(0)
    model = NiceGANModel(config, "cpu")
    assert not any(isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2) for m in model.nets["dec_B"].modules())
    real_a, real_b = torch.rand(1, 1, 48, 48) * 2 - 1, torch.rand(1, 1, 48, 48) * 2 - 1
    model.setup(real_a, real_b, config.schedule())
    encoder = model.nets["dis_A"].encoder
    assert model.translator.encoder is encoder and model.translator.decoder is model.nets["dec_B"]
    generator_params = {id(p) for group in model.optimizers()["G"].param_groups for p in group["params"]}
    assert not generator_params & {id(p) for p in encoder.parameters()}
    assert all(group["weight_decay"] == 1e-4 for opt in model.optimizers().values() for group in opt.param_groups)
    before = [p.detach().clone() for p in encoder.parameters()]
    losses = model.train_step(real_a, real_b)
    assert set(losses) == {"D_A", "D_B", "G_adv_A", "G_adv_B", "cycle_A", "cycle_B", "recon_A", "recon_B"}
    assert any(not torch.equal(a, b) for a, b in zip(before, encoder.parameters()))  # the D step moved it


def test_slices_too_small_for_the_discriminator_are_a_config_error():
    with pytest.raises(ConfigError, match="size=64 is too small for a 7-layer NICE-GAN discriminator.*size>=96"):
        vstk_nicegan.NiceGANTranslator.profile("cpu", size=64)
    with pytest.raises(ConfigError, match="init_type='xavier' is not supported"):
        vstk_nicegan.NiceGANTranslator.profile("cpu", init_type="xavier")
