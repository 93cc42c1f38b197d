"""The run's options and its plan: data, components and ear boxes, resolved and checked
before anything trains (shared by ``vstk run``, ``vstk bench`` and ``vstk predict``)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Sequence

from ..crossmoda import DataFolder, discover, load_case
from ..errors import ConfigError, InputError, format_value
from ..phantom import DEFAULT_GEOMETRY
from ..plugins import PluginHost
from ..resources import usable_cores
from ..roi import DEFAULT_OFFSET_MM, DEFAULT_SIZE_MM, EarRule, ear_boxes, labels_outside
from ..volume import Volume
from .regions import Region, crop_training_data, found_centres, regions_recorded
from ..components import Components, build_components, resolve_classes

log = logging.getLogger(__name__)


#: How the inner ears are placed: ``rule``, boxes at ``ear_offset_mm`` from the field-of-view
#: centre (vstk.roi.EarRule); ``found``, every image cropped to the region around its ears
#: found from its content first (vstk.pipeline.regions), the boxes placed inside that region.
#: Not given, a run finds them, unless its segmenter trains on whole volumes (nothing is cropped).
EAR_MODES = ("rule", "found")
#: What the segmenter trains on and predicts: ``ears``, the two ear boxes of every image (the
#: ``cpu`` profile's choice); ``whole``, whole volumes with nnU-Net's own preprocessing (the
#: paper's, the ``paper`` profile's default).
SEGMENT_ON = ("ears", "whole")


@dataclasses.dataclass(frozen=True)
class JobOptions:
    """What ``vstk run`` and ``vstk bench`` share: the data (the built-in phantom without
    ``data``), the components and their settings, self-training rounds, and the ear boxes."""

    out: Path
    translators: tuple[str, ...] = ("cyclegan", "qsattn")
    data: Path | None = None
    test: Path | None = None
    test_labels: Path | None = None
    profile: str = "cpu"
    rounds: int = 1
    segmenter: str = "nnunet"
    pseudo_labeler: str = "all"
    settings: tuple[tuple[str, str], ...] = ()
    device: str | None = None
    phantom_cases: int = 10
    phantom_seed: int = 0
    ear_offset_mm: tuple[float, float, float] = DEFAULT_OFFSET_MM
    ear_size_mm: tuple[float, float, float] = DEFAULT_SIZE_MM
    progress: bool | None = None
    ears: str | None = None
    phantom_geometry: str = DEFAULT_GEOMETRY
    segment_on: str | None = None

    def __post_init__(self) -> None:
        if self.ears is None:  # the ears are found wherever the segmenter works on ear boxes
            object.__setattr__(self, "ears", "rule" if self.segments_whole_volumes else "found")
        if self.ears not in EAR_MODES:
            raise ConfigError(f"--ears {self.ears!r} is not known", fix=f"use one of {', '.join(EAR_MODES)}")
        if self.segment_on is not None and self.segment_on not in SEGMENT_ON:
            raise ConfigError(f"--segment-on {self.segment_on!r} is not known", fix=f"use one of {', '.join(SEGMENT_ON)}")
        if self.segments_whole_volumes and self.ears == "found":
            raise ConfigError("--ears found crops every image to its ear region, but the segmenter is to train on "
                              "whole volumes (--segment-on whole, the paper profile's default)",
                              fix="drop --ears found, or pass --segment-on ears")
        if not self.translators:
            raise ConfigError("no translator named", fix="e.g. --translators cyclegan,qsattn")
        if len(set(self.translators)) != len(self.translators):
            raise ConfigError(f"a translator is named twice in --translators {','.join(self.translators)}")
        if self.rounds < 0:
            raise ConfigError(f"--rounds {self.rounds} must be 0 or more")
        if self.test_labels is not None and self.test is None:
            raise ConfigError("--test-labels needs --test")

    @property
    def segments_whole_volumes(self) -> bool:
        """``--segment-on``, or the profile's choice: whole volumes for ``paper``, ear boxes otherwise."""
        return (self.segment_on or ("whole" if self.profile == "paper" else "ears")) == "whole"


