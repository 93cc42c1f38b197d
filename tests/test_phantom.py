"""The procedural phantom: layout, determinism, labels, geometry and contrast of what it writes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from vstk.errors import ConfigError, InputError
from vstk.phantom import (
    CONTRASTS, MANIFEST, SITES, PhantomConfig, Population, generate_phantom, load_manifest, save_overview_png,
    site_protocols,
)
from vstk.phantom.anatomy import AnatomyParameters, Layer, Subject, Tissue
from vstk.phantom.rendering import AcquisitionProtocol, Grid, Pose, mean_intensity, render
from vstk.phantom.solids import Ellipsoid
from vstk.volume import read_nifti

# Half the matrix size of the real protocols: 8 small cases in a couple of seconds.
SMALL = PhantomConfig(cases=2, seed=7, resolution_scale=0.5, geometry="slab")
NAME = re.compile(r"^crossmoda2022_(?P<site>ldn|etz)_(?P<id>\d+)_(?P<mod>ceT1|hrT2|Label)\.nii\.gz$")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom") / "data"
    generate_phantom(out, SMALL)
    return out


def _cases(out: Path, split: str) -> list[dict]:
    return [c for c in load_manifest(out)["cases"] if c["split"] == split]


def _ball(image, centre_mm, radius_mm: float) -> np.ndarray:
    """Values of ``image`` at the voxels within ``radius_mm`` of a physical point (x, y, z)."""
    z, y, x = np.indices(image.shape)
    k, j, i = image.physical_to_index(centre_mm)
    sx, sy, sz = image.spacing
    inside = ((x - i) * sx) ** 2 + ((y - j) * sy) ** 2 + ((z - k) * sz) ** 2 <= radius_mm ** 2
    assert inside.sum() >= 3, f"too few voxels around {centre_mm}"
    return image.array[inside]


def test_same_seed_gives_identical_arrays_and_another_seed_differs(tmp_path):
    tiny = PhantomConfig(cases=2, seed=7, resolution_scale=0.3, geometry="slab")
    first, again, other = tmp_path / "first", tmp_path / "again", tmp_path / "other"
    generate_phantom(first, tiny)
    generate_phantom(again, tiny)
    generate_phantom(other, PhantomConfig(cases=2, seed=8, resolution_scale=0.3, geometry="slab"))
    files = sorted(p.relative_to(first) for p in first.rglob("*.nii.gz"))
    assert len(files) == 16 and files == sorted(p.relative_to(again) for p in again.rglob("*.nii.gz"))
    for rel in files:
        a, b, c = (read_nifti(root / rel) for root in (first, again, other))
        assert a.array.dtype == b.array.dtype and a.array.tobytes() == b.array.tobytes(), rel
        assert a.same_grid(b)
        assert not np.array_equal(a.array, c.array), rel
    assert load_manifest(first)["cases"] == load_manifest(again)["cases"]


def test_splits_use_crossmoda_names_with_unique_ids_and_both_sites(phantom):
    by_split: dict[str, list[re.Match]] = {}
    for folder in ("train", "test", "test_labels", "paired"):
        names = sorted(p.name for p in (phantom / folder).iterdir())
        assert names, folder
        matches = [NAME.match(n) for n in names]
        assert all(matches), [n for n, m in zip(names, matches) if not m]
        by_split[folder] = matches
    train_ce = {m["id"] for m in by_split["train"] if m["mod"] == "ceT1"}
    train_lab = {m["id"] for m in by_split["train"] if m["mod"] == "Label"}
    train_t2 = {m["id"] for m in by_split["train"] if m["mod"] == "hrT2"}
    test = {m["id"] for m in by_split["test"]}
    paired = {m["id"] for m in by_split["paired"]}
    assert len(train_ce) == len(train_t2) == SMALL.cases
    assert train_lab == train_ce  # every labelled ceT1 has its label, unlabelled hrT2 have none
    assert {m["id"] for m in by_split["test_labels"]} == test and len(test) == 2
    assert len(paired) == 2 and {m["mod"] for m in by_split["paired"]} == {"ceT1", "hrT2", "Label"}
    groups = [train_ce, train_t2, test, paired]
    assert sum(len(g) for g in groups) == len(set().union(*groups)), "ids repeat across splits"
    for folder, matches in by_split.items():
        assert {m["site"] for m in matches} == {"ldn", "etz"}, folder
    for mod in ("ceT1", "hrT2"):
        assert {m["site"] for m in by_split["train"] if m["mod"] == mod} == {"ldn", "etz"}

    manifest = json.loads((phantom / MANIFEST).read_text())
    assert manifest["counts"] == {"train_ceT1": 2, "train_hrT2": 2, "test": 2, "paired": 2}
    assert manifest["seed"] == 7 and manifest["config"]["cases"] == 2


def test_default_split_sizes_follow_case_count():
    config = PhantomConfig(cases=10)
    assert (config.n_test, config.n_paired) == (5, 2)
    assert (PhantomConfig(cases=2).n_test, PhantomConfig(cases=2).n_paired) == (2, 2)
    assert (PhantomConfig(cases=20).n_test, PhantomConfig(cases=20).n_paired) == (10, 5)


def test_every_label_is_uint8_with_a_vs_on_its_side_and_a_cochlea_in_each_ear(phantom):
    labelled = [c for c in load_manifest(phantom)["cases"] if "Label" in c["files"]]
    assert len(labelled) == 6
    for case in labelled:
        label = read_nifti(phantom / case["files"]["Label"])
        assert label.array.dtype == np.uint8
        assert set(np.unique(label.array)) == {0, 1, 2}, case["stem"]
        # LPS: +x is the patient's left. Split the volume at the brainstem's x.
        x_mid = label.physical_to_index(case["landmarks_mm"]["brainstem"])[2]
        x = np.arange(label.shape[2])[None, None, :]
        cochlea, vs = label.array == 2, label.array == 1
        assert (cochlea & (x < x_mid)).sum() >= 10 and (cochlea & (x > x_mid)).sum() >= 10, case["stem"]
        on_left = (vs & (x > x_mid)).sum() / vs.sum()
        assert on_left > 0.95 if case["vs"]["side"] == "left" else on_left < 0.05, case["stem"]
        voxel_mm3 = float(np.prod(label.spacing))
        assert case["vs"]["volume_mm3"] == pytest.approx(vs.sum() * voxel_mm3, abs=0.01)
        assert 40.0 < cochlea.sum() * voxel_mm3 < 250.0  # two cochleae, tens of mm3 each


def test_each_label_lies_on_the_grid_of_its_image(phantom):
    for case in load_manifest(phantom)["cases"]:
        files = case["files"]
        if "Label" not in files:
            continue
        label = read_nifti(phantom / files["Label"])
        for mod in ("ceT1", "hrT2"):
            if mod in files:
                image = read_nifti(phantom / files[mod])
                assert label.grid_mismatch(image) is None, (files[mod], label.grid_mismatch(image))
                assert image.array.dtype == np.float32


def test_ceT1_and_hrT2_grids_differ_but_paired_contrasts_share_one(phantom):
    for site in ("ldn", "etz"):
        grids = site_protocols(site, SMALL.resolution_scale)
        assert grids["ceT1"].spacing != grids["hrT2"].spacing
        assert grids["ceT1"].spacing[2] > grids["hrT2"].spacing[2]  # thicker ceT1 slices
    assert site_protocols("ldn")["ceT1"] != site_protocols("etz")["ceT1"]
    ce = read_nifti(next((phantom / "train").glob("crossmoda2022_ldn_*_ceT1.nii.gz")))
    t2 = read_nifti(next((phantom / "train").glob("crossmoda2022_ldn_*_hrT2.nii.gz")))
    assert not np.allclose(ce.spacing, t2.spacing) and ce.shape != t2.shape
    for case in _cases(phantom, "paired"):
        images = [read_nifti(phantom / case["files"][m]) for m in ("ceT1", "hrT2", "Label")]
        assert images[0].same_grid(images[1]) and images[0].same_grid(images[2])
        assert np.allclose(images[0].spacing, site_protocols(case["site"], 0.5)["ceT1"].spacing)
        assert not np.array_equal(images[0].array, images[1].array)


def test_acquisitions_differ_in_head_pose(phantom):
    poses = [(c["pose"]["rotation_z_deg"], *c["pose"]["shift_mm"]) for c in load_manifest(phantom)["cases"]]
    assert len(set(poses)) == len(poses)
    assert all(abs(p[0]) <= SMALL.pose_rotation_deg for p in poses)
    assert max(abs(p[0]) for p in poses) > 0.5 and max(np.abs(p[1:]).max() for p in poses) > 0.5


def test_paired_contrasts_invert_fluid_and_tumour_as_in_mr(phantom):
    for case in _cases(phantom, "paired"):
        ce, t2, label = (read_nifti(phantom / case["files"][m]) for m in ("ceT1", "hrT2", "Label"))
        vs, cochlea = label.array == 1, label.array == 2
        brain = {name: _ball(image, case["landmarks_mm"]["brainstem"], 4.0) for name, image in
                 (("ce", ce), ("t2", t2))}
        csf = {name: _ball(image, case["landmarks_mm"]["fourth_ventricle"], 1.5).mean() for name, image in
               (("ce", ce), ("t2", t2))}
        brain_std = brain["t2"].std()
        brain = {name: values.mean() for name, values in brain.items()}
        # Fluid: dark on ceT1, bright on hrT2 (CSF and cochlear fluid alike).
        assert csf["ce"] < 0.5 * brain["ce"] and csf["t2"] > 2.0 * brain["t2"], case["stem"]
        assert t2.array[cochlea].mean() > 1.5 * brain["t2"], case["stem"]
        assert ce.array[cochlea].mean() < brain["ce"], case["stem"]
        # VS: enhancing on ceT1, grey (darker than the cochlea) on hrT2.
        assert ce.array[vs].mean() > 1.3 * brain["ce"], case["stem"]
        assert t2.array[vs].mean() < t2.array[cochlea].mean(), case["stem"]
        # The fluid core of the cochlea is far brighter than the bulk of the tumour (robust to cysts).
        assert np.median(t2.array[vs]) < 0.8 * np.percentile(t2.array[cochlea], 90), case["stem"]
        # and heterogeneous on hrT2: more spread inside the tumour than noise gives in the brainstem.
        assert t2.array[vs].std() > 1.5 * brain_std, case["stem"]


def test_images_are_non_negative_float32_in_an_mr_range(phantom):
    for path in sorted(phantom.rglob("*_ceT1.nii.gz")) + sorted(phantom.rglob("*_hrT2.nii.gz")):
        array = read_nifti(path).array
        assert array.dtype == np.float32
        assert array.min() >= 0.0 and np.isfinite(array).all()
        assert 300.0 < np.percentile(array, 99.5) < 2000.0, path.name
        assert np.percentile(array, 1) < 60.0, path.name  # air background near zero (Rician floor)


def test_rendering_has_partial_volume_while_labels_stay_crisp(phantom):
    from scipy.ndimage import binary_dilation

    for case in _cases(phantom, "paired"):
        t2 = read_nifti(phantom / case["files"]["hrT2"]).array
        label = read_nifti(phantom / case["files"]["Label"]).array
        cochlea = label == 2
        fluid = np.percentile(t2[cochlea], 95)
        # Just outside the thin cochlear duct many voxels mix fluid and bone (dark on hrT2).
        rim = binary_dilation(cochlea) & ~cochlea & (label == 0)
        mixed = (t2[rim] > 0.2 * fluid) & (t2[rim] < 0.8 * fluid)
        assert mixed.mean() > 0.3, case["stem"]
        assert np.array_equal(np.unique(label), [0, 1, 2])  # the label itself has no mixtures


def test_rerun_replaces_an_interrupted_phantom_but_refuses_a_foreign_folder(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not written by vstk phantom"):
        generate_phantom(foreign, SMALL)
    assert (foreign / "notes.txt").read_text() == "keep me"

    out = tmp_path / "phantom"
    generate_phantom(out, PhantomConfig(cases=2, seed=1, resolution_scale=0.3, geometry="slab"))
    # Simulate an interrupted rerun: no manifest, a stray half-written file.
    (out / MANIFEST).unlink()
    stray = out / "train" / ".crossmoda2022_ldn_99_ceT1.nii.gz.tmp.nii.gz"
    stray.write_bytes(b"partial")
    with pytest.raises(InputError, match="not a complete phantom"):
        load_manifest(out)
    summary = generate_phantom(out, PhantomConfig(cases=2, seed=1, resolution_scale=0.3, geometry="slab"))
    assert not stray.exists()
    assert (out / MANIFEST).is_file() and load_manifest(out)["counts"] == summary["counts"]
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.nii.gz"))
    assert written == sorted(summary["files"]) and len(written) == 2 * 2 + 2 + 2 * 2 + 2 * 3
    assert summary["seconds"] > 0


def test_config_rejects_splits_too_small_for_both_sites():
    for bad in (dict(cases=1), dict(test_cases=1), dict(paired_cases=0)):
        with pytest.raises(ConfigError, match=">= 2"):
            PhantomConfig(**bad)
    with pytest.raises(ConfigError, match="resolution_scale"):
        PhantomConfig(resolution_scale=5.0)


def test_overview_png_shows_every_paired_case(phantom, tmp_path):
    import matplotlib.image

    png = save_overview_png(phantom, tmp_path / "overview.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = matplotlib.image.imread(png).shape[:2]
    assert width > 1000 and height > 2 * 300  # 2 paired cases x 2 rows of 5 panels


def test_default_ear_boxes_hold_every_labelled_voxel(tmp_path):
    """vstk.roi's default boxes (the segmenter's crops) cover all VS and cochlea voxels of the
    phantom's labelled ceT1 and its labelled test hrT2, whatever the case."""
    from vstk.roi import EarRule, crop, ear_boxes

    out = tmp_path / "data"
    generate_phantom(out, PhantomConfig(cases=4, test_cases=4, paired_cases=2, seed=11, resolution_scale=0.5,
                                        geometry="slab"))
    labels = sorted((out / "train").glob("*_Label.nii.gz")) + sorted((out / "test_labels").glob("*_Label.nii.gz"))
    assert len(labels) == 8
    for path in labels:
        label = read_nifti(path)
        inside = sum(int((crop(label, box).array > 0).sum()) for box in ear_boxes(label, EarRule()))
        assert inside == int((label.array > 0).sum()) > 0, f"{path.name}: labelled voxels outside the ear boxes"


