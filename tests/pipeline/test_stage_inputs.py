"""`vstk run` records what each stage was computed from and refuses to resume an OUT with other
settings (a skipped stage would otherwise report the old settings' results as the new ones)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from vstk.cli_options import ear_settings
from vstk.config import result_settings
from vstk.crossmoda import load_case
from vstk.errors import ConfigError, InputError
from vstk.phantom import PhantomConfig, generate_phantom
from vstk.pipeline import records, stages
from vstk.pipeline.plan import RunOptions, phantom_data, plan_run
from vstk.pipeline.records import check_inputs, timed
from vstk.pipeline.run import stage_inputs
from vstk.plugins import load_plugins
from vstk_cyclegan import CPU as CYCLEGAN_CPU
from vstk_nnunet.config import CPU as NNUNET_CPU


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantom")
    generate_phantom(root, PhantomConfig(cases=2, test_cases=2, paired_cases=2, resolution_scale=0.3, seed=5,
                                         geometry="slab"))
    return root


@pytest.fixture(scope="module")
def host():
    return load_plugins()


def plan(phantom: Path, out: Path, host, *settings: tuple[str, str], **options):
    options.setdefault("ears", "rule")  # the slab phantom's fixed boxes: these tests are about the stages
    return plan_run(RunOptions(out=out, translators=("cyclegan", "qsattn"), data=phantom / "train",
                               settings=tuple(settings), **options), host)


def finish(plan_, names):
    inputs = stage_inputs(plan_)
    for name in names:
        timed(plan_, name, lambda: {"note": "computed"}, inputs=inputs[name])
    return inputs


def test_result_settings_leave_out_where_and_how_fast():
    translator = result_settings(CYCLEGAN_CPU)
    assert translator["steps"] == CYCLEGAN_CPU.steps and translator["ngf"] == CYCLEGAN_CPU.ngf
    assert not {"checkpoint_every", "sample_every", "translate_batch"} & set(translator)
    segmenter = result_settings(NNUNET_CPU)
    assert segmenter["seed"] == 0 and segmenter["num_epochs"] == NNUNET_CPU.num_epochs
    assert not {"device", "num_threads", "n_proc_da", "n_proc_preprocessing", "save_every"} & set(segmenter)
    assert result_settings(None) == {} and result_settings({"a": 1}) == {}


def test_stage_inputs_name_data_plugins_and_settings(phantom, tmp_path, host):
    inputs = stage_inputs(plan(phantom, tmp_path / "out", host, rounds=2))
    assert list(inputs) == ["translator-cyclegan", "translator-qsattn", "pool", "segment-r0", "segment-r1",
                            "segment-r2"]
    assert inputs["translator-cyclegan"]["cyclegan.steps"] == CYCLEGAN_CPU.steps
    assert "qsattn.steps" not in inputs["translator-cyclegan"]
    assert inputs["pool"]["views"] == ["cyclegan", "qsattn"]
    assert inputs["pool"]["data.ceT1"].startswith("2 cases, ids sha256 ")
    assert inputs["segment-r0"]["nnunet.seed"] == 0 and "pseudo_labeler" not in inputs["segment-r0"]
    assert inputs["segment-r1"]["pseudo_labeler"] == "all" and inputs["segment-r2"] == inputs["segment-r1"]
    json.dumps(inputs)  # recorded as JSON


def test_same_or_execution_only_settings_resume(phantom, tmp_path, host):
    out = tmp_path / "out"
    finish(plan(phantom, out, host, ("steps", "3")), ["translator-cyclegan", "translator-qsattn", "pool", "segment-r0"])
    record = json.loads((out / "state" / "translator-cyclegan.json").read_text())
    assert record["note"] == "computed" and record["inputs"]["cyclegan.steps"] == 3
    again = plan(phantom, out, host, ("steps", "3"), ("nnunet.num_threads", "1"), ("nnunet.n_proc_da", "2"),
                 ("checkpoint_every", "7"), device="cpu")
    check_inputs(again, stage_inputs(again))  # nothing that changes a result: resumes


def test_changed_translator_setting_is_refused_with_both_values(phantom, tmp_path, host):
    out = tmp_path / "out"
    finish(plan(phantom, out, host, ("steps", "3")), ["translator-cyclegan", "translator-qsattn", "pool"])
    changed = plan(phantom, out, host, ("steps", "3"), ("cyclegan.steps", "4"))
    with pytest.raises(ConfigError) as error:
        check_inputs(changed, stage_inputs(changed))
    message = str(error.value)
    assert "stage translator-cyclegan was finished with cyclegan.steps: 3 -> 4" in message
    assert "translator-qsattn" not in message and "new --out" in message
    assert str(out / "state" / "translator-cyclegan.json") in message


def test_changed_segmenter_seed_names_the_first_stage_and_the_later_ones(phantom, tmp_path, host):
    out = tmp_path / "out"
    finish(plan(phantom, out, host), ["segment-r0", "segment-r1"])
    with pytest.raises(ConfigError, match=r"stage segment-r0 was finished with nnunet.seed: 0 -> 1 "
                                          r"\(recorded -> now\) \(and in segment-r1\)"):
        reseeded = plan(phantom, out, host, ("nnunet.seed", "1"))
        check_inputs(reseeded, stage_inputs(reseeded))
    other_labeler = plan(phantom, out, host, pseudo_labeler="confidence")
    with pytest.raises(ConfigError, match='stage segment-r1 was finished with .*pseudo_labeler: "all" -> "confidence"'):
        check_inputs(other_labeler, stage_inputs(other_labeler))
    fewer_views = plan_run(RunOptions(out=out, translators=("qsattn",), data=phantom / "train", ears="rule"), host)
    with pytest.raises(ConfigError, match=r'views: \["cyclegan", "qsattn"\] -> \["qsattn"\]'):
        check_inputs(fewer_views, stage_inputs(fewer_views))


def test_another_profile_is_refused_in_one_readable_line(phantom, tmp_path, host):
    out = tmp_path / "out"
    finish(plan(phantom, out, host), ["translator-cyclegan"])
    paper = plan(phantom, out, host, profile="paper")
    with pytest.raises(ConfigError, match=r"stage translator-cyclegan was finished with cyclegan\.\w+: .*; "
                                          r"\d+ more \(recorded -> now\)") as error:
        check_inputs(paper, stage_inputs(paper))
    assert str(error.value).count(" -> ") == 7  # six changes and the legend
    assert "\n" not in str(error.value)


def test_an_interrupted_stage_is_checked_by_its_started_record(phantom, tmp_path, host):
    out = tmp_path / "out"
    first = plan(phantom, out, host, ("steps", "3"))
    records.mark_started(first.state, "translator-cyclegan", stage_inputs(first)["translator-cyclegan"])
    changed = plan(phantom, out, host, ("steps", "5"))
    with pytest.raises(ConfigError, match=r"stage translator-cyclegan was started with cyclegan.steps: 3 -> 5"):
        check_inputs(changed, stage_inputs(changed))
    finish(first, ["translator-cyclegan"])
    assert not (first.state / "translator-cyclegan.started.json").exists()


def test_records_without_inputs_are_accepted(phantom, tmp_path, host):
    out = tmp_path / "out"
    records.mark_done(out / "state", "segment-r0", {"seconds": 1.0})  # written before inputs were recorded
    old = plan(phantom, out, host, ("nnunet.seed", "4"))
    check_inputs(old, stage_inputs(old))


def test_cheap_stages_are_redone_when_their_inputs_change(phantom, tmp_path, host):
    out = tmp_path / "out"
    p = plan(phantom, out, host)
    calls = []
    timed(p, "predict", lambda: calls.append(1) or {}, inputs={"test.hrT2": "a"}, redo_if_changed=True)
    timed(p, "predict", lambda: calls.append(2) or {}, inputs={"test.hrT2": "a"}, redo_if_changed=True)
    assert calls == [1]
    timed(p, "predict", lambda: calls.append(3) or {}, inputs={"test.hrT2": "b"}, redo_if_changed=True)
    assert calls == [1, 3] and records.stage_done(p.state, "predict")["inputs"] == {"test.hrT2": "b"}


def test_a_phantom_of_other_size_is_refused(tmp_path):
    out = tmp_path / "out"
    generate_phantom(out / "phantom", PhantomConfig(cases=2, test_cases=2, paired_cases=2, resolution_scale=0.3,
                                                    geometry="slab"))
    with pytest.raises(ConfigError, match="has 2 cases of seed 0, not 10 of seed 0") as error:
        phantom_data(out, cases=RunOptions(out=out).phantom_cases, seed=0)
    assert "--phantom-cases 2" in error.value.fix
    with pytest.raises(ConfigError, match="has the slab geometry, not crossmoda"):
        phantom_data(out, cases=2, seed=0)  # the built-in data's geometry is crossmoda
    assert phantom_data(out, cases=2, seed=0, geometry="slab") == out / "phantom"


#: a CycleGAN that trains in a second on the small phantom
TINY = {"steps": "2", "decay_steps": "1", "ngf": "4", "n_blocks": "1", "ndf": "4", "size": "48",
        "spacing": "1.0,1.0", "sample_every": "0"}


def training_data(phantom: Path):
    """The phantom's training folder, its ceT1 and its hrT2 volumes."""
    from vstk.crossmoda import discover, read_image

    folder = discover(phantom / "train", require_source=True, require_target=True)
    return folder, [read_image(c.ceT1) for c in folder.source], [read_image(c.hrT2) for c in folder.target]