@dataclasses.dataclass(frozen=True)
class RunOptions(JobOptions):
    """Everything ``vstk run`` needs; see ``vstk run --help`` for the meaning of each."""

    keep_largest_vs: bool = False


@dataclasses.dataclass
class Plan:
    """The resolved run: folders, components and their configs, checked before training."""

    options: RunOptions
    train: DataFolder
    test: DataFolder | None
    translators: dict[str, Any]
    segmenter: Any
    pseudo_labeler: Any
    ear_rule: EarRule
    regions: dict[str, Region] | None = None  # with --ears found: each image's ear region, by file

    @property
    def out(self) -> Path:
        return self.options.out

    @property
    def segment_rule(self) -> EarRule | None:
        """The ear boxes the segmenter trains and predicts on, or None: whole volumes."""
        return None if self.options.segments_whole_volumes else self.ear_rule

    @property
    def state(self) -> Path:
        return self.options.out / "state"

    @property
    def pool(self) -> Path:
        return self.options.out / "pool.h5"

    @property
    def translator_work(self) -> Path:
        """``WORK/NAME/translator.pt`` holds each translator's training."""
        return self.options.out / "translators"

    @property
    def components(self) -> dict[str, Any]:
        """Every configured plugin of the run by its name: translators, segmenter, pseudo-labeler."""
        return {**self.translators, self.options.segmenter: self.segmenter,
                self.options.pseudo_labeler: self.pseudo_labeler}


def parse_translators(value: str | Sequence[str]) -> tuple[str, ...]:
    """``"a,b"`` (or a sequence of names) -> ``("a", "b")``."""
    names = value.split(",") if isinstance(value, str) else list(value)
    return tuple(n.strip() for n in names if n.strip())


def phantom_data(out: Path, *, cases: int, seed: int, target_labels: bool = False,
                 geometry: str = DEFAULT_GEOMETRY) -> Path:
    """The built-in phantom of a run or benchmark in ``OUT/phantom``, generated on first use.

    A phantom already there is used only when it was made with the same ``cases``, ``seed``
    and ``geometry`` (and, when ``target_labels`` is asked for, with labels of the training
    hrT2).
    """
    from ..phantom import MANIFEST, PhantomConfig, generate_phantom

    root = out / "phantom"
    record = root / MANIFEST
    if not record.exists():
        log.info("generating phantom data in %s", root)
        generate_phantom(root, PhantomConfig(cases=cases, seed=seed, target_labels=target_labels, geometry=geometry),
                         workers=usable_cores())
        return root
    made = json.loads(record.read_text()).get("config", {})
    if (made.get("cases"), made.get("seed")) != (cases, seed):
        raise ConfigError(f"the phantom in {root} has {made.get('cases')} cases of seed {made.get('seed')}, "
                          f"not {cases} of seed {seed}",
                          fix=f"give this phantom a new --out, or run with --phantom-cases {made.get('cases')}")
    if made.get("geometry", "slab") != geometry:
        raise ConfigError(f"the phantom in {root} has the {made.get('geometry', 'slab')} geometry, not {geometry}",
                          fix="give this phantom a new --out")
    if target_labels and not made.get("target_labels"):
        raise ConfigError(f"the phantom in {root} was made without labels of the training hrT2",
                          fix="give the benchmark a new --out")
    return root


def validate_folder(folder: DataFolder, *, with_source: bool, rule: EarRule | None = None) -> None:
    """Read every file once so a bad one stops the run before any training; with ``rule``,
    every labelled voxel of a labelled ceT1 must lie inside its ear boxes
    (:func:`check_labels_inside`), and a test label outside them is logged."""
    cases: list[tuple[Any, str]] = [(c, "hrT2") for c in folder.target]
    if with_source:
        cases += [(c, "ceT1") for c in folder.source]
    for case, modality in cases:
        image, label = load_case(case, modality)
        if rule is None or label is None:
            continue
        if modality == "ceT1":
            check_labels_inside(getattr(case, modality), image, label, rule)
        else:
            for outside in labels_outside(label, ear_boxes(image, rule)):
                log.warning("%s: %s; the predictions are background there", getattr(case, modality),
                            outside.describe())