def test_target_labels_add_truth_on_the_training_hrt2_grids_and_change_no_image(tmp_path):
    tiny = PhantomConfig(cases=2, seed=7, resolution_scale=0.3, geometry="slab")
    plain, labelled = tmp_path / "plain", tmp_path / "labelled"
    generate_phantom(plain, tiny)
    generate_phantom(labelled, PhantomConfig(cases=2, seed=7, resolution_scale=0.3, target_labels=True,
                                             geometry="slab"))
    images = sorted(p.relative_to(plain) for p in plain.rglob("*.nii.gz"))
    assert images == sorted(p.relative_to(labelled) for p in labelled.rglob("*.nii.gz")
                            if p.parent.name != "train_hrT2_labels")
    for rel in images:
        assert read_nifti(plain / rel).array.tobytes() == read_nifti(labelled / rel).array.tobytes(), rel
    targets = _cases(labelled, "train_hrT2")
    assert len(targets) == 2 and not (plain / "train_hrT2_labels").exists()
    for case in targets:
        image = read_nifti(labelled / "train" / f"{case['stem']}_hrT2.nii.gz")
        label = read_nifti(labelled / "train_hrT2_labels" / f"{case['stem']}_Label.nii.gz")
        assert label.same_grid(image) and set(np.unique(label.array)) == {0, 1, 2}
        assert case["files"]["Label"] == f"train_hrT2_labels/{case['stem']}_Label.nii.gz"
        # the VS is where the hrT2 shows it: grey tumour, darker than the fluid-bright cochleae
        assert np.median(image.array[label.array == 2]) > np.median(image.array[label.array == 1])


