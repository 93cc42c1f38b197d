"""The label-guided structure intensity augmentation inside nnU-Net's real training transforms."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from scipy import ndimage
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from vstk.errors import ConfigError
from vstk_nnunet import NnUNetConfig
from vstk_nnunet.augmentation import (IntensityRemapTransform, LoadedCase, NotingDataset,
                                      StructureIntensityTransform, _smooth_noise, with_intensity_remap,
                                      with_structure_intensity)


def _sample(shape=(48, 48), seed=0):
    """A noisy patch with a bright disc (label 1) and a small dark square (label 2)."""
    rng = np.random.default_rng(seed)
    image = rng.normal(0.0, 0.3, shape).astype(np.float32)
    seg = np.zeros(shape, np.int16)
    yy, xx = np.indices(shape[-2:])
    disc = (yy - 20) ** 2 + (xx - 20) ** 2 <= 36
    seg[..., disc] = 1
    image[..., disc] += 3.0
    seg[..., 35:39, 35:39] = 2
    image[..., 35:39, 35:39] -= 1.0
    seg[..., 0, :] = -1  # nnU-Net's padding outside the image
    return {"image": torch.from_numpy(image)[None], "segmentation": torch.from_numpy(seg)[None]}


def _ring(seg: np.ndarray, label: int) -> np.ndarray:
    """Voxels within one voxel of the structure (its softened edge), the structure included."""
    mask = seg == label
    return ndimage.binary_dilation(mask, structure=np.ones((3,) * mask.ndim, bool))


@pytest.mark.parametrize("shape", [(48, 48), (6, 48, 48)])
def test_altered_structures_get_a_new_mean_inside_the_patch_range_and_nothing_else_changes(shape):
    np.random.seed(3)
    before = _sample(shape)
    original = before["image"].clone()
    seg = before["segmentation"][0].numpy()
    after = StructureIntensityTransform(labels=(1, 2), probability=1.0)(**{k: v.clone() for k, v in before.items()})
    image = after["image"][0].numpy()
    near = _ring(seg, 1) | _ring(seg, 2)
    np.testing.assert_array_equal(image[~near], original[0].numpy()[~near])
    low, high = np.quantile(original[0].numpy(), [0.01, 0.99])
    for label in (1, 2):
        old_mean, new_mean = original[0].numpy()[seg == label].mean(), image[seg == label].mean()
        assert new_mean != pytest.approx(old_mean, abs=1e-3)
        assert low - 0.05 <= new_mean <= high + 0.05
    torch.testing.assert_close(after["segmentation"], before["segmentation"])  # labels untouched


def test_probability_zero_changes_nothing_and_a_seeded_run_repeats():
    sample = _sample()
    untouched = StructureIntensityTransform((1, 2), 0.0)(**{k: v.clone() for k, v in sample.items()})
    torch.testing.assert_close(untouched["image"], sample["image"])
    outputs = []
    for _ in range(2):
        np.random.seed(11)
        outputs.append(StructureIntensityTransform((1, 2), 0.5)(**{k: v.clone() for k, v in sample.items()})["image"])
    torch.testing.assert_close(outputs[0], outputs[1])


def test_half_the_patches_are_altered_at_probability_one_half():
    np.random.seed(0)
    sample = _sample()
    transform = StructureIntensityTransform((1,), 0.5)
    changed = sum(not torch.equal(transform(**{k: v.clone() for k, v in sample.items()})["image"], sample["image"])
                  for _ in range(200))
    assert 70 <= changed <= 130


def test_it_runs_inside_nnunets_own_training_pipeline_after_the_spatial_transform():
    patch = (40, 40)
    stock = nnUNetTrainer.get_training_transforms(patch, (0.0, 0.0), None, (0, 1), False,
                                                  foreground_labels=(1, 2))
    composed = with_structure_intensity(stock, (1, 2), 1.0)
    names = [type(t).__name__ for t in composed.transforms]
    assert names[names.index("SpatialTransform") + 1] == "StructureIntensityTransform"
    sample = _sample((48, 48))
    np.random.seed(0)
    out = composed(**sample)
    assert out["image"].shape == (1, *patch) and torch.isfinite(out["image"]).all()
    assert set(np.unique(out["segmentation"].numpy())) <= {0, 1, 2}
    unchanged = nnUNetTrainer.get_training_transforms(patch, (0.0, 0.0), None, (0, 1), False,
                                                      foreground_labels=(1, 2))
    assert with_structure_intensity(unchanged, (1, 2), 0.0) is unchanged


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_a_probability_outside_zero_one_is_refused(value):
    with pytest.raises(ConfigError, match="structure_intensity"):
        NnUNetConfig(structure_intensity=value)
    with pytest.raises(ValueError, match="probability"):
        StructureIntensityTransform((1,), value)


def test_the_result_is_the_soft_blend_of_the_recoloured_structure_computed_on_the_whole_patch():
    sample = _sample((6, 40, 40))
    image, seg = sample["image"][0].clone(), sample["segmentation"][0]
    np.random.seed(5)
    out = StructureIntensityTransform((1,), 1.0)(**{k: v.clone() for k, v in sample.items()})["image"][0]
    np.random.seed(5)
    np.random.uniform()  # the draw that decides whether the structure is altered
    every = image.reshape(-1)[:: image.numel() // 4096 + 1]  # the bounds come from a strided sample
    low, high = torch.quantile(every, torch.tensor([0.01, 0.99])).tolist()
    target, scale = np.random.uniform(low, high), np.random.uniform(0.5, 1.5)
    mask = seg == 1
    weight = torch.nn.functional.avg_pool3d(mask.float()[None, None], 3, 1, 1, count_include_pad=False)[0, 0]
    expected = image + weight * (target + scale * (image - image[mask].mean()) - image)
    torch.testing.assert_close(out, expected)


def _drawn_means(sample: dict, transform: StructureIntensityTransform, draws: int = 200):
    """The VS's and the cochlea's means inside their softened edges (weight 1, where a
    structure's mean is its drawn mean up to noise) over ``draws`` seeded applications."""
    seg = sample["segmentation"][0].numpy()
    inner = {label: ndimage.binary_erosion(seg == label, structure=np.ones((3, 3), bool)) for label in (1, 2)}
    np.random.seed(0)
    means: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(draws):
        image = transform(**{k: v.clone() for k, v in sample.items()})["image"][0].numpy()
        for label in (1, 2):
            means[label].append(image[inner[label]].mean())
    return means[1], means[2]


def test_a_label_with_a_lower_upper_quantile_stays_below_it_and_the_others_keep_the_full_range():
    sample = _sample((48, 48))
    original = sample["image"][0].numpy()
    low, cap, high = np.quantile(original, [0.01, 0.5, 0.99])
    vs_means, cochlea_means = _drawn_means(sample, StructureIntensityTransform((1, 2), 1.0, upper_quantiles={1: 0.5}))
    # the VS's new means spread over [1st percentile, median]; the cochlea's up to the 99th
    assert low - 0.1 <= min(vs_means) and max(vs_means) <= cap + 0.1
    assert max(vs_means) > cap - 0.3 * (cap - low) and max(cochlea_means) > cap + 0.5 * (high - cap)
    with pytest.raises(ValueError, match="upper quantile 0.005 of label 1"):
        StructureIntensityTransform((1,), 1.0, upper_quantiles={1: 0.005})
    with pytest.raises(ConfigError, match="structure_intensity_vs_max=1.5"):
        NnUNetConfig(structure_intensity_vs_max=1.5)


class _Cases:
    """A minimal stand-in for nnU-Net's dataset: the two members its data loader uses."""

    identifiers = ["view1", "real1"]

    def load_case(self, identifier):
        return identifier


def test_a_case_of_its_own_probability_is_recognised_by_the_note_the_dataset_writes():
    note = LoadedCase()
    dataset = NotingDataset(_Cases(), note)
    transform = StructureIntensityTransform((1, 2), 1.0, case_probability={"real1": 0.0}, loaded=note)
    sample = _sample()
    for case, altered in (("real1", False), ("view1", True), ("real1", False)):
        assert dataset.load_case(case) == case and note.identifier == case
        out = transform(**{k: v.clone() for k, v in sample.items()})
        assert torch.equal(out["image"], sample["image"]) != altered, case
    assert dataset.identifiers == ["view1", "real1"]  # everything else is the wrapped dataset's

    # a pickled loader (an augmentation worker's copy) keeps dataset and transform on one note
    dataset2, transform2 = pickle.loads(pickle.dumps((dataset, transform)))
    dataset2.load_case("view1")
    assert transform2.loaded is dataset2._note and transform2.loaded.identifier == "view1"
    assert note.identifier == "real1"

    stock = nnUNetTrainer.get_training_transforms((40, 40), (0.0, 0.0), None, (0, 1), False,
                                                  foreground_labels=(1, 2))
    # probability 0 for the views but not for some cases: the transform is still inserted
    composed = with_structure_intensity(stock, (1, 2), 0.0, case_probability={"real1": 0.5}, loaded=note)
    assert "StructureIntensityTransform" in [type(t).__name__ for t in composed.transforms]
    with pytest.raises(ValueError, match="needs the LoadedCase"):
        StructureIntensityTransform((1,), 1.0, case_probability={"real1": 0.0})
    with pytest.raises(ValueError, match="probability must be in"):
        StructureIntensityTransform((1,), 1.0, case_probability={"real1": 1.5}, loaded=note)
    with pytest.raises(ConfigError, match="structure_intensity_pseudo=1.5"):
        NnUNetConfig(structure_intensity_pseudo=1.5)


def test_invert_negates_the_inner_contrast_and_texture_adds_a_smooth_field_inside_the_structure():
    sample = _sample((64, 64))
    original = sample["image"][0].numpy()
    seg = sample["segmentation"][0].numpy()
    inner = ndimage.binary_erosion(seg == 1, structure=np.ones((3, 3), bool))  # weight 1: no blending
    deviation = original[inner] - original[seg == 1].mean()

    np.random.seed(2)
    inverted = StructureIntensityTransform((1,), 1.0, contrast=(1.0, 1.0), invert=1.0)(
        **{k: v.clone() for k, v in sample.items()})["image"][0].numpy()
    new = inverted[inner] - inverted[inner].mean()
    assert np.corrcoef(new, deviation)[0, 1] < -0.99  # the same pattern, upside down

    low, high = np.quantile(original, [0.01, 0.99])
    residuals = []
    for seed in range(20):
        np.random.seed(seed)
        out = StructureIntensityTransform((1,), 1.0, contrast=(1.0, 1.0), texture=0.5)(
            **{k: v.clone() for k, v in sample.items()})["image"][0].numpy()
        assert np.array_equal(out[~_ring(seg, 1)], original[~_ring(seg, 1)])  # nothing outside changes
        added = out[inner] - out[inner].mean() - (deviation - deviation.mean())  # what the texture added
        residuals.append(added.std())
    assert 0.0 < max(residuals) <= 0.5 * (high - low) * 1.1
    # the field is smooth: neighbouring voxels inside the structure agree far more than noise would
    np.random.seed(4)
    field = _smooth_noise((40, 40), (4.0, 4.0)).numpy()
    assert abs(field.mean()) < 1e-4 and abs(field.std() - 1.0) < 1e-3
    assert np.corrcoef(field[:, 1:].ravel(), field[:, :-1].ravel())[0, 1] > 0.7
    with pytest.raises(ValueError, match="invert"):
        StructureIntensityTransform((1,), 1.0, invert=1.5)
    with pytest.raises(ValueError, match="texture"):
        StructureIntensityTransform((1,), 1.0, texture=-0.1)
    for name in ("structure_intensity_invert", "structure_intensity_texture"):
        with pytest.raises(ConfigError, match=f"{name}=2"):
            NnUNetConfig(**{name: 2})


def _levels(shape=(48, 48)):
    """A patch of four flat tissue classes 0, 1, 2, 3 (in quarters of the columns)."""
    image = np.repeat(np.arange(4, dtype=np.float32), shape[-1] // 4)
    return {"image": torch.from_numpy(np.broadcast_to(image, shape).copy())[None],
            "segmentation": torch.zeros((1, *shape), dtype=torch.int16)}


def test_the_intensity_remap_sends_each_tissue_through_one_random_curve_within_the_patch_range():
    np.random.seed(5)
    sample = _levels()
    transform = IntensityRemapTransform(1.0, points=4, quantiles=(0.0, 1.0))
    orders = set()
    for _ in range(60):
        image = transform(**{k: v.clone() for k, v in sample.items()})["image"][0].numpy()
        values = image[0, ::12]  # one value per tissue class
        # a class stays one value (a function of intensity), inside the patch's range
        for k, value in enumerate(values):
            np.testing.assert_allclose(image[:, 12 * k:12 * k + 12], value)
        assert values.min() >= 0.0 - 1e-6 and values.max() <= 3.0 + 1e-6
        orders.add(tuple(np.argsort(values)))
    # with 4 control points at the 4 levels each class gets its own random value: the tissues'
    # intensity order is shuffled (not only flipped)
    assert len(orders) >= 12
    torch.testing.assert_close(transform(**{k: v.clone() for k, v in sample.items()})["segmentation"],
                               sample["segmentation"])


def test_a_two_point_remap_is_linear_and_values_beyond_the_quantiles_take_the_end_values():
    np.random.seed(2)
    ramp = torch.linspace(-1.0, 2.0, 301).reshape(1, 7, 43)[..., :43]
    image = IntensityRemapTransform(1.0, points=2, quantiles=(0.0, 1.0))(image=ramp.clone())["image"]
    inside = (ramp >= -1.0) & (ramp <= 2.0)
    fit = np.polyfit(ramp[inside].numpy(), image[inside].numpy(), 1)
    np.testing.assert_allclose(np.polyval(fit, ramp[inside].numpy()), image[inside].numpy(), atol=1e-4)
    clipped = IntensityRemapTransform(1.0, points=3, quantiles=(0.25, 0.75))
    np.random.seed(4)
    out = clipped(image=ramp.clone())["image"].reshape(-1).numpy()
    low, high = np.quantile(ramp.reshape(-1).numpy(), [0.25, 0.75])
    flat = ramp.reshape(-1).numpy()
    assert np.ptp(out[flat <= low]) < 1e-5 and np.ptp(out[flat >= high]) < 1e-5


def test_the_remap_skips_pseudo_labelled_cases_and_runs_in_nnunets_pipeline_after_the_structure_step():
    note = LoadedCase()
    transform = IntensityRemapTransform(1.0, case_probability={"real1": 0.0}, loaded=note)
    sample = _sample()
    for case, altered in (("real1", False), ("view1", True)):
        note.identifier = case
        out = transform(**{k: v.clone() for k, v in sample.items()})
        assert torch.equal(out["image"], sample["image"]) != altered, case
    np.random.seed(0)
    half = IntensityRemapTransform(0.5)
    changed = sum(not torch.equal(half(**{k: v.clone() for k, v in sample.items()})["image"], sample["image"])
                  for _ in range(200))
    assert 70 <= changed <= 130

    stock = nnUNetTrainer.get_training_transforms((40, 40), (0.0, 0.0), None, (0, 1), False,
                                                  foreground_labels=(1, 2))
    composed = with_intensity_remap(with_structure_intensity(stock, (1, 2), 1.0), 1.0, 4)
    names = [type(t).__name__ for t in composed.transforms]
    at = names.index("SpatialTransform")
    assert names[at + 1:at + 3] == ["StructureIntensityTransform", "IntensityRemapTransform"]
    np.random.seed(0)
    out = composed(**_sample((48, 48)))
    assert out["image"].shape == (1, 40, 40) and torch.isfinite(out["image"]).all()
    plain = nnUNetTrainer.get_training_transforms((40, 40), (0.0, 0.0), None, (0, 1), False,
                                                  foreground_labels=(1, 2))
    assert with_intensity_remap(plain, 0.0) is plain
    with pytest.raises(ValueError, match="needs the LoadedCase"):
        IntensityRemapTransform(1.0, case_probability={"real1": 0.0})
    with pytest.raises(ValueError, match="2 control points"):
        IntensityRemapTransform(1.0, points=1)
    with pytest.raises(ConfigError, match="intensity_remap=1.5"):
        NnUNetConfig(intensity_remap=1.5)
    with pytest.raises(ConfigError, match="intensity_remap_points=1"):
        NnUNetConfig(intensity_remap_points=1)


def test_a_label_with_a_higher_lower_quantile_stays_above_it_and_the_others_keep_the_full_range():
    sample = _sample((48, 48))
    original = sample["image"][0].numpy()
    low, floor, high = np.quantile(original, [0.01, 0.75, 0.99])
    vs_means, cochlea_means = _drawn_means(sample, StructureIntensityTransform((1, 2), 1.0, lower_quantiles={2: 0.75}))
    # the cochlea's new means spread over [75th, 99th percentile]; the VS's down to the 1st
    assert floor - 0.1 <= min(cochlea_means) and max(cochlea_means) <= high + 0.1
    assert min(cochlea_means) < floor + 0.3 * (high - floor) and min(vs_means) < floor - 0.5 * (floor - low)
    with pytest.raises(ValueError, match="lower quantile 0.995 of label 2"):
        StructureIntensityTransform((2,), 1.0, lower_quantiles={2: 0.995})
    with pytest.raises(ValueError, match="lower quantile 0.6 of label 1"):
        StructureIntensityTransform((1,), 1.0, upper_quantiles={1: 0.5}, lower_quantiles={1: 0.6})
    with pytest.raises(ConfigError, match="structure_intensity_cochlea_min=0.995"):
        NnUNetConfig(structure_intensity_cochlea_min=0.995)


def _tumour_in_dark_fluid(shape=(48, 48)):
    """A grey disc (label 1) in dark surroundings with a bright patch corner (the fluid level)
    and a cochlea (label 2) touching the disc."""
    rng = np.random.default_rng(5)
    image = rng.normal(0.0, 0.05, shape).astype(np.float32)
    seg = np.zeros(shape, np.int16)
    yy, xx = np.indices(shape)
    disc = (yy - 24) ** 2 + (xx - 24) ** 2 <= 25
    seg[disc] = 1
    image[disc] = 0.5
    seg[23:26, 30:33] = 2  # touches the disc's outline
    image[40:, 40:] = 2.0  # the brightest corner: fluid elsewhere in the patch
    seg[0, :] = -1
    return {"image": torch.from_numpy(image)[None], "segmentation": torch.from_numpy(seg)[None]}, disc


def test_the_fluid_rim_is_drawn_bright_around_the_tumour_and_touches_no_label():
    from vstk_nnunet.augmentation import FluidRimTransform

    sample, disc = _tumour_in_dark_fluid()
    original = sample["image"][0].numpy().copy()
    seg = sample["segmentation"][0].numpy()
    np.random.seed(2)
    out = FluidRimTransform(1, 1.0, width=(2.0, 2.0), coverage=(1.0, 1.0))(**{k: v.clone() for k, v in sample.items()})
    image = out["image"][0].numpy()
    np.testing.assert_array_equal(image[seg != 0], original[seg != 0])  # tumour, cochlea, padding kept
    distance = ndimage.distance_transform_edt(~disc)
    rim = (distance > 0) & (distance <= 2.0) & (seg == 0)
    low, high = np.quantile(original, [0.01, 0.99])
    # brighter than the tumour by the margin, within the patch's bright range
    assert image[rim].mean() >= 0.5 + 0.2 * (high - low) - 0.05 and image[rim].mean() <= high + 0.05
    assert image[rim].mean() > original[rim].mean() + 0.5
    far = distance > 4.0  # beyond the rim and its one-voxel soft edge
    np.testing.assert_array_equal(image[far], original[far])
    torch.testing.assert_close(out["segmentation"], sample["segmentation"])


def test_the_fluid_rim_covers_a_share_of_the_outline_and_skips_what_it_must():
    from vstk_nnunet.augmentation import FluidRimTransform

    sample, disc = _tumour_in_dark_fluid()
    seg = sample["segmentation"][0].numpy()
    rim = (ndimage.distance_transform_edt(~disc) <= 2.0) & (seg == 0)
    brightened = []
    for seed in range(20):
        np.random.seed(seed)
        out = FluidRimTransform(1, 1.0, width=(2.0, 2.0), coverage=(0.3, 0.3))(**{k: v.clone() for k, v in sample.items()})
        brightened.append((out["image"][0].numpy() - sample["image"][0].numpy())[rim] > 0.3)
    shares = [b.mean() for b in brightened]
    assert all(0.2 <= s <= 0.6 for s in shares), shares  # about 30% of the rim, plus its soft edge
    assert len({b.tobytes() for b in brightened}) > 10  # a different part of the outline each time

    # a tumour already as bright as the fluid gets no rim; no tumour in the patch, no change
    bright = {k: v.clone() for k, v in sample.items()}
    bright["image"][0][torch.from_numpy(disc)] = 2.0
    np.random.seed(0)
    torch.testing.assert_close(FluidRimTransform(1, 1.0)(**{k: v.clone() for k, v in bright.items()})["image"],
                               bright["image"])
    empty = {"image": sample["image"].clone(), "segmentation": torch.zeros_like(sample["segmentation"])}
    torch.testing.assert_close(FluidRimTransform(1, 1.0)(**empty)["image"], sample["image"])
    # the real target images (their fluid is real) are never touched
    note = LoadedCase()
    note.identifier = "pseudo_r1__case"
    transform = FluidRimTransform(1, 1.0, case_probability={"pseudo_r1__case": 0.0}, loaded=note)
    torch.testing.assert_close(transform(**{k: v.clone() for k, v in sample.items()})["image"], sample["image"])
    for bad in ({"width": (0.1, 1.0)}, {"coverage": (0.0, 1.0)}, {"quantiles": (0.9, 0.5)}, {"margin": 1.0}):
        with pytest.raises(ValueError):
            FluidRimTransform(1, 1.0, **bad)
    with pytest.raises(ConfigError, match="fluid_rim=1.5"):
        NnUNetConfig(fluid_rim=1.5)


def test_the_fluid_rim_runs_in_nnunets_pipeline_between_the_structure_step_and_the_remap():
    from vstk_nnunet.augmentation import with_fluid_rim

    stock = nnUNetTrainer.get_training_transforms((40, 40), (0.0, 0.0), None, (0, 1), False,
                                                  foreground_labels=(1, 2))
    composed = with_intensity_remap(with_fluid_rim(with_structure_intensity(stock, (1, 2), 1.0), 1, 1.0), 1.0, 4)
    names = [type(t).__name__ for t in composed.transforms]
    at = names.index("SpatialTransform")
    assert names[at + 1:at + 4] == ["StructureIntensityTransform", "FluidRimTransform", "IntensityRemapTransform"]
    np.random.seed(0)
    out = composed(**_tumour_in_dark_fluid()[0])
    assert out["image"].shape == (1, 40, 40) and torch.isfinite(out["image"]).all()
    plain = nnUNetTrainer.get_training_transforms((40, 40), (0.0, 0.0), None, (0, 1), False,
                                                  foreground_labels=(1, 2))
    assert with_fluid_rim(plain, 1, 0.0) is plain


def test_an_erased_tumour_becomes_background_fluid_and_the_other_labels_stay():
    from vstk_nnunet.augmentation import FluidRimTransform

    sample, disc = _tumour_in_dark_fluid()
    original = sample["image"][0].numpy().copy()
    seg = sample["segmentation"][0].numpy().copy()
    np.random.seed(4)
    out = FluidRimTransform(1, 1.0, width=(2.0, 2.0), coverage=(1.0, 1.0), erase=1.0)(
        **{k: v.clone() for k, v in sample.items()})
    labels, image = out["segmentation"][0].numpy(), out["image"][0].numpy()
    assert not (labels == 1).any()  # the tumour is gone from the label ...
    np.testing.assert_array_equal(labels[~disc], seg[~disc])  # ... and nothing else changed there
    assert image[disc].mean() > original[disc].mean() + 0.5  # ... and it is bright fluid now
    low, high = np.quantile(original, [0.85, 0.99])
    assert low - 0.05 <= image[disc].mean() <= high + 0.05
    np.testing.assert_array_equal(image[seg == 2], original[seg == 2])  # the cochlea untouched
    with pytest.raises(ValueError, match="erase"):
        FluidRimTransform(1, 1.0, erase=1.5)
    with pytest.raises(ConfigError, match="fluid_rim_erase=-0.1"):
        NnUNetConfig(fluid_rim_erase=-0.1)