def test_a_final_translator_of_other_settings_is_not_used(phantom, tmp_path, host):
    _, sources, targets = training_data(phantom)
    cyclegan = host.get("translator", "cyclegan")
    workdir = tmp_path / "cyclegan"
    final = stages.train_translator(cyclegan(cyclegan.profile("cpu", **TINY), device="cpu"), sources, targets,
                                    workdir)
    assert final == workdir / "translator.pt"
    reused = cyclegan(cyclegan.profile("cpu", **TINY, checkpoint_every="9", translate_batch="2"), device="cpu")
    assert stages.train_translator(reused, sources, targets, workdir, same_settings=True) == final
    assert reused.generator is not None
    other = cyclegan(cyclegan.profile("cpu", **{**TINY, "steps": "3", "lambda_identity": "0"}), device="cpu")
    with pytest.raises(ConfigError, match=r"lambda_identity: 0.5 -> 0.0; steps: 2 -> 3 \(checkpoint -> now\)") as error:
        stages.train_translator(other, sources, targets, workdir, same_settings=True)
    assert str(final) in str(error.value)
    # `vstk pool build` uses the checkpoint as trained (its settings go into the pool's provenance)
    assert stages.train_translator(other, sources, targets, workdir) == final
    assert other.config.steps == 2 and other.config.lambda_identity == 0.5