def check_labels_inside(path: Path, image: Volume, label: Volume, rule: EarRule) -> None:
    """Refuse a training label that the ear crops would cut: every labelled voxel must lie in
    one of the image's ear boxes (nothing is dropped without a word)."""
    outside = labels_outside(label, ear_boxes(image, rule))
    if outside:
        raise InputError(f"{'; '.join(o.describe() for o in outside)} (boxes of {format_value(rule.size_mm)} mm "
                         f"at {format_value(rule.offset_mm)} mm from the field-of-view centre)", path=path,
                         fix="move or widen the boxes (--ear-offset / --ear-size) so that they hold every label")


def component_classes(options: Any, host: PluginHost) -> dict[str, dict[str, type]]:
    """The plugin classes that ``options`` (a :class:`RunOptions` or anything with its
    ``translators``, ``segmenter``, ``pseudo_labeler`` and ``settings``) names, by kind; an
    unknown name, or a ``--set`` key no component has, raises before any data is read."""
    return resolve_classes(host, translators=options.translators, segmenter=options.segmenter,
                           pseudo_labeler=options.pseudo_labeler, settings=dict(options.settings))


def run_components(options: RunOptions, classes: dict[str, dict[str, type]]) -> Components:
    """The run's configured components: the profile, the ``--set`` settings routed to each,
    the run's ``--device`` for every component that has the setting, and the translators' ear
    frames following the run's ear boxes."""
    return build_components(classes, options.profile, dict(options.settings), device=options.device,
                            run_wide={"device": options.device,
                                      "ear_offset_mm": ",".join(str(v) for v in options.ear_offset_mm)},
                            segmenter_workdir=options.out / "segmenter")


def ear_rule(options: RunOptions) -> EarRule:
    return EarRule(options.ear_offset_mm, options.ear_size_mm)


def plan_run(options: RunOptions, host: PluginHost) -> Plan:
    """Resolve plugins, configs and data; raise on any bad input before training starts."""
    classes = component_classes(options, host)  # unknown plugin names fail before any data is read
    data, test, test_labels = options.data, options.test, options.test_labels
    if data is None:
        root = phantom_data(options.out, cases=options.phantom_cases, seed=options.phantom_seed,
                            geometry=options.phantom_geometry)
        data, test, test_labels = root / "train", root / "test", root / "test_labels"
    train = discover(data, require_source=True, require_target=True)
    test_folder = None
    if test is not None:
        test_folder = discover(test, labels=test_labels, require_target=True)
        if test_labels is not None and not any(c.label for c in test_folder.target):
            raise InputError("no test label matches a test image", path=test_labels,
                             fix="test labels must be named {case}_Label.nii.gz for {case}_hrT2.nii.gz")
    rule = ear_rule(options)
    regions = None
    if options.ears == "found":  # the originals are checked, then their ear regions
        if regions_recorded(options.out, train, test_folder):  # else each is checked as its ears are found
            validate_folder(train, with_source=True)
            if test_folder is not None:
                validate_folder(test_folder, with_source=False)
        train, regions = crop_training_data(options.out, train, test_folder, show=options.progress)
        rule = dataclasses.replace(rule, found=found_centres(regions))
    checked = None if options.segments_whole_volumes else rule  # whole volumes: nothing is cropped
    validate_folder(train, with_source=True, rule=checked)
    if test_folder is not None:
        validate_folder(test_folder, with_source=False, rule=None if regions else checked)
    built = run_components(options, classes)
    return Plan(options, train, test_folder, built.translators, built.segmenter, built.pseudo_labeler, rule, regions)
