"""The CycleGAN and QS-Attn plugins through the shared training loop, on small real volumes."""

from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest
import torch

from vstk.errors import CheckpointError, ConfigError
from vstk.geometry import SliceGeometry
from vstk.plugins import load_plugins
from vstk.translation.base import CPU_VIEWS, official_architecture
from vstk.translation.checkpoint import load_checkpoint
from vstk.translation.data import SliceOptions, SliceSet
from vstk.translation.networks import ResnetGenerator

from conftest import make_image, make_label

HOST = load_plugins()
TRANSLATORS = ("cyclegan", "qsattn")


def tiny(name: str, **overrides):
    cls = HOST.get("translator", name)
    # float32 whatever the CPU (the cpu profile trains in bfloat16 with more steps where it has AMX)
    settings = dict(size=32, crop=None, spacing="0.8,0.8", centre="head", steps=3, decay_steps=3, ngf=4, n_blocks=1, ndf=4,
                    checkpoint_every=2, sample_every=0, cpu_precision="fp32")
    if name == "qsattn":
        settings.update(num_patches=16, netf_nc=8)
    settings.update(overrides)
    return cls(cls.profile("cpu", **settings), device="cpu")


@pytest.fixture(scope="module")
def volumes():
    source = [make_image(shape=(6, 40, 40), seed=i) for i in range(2)]
    target = [make_image(shape=(6, 40, 40), spacing=(0.6, 0.6, 1.0), seed=10 + i) for i in range(2)]
    return source, target


def generator_weights(path):
    return load_checkpoint(path)["generator"]


@pytest.mark.parametrize("name", TRANSLATORS)
def test_resume_after_interruption_gives_the_same_weights(name, volumes, tmp_path):
    source, target = volumes
    straight = tiny(name).train(source, target, tmp_path / "straight")
    interrupted = tiny(name)
    partial = interrupted.train(source, target, tmp_path / "resumed", stop_after=4)
    assert partial.name == "latest.pt" and load_checkpoint(partial)["step"] == 4
    resumed = tiny(name).train(source, target, tmp_path / "resumed")
    a, b = generator_weights(straight), generator_weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    with open(tmp_path / "resumed" / "losses.csv") as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle)]
    assert steps == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("name", TRANSLATORS)
def test_translated_volume_keeps_source_geometry(name, volumes, tmp_path):
    source, target = volumes
    translator = tiny(name)
    translator.train(source, target, tmp_path)
    volume = make_image(shape=(7, 44, 36), spacing=(0.5, 0.45, 1.5), direction=(0, -1, 0, 1, 0, 0, 0, 0, 1))
    out = translator.translate_volume(volume)
    assert out.same_grid(volume) and out.array.dtype == np.float32
    assert 0.0 <= out.array.min() and out.array.max() <= 1000.0
    label = make_label(volume)
    assert label.same_grid(out)  # the ceT1 label fits the translated view voxel for voxel


def test_learning_rate_decays_linearly_to_zero(volumes, tmp_path):
    source, target = volumes
    tiny("cyclegan", steps=2, decay_steps=4).train(source, target, tmp_path)
    with open(tmp_path / "losses.csv") as handle:
        lrs = [float(row["lr"]) for row in csv.DictReader(handle)]
    assert lrs[:2] == [2e-4, 2e-4]
    assert np.all(np.diff(lrs[1:]) < 0) and lrs[-1] == pytest.approx(2e-4 * 1 / 5)


def test_translation_is_streamed_in_batches_with_identical_result(volumes, tmp_path):
    source, target = volumes
    translator = tiny("cyclegan")
    translator.train(source, target, tmp_path)
    one = translator.translate_volume(source[0]).array
    translator.config = dataclasses.replace(translator.config, translate_batch=1)
    np.testing.assert_allclose(translator.translate_volume(source[0]).array, one, atol=1e-3)