def test_a_setting_added_after_a_record_counts_as_unchanged_only_at_its_default(phantom, tmp_path, host):
    """A record written before a setting existed did what the setting's default does."""
    out = tmp_path / "out"
    inputs = finish(plan(phantom, out, host), ["segment-r0", "segment-r1"])
    record_path = out / "state" / "segment-r1.json"
    record = json.loads(record_path.read_text())
    # as an older vstk wrote it: without two settings added later
    for key in ("nnunet.structure_intensity_texture", "nnunet.structure_intensity_pseudo"):
        del record["inputs"][key]
    record_path.write_text(json.dumps(record))
    assert inputs["segment-r1"]["nnunet.structure_intensity_texture"] == 0.0  # the field's default
    assert inputs["segment-r1"]["nnunet.structure_intensity_pseudo"] == 0.0  # the cpu profile's, not the default
    same = plan(phantom, out, host)
    with pytest.raises(ConfigError) as error:
        check_inputs(same, stage_inputs(same))
    message = str(error.value)
    assert 'nnunet.structure_intensity_pseudo: "(not set)" -> 0.0' in message
    assert "structure_intensity_texture" not in message  # at its default: what the old run did
    old_behaviour = plan(phantom, out, host, ("nnunet.structure_intensity_pseudo", "none"))
    check_inputs(old_behaviour, stage_inputs(old_behaviour))  # both at their defaults: resumes
    textured = plan(phantom, out, host, ("nnunet.structure_intensity_pseudo", "none"),
                    ("nnunet.structure_intensity_texture", "0.3"))
    with pytest.raises(ConfigError, match=r"segment-r0 was finished with nnunet.structure_intensity_texture: 0.0 -> "
                                          r"0.3 \(recorded -> now\) \(and in segment-r1\)"):
        check_inputs(textured, stage_inputs(textured))
    assert records.changed_inputs({"a": 1}, {"a": 1, "b": 2}, {"b": 2}) == []
    assert records.changed_inputs({"a": 1, "b": 3}, {"a": 1, "b": 2}, {"b": 2}) == ["b: 3 -> 2"]