@pytest.fixture(scope="module")
def crossmoda(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("crossmoda") / "data"
    generate_phantom(out, PhantomConfig(cases=2, seed=7, resolution_scale=0.3, geometry="crossmoda",
                                        target_labels=True))
    return out


def test_crossmoda_geometry_has_whole_head_ceT1_and_hrT2_slabs_of_the_real_protocols(crossmoda):
    for record in load_manifest(crossmoda)["cases"]:
        contrast = "ceT1" if "ceT1" in record["files"] else "hrT2"
        image = read_nifti(crossmoda / record["files"][contrast])
        label = read_nifti(crossmoda / record["files"]["Label"])
        assert label.same_grid(image)
        fov = np.asarray(image.spacing) * np.asarray(image.size_xyz)
        if contrast == "ceT1":  # London 512 x 0.4 mm, Tilburg 256 x 0.8 mm: about 205 mm, 165 mm in z
            assert np.allclose(fov[:2], 204.8, atol=1.0) and 160 <= fov[2] <= 170, (record["stem"], fov)
        else:  # London 384 or 448 x 0.5 mm, Tilburg 512 x 0.4 mm; a slab 40-70 mm thick
            assert 190 <= fov[0] <= 226 and 38 <= fov[2] <= 72, (record["stem"], fov)
        turn = np.degrees(np.arctan2(image.direction_matrix[1, 0], image.direction_matrix[0, 0]))
        assert 0 < abs(turn) <= 8.0 + 1e-6  # an oblique grid, kept in the direction matrix
        for side in ("left", "right"):  # both cochleae inside the image and labelled there
            k, j, i = np.round(image.physical_to_index(record["landmarks_mm"][f"cochlea_{side}"])).astype(int)
            assert 0 <= k < image.shape[0] and 0 <= j < image.shape[1] and 0 <= i < image.shape[2]
        assert (label.array == 2).sum() > 0


def test_crossmoda_geometry_puts_the_canals_far_below_a_ceT1_centre_and_near_an_hrT2_centre(crossmoda):
    heights = {"ceT1": [], "hrT2": []}
    for record in load_manifest(crossmoda)["cases"]:
        contrast = "ceT1" if "ceT1" in record["files"] else "hrT2"
        image = read_nifti(crossmoda / record["files"][contrast])
        canals = np.mean([record["landmarks_mm"][f"fundus_{side}"] for side in ("left", "right")], axis=0)
        heights[contrast].append(float((image.direction_matrix.T @ (canals - image.centre))[2]))
    assert max(heights["ceT1"]) < -10.0  # several centimetres below the whole-head centre
    assert max(abs(h) for h in heights["hrT2"]) < 15.0  # a slab planned on the canals, a few mm off


def test_crossmoda_overview_draws_whole_volumes(crossmoda, tmp_path):
    path = save_overview_png(crossmoda, tmp_path / "overview.png")
    assert path.stat().st_size > 50_000


def test_an_unknown_geometry_is_refused():
    with pytest.raises(ConfigError, match="geometry 'whole' is not known"):
        PhantomConfig(geometry="whole")


# --- vary: one drawn population per seed ---------------------------------------------------
CE, T2 = CONTRASTS.index("ceT1"), CONTRASTS.index("hrT2")


def _render_one_tissue(tissue: Tissue, intensity: np.ndarray | None = None) -> np.ndarray:
    """A 40 mm ball of one tissue (no jitter, no texture) rendered on a 2 mm grid, noise-free:
    the value of a voxel 1.7 mm from its centre (the very centre has no distance gradient)."""
    subject = Subject(1, (Layer("ball", Ellipsoid(np.ones(3), np.full(3, 20.0)), tissue),),
                      np.ones((len(Tissue), 2)), {}, {})
    grid = Grid.centred(AcquisitionProtocol((2.0, 2.0, 2.0), (9, 9, 9)), np.zeros(3))
    extra = () if intensity is None else (intensity,)
    images, _ = render(subject, grid, Pose(), CONTRASTS, *extra)
    return np.array([images[c][4, 4, 4] for c in CONTRASTS])


def test_without_vary_no_population_is_drawn_and_the_fixed_table_is_rendered(tmp_path, monkeypatch):
    def refuse(cls, seed):
        raise AssertionError("Population.draw called without vary")

    monkeypatch.setattr(Population, "draw", classmethod(refuse))
    population = PhantomConfig(seed=7, geometry="slab").population()
    assert population == Population.fixed() and population.seed is None
    assert np.array_equal(population.intensity_table(), mean_intensity())
    assert (population.noise_factor, population.bias_factor) == (1.0, 1.0)
    assert population.anatomy == AnatomyParameters()
    for site in SITES:
        assert population.site_protocols(site, 0.3) == site_protocols(site, 0.3)
    for tissue in (Tissue.CSF, Tissue.VS, Tissue.COCHLEA, Tissue.WHITE):
        assert np.allclose(_render_one_tissue(tissue), mean_intensity()[tissue], rtol=1e-6)
    out = tmp_path / "fixed"
    generate_phantom(out, PhantomConfig(cases=2, seed=7, resolution_scale=0.3, geometry="slab"))
    manifest = load_manifest(out)
    assert manifest["config"]["vary"] is False and manifest["population"] is None


def test_a_drawn_table_is_what_render_paints():
    table = Population.draw(5).intensity_table()
    assert not np.allclose(table, mean_intensity())
    for tissue in (Tissue.CSF, Tissue.VS, Tissue.GREY):
        assert np.allclose(_render_one_tissue(tissue, table), table[tissue], rtol=1e-6)


def test_populations_repeat_per_seed_and_differ_between_seeds():
    first, again, other = Population.draw(3), Population.draw(3), Population.draw(4)
    assert first == again and first.to_json() == again.to_json()
    assert not np.allclose(first.intensity_table(), other.intensity_table())
    assert first.protocols != other.protocols and first.anatomy != other.anatomy
    assert first.noise_factor != other.noise_factor and first.bias_factor != other.bias_factor
    assert first.protocols != Population.fixed().protocols


def test_drawn_contrasts_keep_what_defines_ceT1_and_hrT2():
    base = mean_intensity()
    redefined = {(Tissue.LABYRINTH, CE), (Tissue.LABYRINTH, T2), (Tissue.COCHLEA, T2), (Tissue.VS, CE),
                 (Tissue.VS, T2), (Tissue.VS_CYST, T2)}
    for seed in range(200):
        t = Population.draw(seed).intensity_table()
        ce, t2 = t[:, CE], t[:, T2]
        # hrT2: the fluids brightest, the VS grey at 0.3-0.6 of CSF, bone, air and flowing blood dark
        fluid = min(t2[Tissue.CSF], t2[Tissue.COCHLEA])
        assert t2[Tissue.LABYRINTH] == t2[Tissue.COCHLEA] >= 0.87 * t2[Tissue.CSF], seed
        assert 0.3 * t2[Tissue.CSF] - 0.01 <= t2[Tissue.VS] <= 0.6 * t2[Tissue.CSF] + 0.01, seed
        assert t2[Tissue.CSF] > t2[Tissue.VS] and t2[Tissue.COCHLEA] > 1.4 * t2[Tissue.VS], seed
        others = [x for x in Tissue if x not in (Tissue.CSF, Tissue.LABYRINTH, Tissue.COCHLEA)]
        assert t2[others].max() < fluid, seed
        assert max(t2[Tissue.BONE], t2[Tissue.AIR], t2[Tissue.VESSEL]) < 0.1 * t2[Tissue.CSF], seed
        # ceT1: CSF and the labyrinth dark, the VS enhancing above every brain tissue
        brain = ce[[Tissue.GREY, Tissue.WHITE, Tissue.BRAINSTEM]].max()
        assert ce[Tissue.VS] >= 1.34 * brain and ce[Tissue.VS] > ce[Tissue.GREY], seed
        assert ce[Tissue.CSF] < 0.5 * ce[Tissue.GREY] and ce[Tissue.COCHLEA] < ce[Tissue.GREY], seed
        # every other tissue within -20 % / +25 % of the fixed table
        for tissue in Tissue:
            for column in (CE, T2):
                if (tissue, column) not in redefined and base[tissue, column] > 0:
                    assert 0.79 <= t[tissue, column] / base[tissue, column] <= 1.26, (seed, tissue, column)


def test_drawn_protocols_and_anatomy_stay_within_their_ranges():
    slices = {"ceT1": (1.0, 1.5), "hrT2": (0.5, 1.0)}
    inplane = {"ceT1": (0.4, 0.6), "hrT2": (0.4, 0.7)}
    for seed in range(200):
        population = Population.draw(seed)
        for site in SITES:
            for contrast, protocol in population.site_protocols(site).items():
                sx, sy, sz = protocol.spacing
                assert sx == sy and inplane[contrast][0] <= sx <= inplane[contrast][1], (seed, site, contrast)
                assert slices[contrast][0] <= sz <= slices[contrast][1], (seed, site, contrast)
                assert all(isinstance(n, int) for n in protocol.size) and protocol.size[0] == protocol.size[1]
                fov = protocol.field_of_view_mm  # whole voxels: within half a voxel of the drawn field
                assert 100.0 - sx / 2 <= fov[0] <= 140.0 + sx / 2, (seed, site, contrast, fov)
                assert 45.0 - sz / 2 <= fov[2] <= 70.0 + sz / 2, (seed, site, contrast, fov)
        anatomy = population.anatomy
        assert 0.2 <= anatomy.intrameatal_fraction <= 0.5 and 0.85 <= anatomy.cochlea_scale <= 1.15
        low, high = anatomy.extrameatal_diameter_mm
        assert 8.0 <= low <= 12.0 and 18.0 <= high <= 22.0
        scale = np.asarray(anatomy.intrameatal_diameter_mm) / [3.0, 6.5]
        assert 0.85 - 0.01 <= scale.min() and scale.max() <= 1.15 + 0.01 and np.ptp(scale) < 0.01
        assert 0.06 <= anatomy.vs_texture_gain[0] <= 0.15 and 0.14 <= anatomy.vs_texture_gain[1] <= 0.32
        assert 0.6 <= population.noise_factor <= 1.6 and 0.5 <= population.bias_factor <= 1.5


def test_vary_phantom_writes_checks_and_records_its_population(tmp_path):
    from click.testing import CliRunner

    from vstk.cli import cli

    out = tmp_path / "varied"
    runner = CliRunner()
    assert "--vary" in runner.invoke(cli, ["phantom", "--help"]).output
    result = runner.invoke(cli, ["phantom", str(out), "--cases", "2", "--scale", "0.3", "--seed", "5", "--vary",
                                 "--geometry", "slab", "--no-png"])
    assert result.exit_code == 0, result.output
    check = runner.invoke(cli, ["data", "check", str(out / "train")])
    assert check.exit_code == 0, check.output
    assert "2 labelled ceT1, 2 hrT2" in check.output
    manifest = load_manifest(out)
    population = Population.draw(5)
    assert manifest["config"]["vary"] is True
    assert manifest["population"] == json.loads(json.dumps(population.to_json()))
    assert manifest["population"]["seed_sequence"] == [5, 0, 99]
    assert set(manifest["population"]["intensity"]) == {t.name.lower() for t in Tissue}
    for record in manifest["cases"]:  # every image on its site's drawn grid
        contrast = "ceT1" if record["split"] in ("train_ceT1", "paired") else "hrT2"
        drawn = population.site_protocols(record["site"], 0.3)[contrast]
        assert record["grid"]["size"] == list(drawn.size) and record["grid"]["spacing"] == list(drawn.spacing)
        image = read_nifti(out / record["files"][contrast])
        assert np.allclose(image.spacing, drawn.spacing, atol=1e-4)
        assert record["vs"]["kind"] == "intrameatal" or record["vs"]["diameter_mm"] <= 22.0


def test_the_command_line_offers_the_generators_geometries_and_default():
    from vstk.cli_options import DEFAULT_PHANTOM_GEOMETRY, PHANTOM_GEOMETRIES
    from vstk.phantom import DEFAULT_GEOMETRY, GEOMETRIES

    assert (PHANTOM_GEOMETRIES, DEFAULT_PHANTOM_GEOMETRY) == (GEOMETRIES, DEFAULT_GEOMETRY) == (GEOMETRIES, "crossmoda")