def test_checkpoint_errors_are_clear(volumes, tmp_path):
    source, target = volumes
    path = tiny("cyclegan").train(source, target, tmp_path / "c")
    with pytest.raises(CheckpointError, match="checkpoint of translator 'cyclegan', not 'qsattn'"):
        tiny("qsattn").load(path)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="truncated.pt: corrupt or truncated checkpoint"):
        tiny("cyclegan").load(truncated)
    with pytest.raises(CheckpointError, match="do not fit the architecture"):
        wrong = tiny("cyclegan")
        wrong.config = dataclasses.replace(wrong.config, ngf=8)
        state = load_checkpoint(path)
        state["meta"] = state["meta"].replace('"ngf": 4', '"ngf": 8')
        torch.save(state, tmp_path / "wrong.pt")
        wrong.load(tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError, match="training checkpoint"):
        tiny("cyclegan").load(tmp_path / "c" / "latest.pt")


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoints_with_arbitrary_objects_are_refused(tmp_path):
    torch.save({"format": "vstk-translator", "payload": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="objects other than tensors"):
        tiny("cyclegan").load(tmp_path / "evil.pt")


def test_unknown_mode_and_bad_values_are_config_errors():
    with pytest.raises(ConfigError, match="unknown QS-Attn mode 'glob'"):
        tiny("qsattn", qs_mode="glob")
    with pytest.raises(ConfigError, match="multiple of 4"):
        tiny("cyclegan", size=30)
    with pytest.raises(ConfigError, match="unknown setting 'ngff'"):
        tiny("cyclegan", ngff=3)


@pytest.mark.parametrize("name,antialias", [("cyclegan", False), ("qsattn", True)])
def test_official_state_dict_loads_including_3_channel_weights(name, antialias, tmp_path):
    torch.manual_seed(0)
    official = ResnetGenerator(3, 3, ngf=8, n_blocks=2, antialias=antialias)  # official key layout
    state = {f"module.{k}": v for k, v in official.state_dict().items()}  # as saved from DataParallel
    torch.save(state, tmp_path / "latest_net_G.pth")
    translator = tiny(name)
    translator.load_official(tmp_path / "latest_net_G.pth")
    assert official_architecture(official.state_dict()) == {
        "input_nc": 3, "output_nc": 3, "ngf": 8, "n_blocks": 2, "antialias": antialias, "norm": "instance"}
    x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = official(torch.from_numpy(x)[:, None].expand(-1, 3, -1, -1)).mean(dim=1).numpy()
    np.testing.assert_allclose(translator.translate_batch(x), expected, atol=1e-5)
    other = tiny("qsattn" if name == "cyclegan" else "cyclegan")
    with pytest.raises(CheckpointError, match="uses the other layout"):
        other.load_official(tmp_path / "latest_net_G.pth")


def test_slice_set_skips_empty_slices_and_samples_in_range():
    volume = make_image(shape=(6, 40, 40))
    array = volume.array.copy()
    array[:2] = 0.0  # two slices of air
    options = SliceOptions(SliceGeometry(32, (0.8, 0.8)))
    slices = SliceSet.from_volumes([volume.with_array(array)], options)
    assert len(slices) == 4
    batch = slices.sample(np.random.default_rng(0), 3)
    assert batch.shape == (3, 1, 32, 32) and batch.min() >= -1 and batch.max() <= 1


def test_the_focus_draws_its_share_from_the_slices_near_the_ear_box_centres():
    from vstk.roi import EarRule

    # 40 slices of 1.5 mm; the ear-box centres 2 mm above the grid centre (slice 19.5 + 1.33)
    volume = make_image(shape=(40, 64, 64), spacing=(1.0, 1.0, 1.5))
    ears = EarRule(offset_mm=(16.0, 0.0, 2.0), size_mm=(30.0, 30.0, 60.0))
    options = SliceOptions(SliceGeometry(16, (1.0, 1.0)), "ears", ears, min_content=0.0, focus_mm=3.0)
    flags = options.focus(volume)
    assert len(flags) == 2
    for (zs, _), near in zip(options.regions(volume), flags):
        ks = np.arange(zs.start, zs.stop)[near]
        assert list(ks) == [19, 20, 21, 22]  # |k - 20.83| * 1.5 <= 3
    slices = SliceSet.from_volumes([volume], options, focus_share=0.75)
    assert slices.focus.sum() == 8 and len(slices) == 80
    draws = np.concatenate([slices.sample(np.random.default_rng(n), 50, flip=False) for n in range(40)])[:, 0]
    near = np.isin(np.arange(len(slices)), np.flatnonzero(slices.focus))
    drawn_near = np.mean([any(np.array_equal(d, s) for s in slices.slices[near]) for d in draws])
    assert 0.70 < drawn_near < 0.80  # 8 of 80 slices, three quarters of the draws
    shard = slices.shard(1, 2, seed=3)
    assert shard.focus is not None and shard.focus.sum() + slices.shard(0, 2, seed=3).focus.sum() == 8
    for flag, one in zip(shard.focus, shard.slices):  # the flags stay with their slices
        assert flag == any(np.array_equal(one, s) for s in slices.slices[near])
    # without a focus the draws are the uniform ones of before
    plain = SliceSet.from_volumes([volume], dataclasses.replace(options, focus_mm=0.0))
    assert plain.focus is None
    expected = plain.slices[np.random.default_rng(5).integers(0, len(plain), size=4)][:, None]
    np.testing.assert_array_equal(plain.sample(np.random.default_rng(5), 4, flip=False), expected)


def test_a_focus_of_slices_around_the_head_centre_flags_those_near_either_ear():
    from vstk.roi import EarRule

    volume = make_image(shape=(40, 64, 64), spacing=(1.0, 1.0, 1.5))
    ears = EarRule(offset_mm=(16.0, 0.0, 2.0), size_mm=(30.0, 30.0, 60.0))
    options = SliceOptions(SliceGeometry(16, (1.0, 1.0)), "head", ears, min_content=0.0, focus_mm=3.0)
    (near,) = options.focus(volume)
    assert list(np.flatnonzero(near)) == [19, 20, 21, 22]  # both ears at slice 20.83 here


def test_a_focus_needs_a_share_between_0_and_1():
    for share in (0, 1):
        with pytest.raises(ConfigError, match="a share between 0 and 1"):
            tiny("qsattn", centre="ears", focus_mm=6, focus_share=share)
    assert tiny("cyclegan", centre="ears", focus_mm=6).config.slice_options().focus_mm == 6.0


def test_training_crops_are_windows_of_the_slices_and_whole_slices_are_translated(volumes, tmp_path):
    volume = make_image(shape=(6, 40, 40))
    slices = SliceSet.from_volumes([volume], SliceOptions(SliceGeometry(32, (0.8, 0.8))))
    batch = slices.sample(np.random.default_rng(0), 5, flip=False, crop=24)
    assert batch.shape == (5, 1, 24, 24)
    for window in batch[:, 0]:  # each window lies somewhere in one of the slices
        found = any(np.array_equal(s[y:y + 24, x:x + 24], window)
                    for s in slices.slices for y in range(9) for x in range(9))
        assert found
    source, target = volumes
    for name in TRANSLATORS:
        translator = tiny(name, train_crop=24)
        translator.train(source, target, tmp_path / name)
        out = translator.translate_volume(source[0])
        assert out.same_grid(source[0]) and np.isfinite(out.array).all()
    with pytest.raises(ConfigError, match="train_crop=40 is larger than the slices"):
        tiny("cyclegan", train_crop=40)
    with pytest.raises(ConfigError, match="train_crop=10 must be a multiple of 4"):
        tiny("cyclegan", train_crop=10)


#: the translators this repository ships: in-tree, and the example plugins where installed (CI installs them)
SHIPPED_TRANSLATORS = ("cyclegan", "qsattn", "cut", "fastcut", "nicegan", "template")


def test_every_shipped_translators_cpu_profile_draws_and_pools_as_the_shared_cpu_views():
    # vstk bench compares translators at the cpu profile: their slice draws and pool views must agree;
    # a third-party plugin installed beside them is free to choose its own
    registry = HOST.registry("translator")
    assert {"cyclegan", "qsattn"} <= set(registry.names())
    for name in (name for name in SHIPPED_TRANSLATORS if name in registry):
        cpu = registry.get(name).profiles["cpu"]
        drawn = {key: getattr(cpu, key) for key in CPU_VIEWS}
        assert drawn == CPU_VIEWS, f"{name}'s cpu profile draws {drawn}, not {dict(CPU_VIEWS)}"
        paper = registry.get(name).profiles["paper"]
        assert paper.focus_mm == 0.0 and not paper.grey_tumour, f"{name}'s paper profile draws as the cpu one"
        assert paper.cpu_precision == "fp32" and paper.bf16_step_scale == 1.0, f"{name}'s paper profile trains in bf16"


@pytest.mark.parametrize("name", TRANSLATORS)
def test_bf16_training_runs_the_networks_in_bfloat16_and_keeps_float32_weights(name, volumes, tmp_path):
    source, target = volumes
    translator = tiny(name, cpu_precision="bf16", bf16_step_scale=2)
    seen = set()
    build = translator.build_model

    def build_and_watch():
        model = build()
        conv = next(m for m in model.networks()["G_A" if name == "cyclegan" else "G"].modules()
                    if isinstance(m, torch.nn.Conv2d))
        # training forwards only: the sample PNGs are translated without gradients, in float32
        conv.register_forward_hook(lambda module, args, out: seen.add(out.dtype) if torch.is_grad_enabled() else None)
        return model

    translator.build_model = build_and_watch
    path = translator.train(source, target, tmp_path)
    assert seen == {torch.bfloat16}  # every training forward of the generator
    with open(tmp_path / "losses.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12  # 3 + 3 steps, twice as many in bfloat16
    assert all(np.isfinite(float(v)) for row in rows for k, v in row.items() if k not in ("step", "lr"))
    weights = generator_weights(path)
    assert all(w.dtype == torch.float32 for w in weights.values() if w.is_floating_point())
    out = translator.translate_volume(source[0]).array  # inference stays float32
    assert out.dtype == np.float32 and np.isfinite(out).all()


def test_cpu_precision_decides_bf16_steps_only_on_the_cpu():
    from vstk.resources import cpu_has_bf16_matrix_units

    config = tiny("cyclegan", cpu_precision="auto", bf16_step_scale=2.5).config
    assert config.trains_in_bf16("cpu") == cpu_has_bf16_matrix_units()
    assert not config.trains_in_bf16("cuda")  # autocast to bfloat16 is a CPU setting only
    assert (config.schedule(bf16=True).steps, config.schedule(bf16=True).decay_steps) == (8, 8)  # round(3 * 2.5)
    assert (config.schedule().steps, config.schedule().bf16) == (3, False)
    assert not tiny("cyclegan", cpu_precision="fp32").config.trains_in_bf16("cpu")
    assert tiny("cyclegan", cpu_precision="bf16").config.trains_in_bf16("cpu")
    with pytest.raises(ConfigError, match="cpu_precision='bf32' is not supported") as bad:
        tiny("cyclegan", cpu_precision="bf32")
    assert "fp32, bf16, auto" in str(bad.value)
    with pytest.raises(ConfigError, match=r"bf16_step_scale=0.0 must be in \(0, 100\]"):
        tiny("qsattn", bf16_step_scale=0)