def test_settings_of_the_self_training_rounds_only_are_not_round_0_inputs(phantom, tmp_path, host):
    """Round 0 is computed without them: changing one keeps a trained round 0 (more rounds can
    be added with other self-training settings), and refuses a finished round 1."""
    out = tmp_path / "out"
    inputs = finish(plan(phantom, out, host), ["segment-r0"])
    for key in ("self_training_epochs", "structure_intensity_pseudo", "warm_start"):
        assert f"nnunet.{key}" not in inputs["segment-r0"] and f"nnunet.{key}" in inputs["segment-r1"]
    assert inputs["segment-r0"]["nnunet.num_epochs"] == NNUNET_CPU.num_epochs
    longer = plan(phantom, out, host, ("nnunet.self_training_epochs", "30"))
    check_inputs(longer, stage_inputs(longer))  # round 0 is reused
    finish(plan(phantom, out, host), ["segment-r1"])
    with pytest.raises(ConfigError, match=r"stage segment-r1 was finished with nnunet.self_training_epochs: 16 -> 30"):
        check_inputs(longer, stage_inputs(longer))
    # a round-0 record of an older vstk, which recorded them with round 0 too, resumes
    record_path = out / "state" / "segment-r0.json"
    record = json.loads(record_path.read_text())
    record["inputs"].update({"nnunet.self_training_epochs": 16, "nnunet.warm_start": True})
    record_path.write_text(json.dumps(record))
    same = plan(phantom, out, host)
    check_inputs(same, stage_inputs(same))


def test_a_run_whose_ear_boxes_would_cut_a_training_label_stops_before_training(phantom, tmp_path, host):
    options = dict(out=tmp_path / "out", translators=("cyclegan",), data=phantom / "train", ears="rule")
    with pytest.raises(InputError, match=r"voxels lie outside the ear boxes, up to [0-9.]+ mm") as error:
        plan_run(RunOptions(**options, ear_offset_mm=(70.0, -6.0, 2.0)), host)  # boxes beside the head
    assert error.value.path.name.endswith("_ceT1.nii.gz") and "--ear-offset" in error.value.fix
    plan_run(RunOptions(**options), host)  # the default boxes hold every label of the phantom
    assert not (tmp_path / "out" / "translators").exists()


def test_ear_crops_refuse_to_drop_labelled_voxels(phantom):
    from vstk.crossmoda import discover, load_case
    from vstk.roi import EarRule

    image, label = load_case(discover(phantom / "train", require_source=True).source[0], "ceT1")
    with pytest.raises(InputError, match="training case view__a: .* voxels lie outside the ear boxes"):
        stages.ear_crops(image, label, EarRule(size_mm=(8.0, 8.0, 8.0)), "view__a")
    crops = stages.ear_crops(image, label, EarRule(), "view__a")
    assert sum(int((c[3].array > 0).sum()) for c in crops) == int((label.array > 0).sum())


def test_the_paper_profile_segments_whole_volumes_and_cpu_the_ear_boxes(phantom, tmp_path, host):
    cpu = plan(phantom, tmp_path / "cpu", host)
    assert cpu.segment_rule is cpu.ear_rule and "segment_on" not in stage_inputs(cpu)["segment-r0"]
    paper = plan(phantom, tmp_path / "paper", host, profile="paper")
    assert paper.segment_rule is None and stage_inputs(paper)["segment-r0"]["segment_on"] == "whole"
    overridden = plan(phantom, tmp_path / "paper", host, profile="paper", segment_on="ears")
    assert overridden.segment_rule is overridden.ear_rule
    source = paper.train.source[0]  # a whole volume is one training case, named without an ear
    image, label = load_case(source, "ceT1")
    [(case_id, box, part, part_label)] = stages.segmenter_parts(image, label, paper.segment_rule, source.case_id)
    assert (case_id, box) == (source.case_id, None) and part is image and part_label is label
    with pytest.raises(ConfigError, match="--ears found crops every image.*--segment-on ears"):
        RunOptions(out=tmp_path / "x", profile="paper", ears="found")
    # not given, the ears are found where the segmenter works on ear boxes; an offset asks for the rule
    defaults = RunOptions(out=tmp_path / "x")
    assert (defaults.ears, RunOptions(out=tmp_path / "x", profile="paper").ears) == ("found", "rule")
    assert ear_settings(None, None)["ears"] is None and ear_settings((27.0, -6.0, 2.0), None)["ears"] == "rule"
    assert ear_settings((27.0, -6.0, 2.0), None, "found")["ears"] == "found"
    with pytest.raises(ConfigError, match="--segment-on 'all' is not known"):
        RunOptions(out=tmp_path / "x", segment_on="all")


def test_a_grey_tumour_view_is_translated_from_the_edited_ceT1(phantom, tmp_path, host):
    """``grey_tumour``: the pool's view is the translation of the ceT1 with its VS brought
    down, the label is the ceT1's own, and the setting is in the view's provenance."""
    from vstk.pool import Pool
    from vstk.translation.structures import grey_tumour

    folder, sources, targets = training_data(phantom)
    cyclegan = host.get("translator", "cyclegan")
    translators = {name: cyclegan(cyclegan.profile("cpu", **TINY, grey_tumour=grey), device="cpu")
                   for name, grey in (("plain", "0"), ("grey", "1"))}
    checkpoints = {name: stages.train_translator(translator, sources, targets, tmp_path / name)
                   for name, translator in translators.items()}
    case = folder.source[0]
    image, label = load_case(case, "ceT1")
    assert (label.array == 1).any()
    views = {}
    for name, translator in translators.items():
        pool_path = stages.build_pool(tmp_path / f"{name}.h5", {"cyclegan": translator},
                                      {"cyclegan": checkpoints[name]}, [case], [], host)
        with Pool(pool_path) as pool:
            views[name] = pool.read_image("cyclegan", case.case_id)
            assert np.array_equal(pool.read_label(case.case_id).array, label.array)
            assert pool.provenance("cyclegan", case.case_id)["translator_config"]["grey_tumour"] is (name == "grey")
    plain, grey = views["plain"], views["grey"]
    expected = translators["grey"].translate_volume(grey_tumour(image, label)).array
    assert np.allclose(grey.array, expected, atol=1e-3 * np.abs(expected).max())
    assert np.allclose(plain.array, translators["plain"].translate_volume(image).array,
                       atol=1e-3 * np.abs(expected).max())
    assert not np.allclose(grey.array, plain.array, atol=1e-3 * np.abs(expected).max())
