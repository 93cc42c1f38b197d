"""Fingerprint, plan and preprocess a round's dataset with nnU-Net's own classes, in-process.

Light at import; the functions that run nnU-Net import nnunetv2 and must be called inside
:func:`vstk_nnunet.environment.nnunet_environment`.
Round 0 is fingerprinted and planned from its data; a later round copies the previous
round's plans (so its network has the same shape, which warm starts need) and preprocesses
only the cases that the previous round has not already preprocessed identically.
"""

from __future__ import annotations

import concurrent.futures
import copy
import logging
import multiprocessing
import shutil
from typing import Any, Mapping, Sequence

import numpy as np

from vstk.atomic import write_json_atomic
from vstk.errors import ConfigError, InputError

from .config import CONFIGURATIONS, NnUNetConfig
from .errors import NnUNetRunError
from .layout import FILE_ENDING, PLANS_NAME, RoundLayout, link_or_copy, read_json

log = logging.getLogger(__name__)

PREPROCESSED_MARKER = "vstk_preprocessed.json"
# nnU-Net's fingerprint draws 1e8 foreground intensities spread over the cases (with
# replacement): about 20 s for six small cases, for statistics only CT normalisation uses.
# 10 000 per case is what nnU-Net's per-case sampler defaults to.
_FOREGROUND_SAMPLES_PER_CASE = 10_000
_PREPROCESSED_SUFFIXES = (".b2nd", "_seg.b2nd", ".pkl")


def _worker_failure(stage: str, exc: BaseException) -> NnUNetRunError:
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return NnUNetRunError(
        f"nnU-Net's {stage} worker processes failed ({first_line})",
        fix='run vstk from a script whose entry code is under `if __name__ == "__main__":` (workers use "spawn"), '
            "and lower n_proc_preprocessing if the machine ran out of memory",
    )


def _readable_json(path) -> bool:
    """True for a complete JSON file (a planner killed while writing leaves a broken one)."""
    try:
        read_json(path)
    except (OSError, ValueError):
        return False
    return True


def plan_round(layout: RoundLayout, previous: RoundLayout | None, n_proc: int) -> None:
    """Create ``nnUNetPlans.json`` and ``dataset_fingerprint.json`` of a round (if missing).

    With ``previous`` (a planned earlier round) its plans and fingerprint are copied and renamed;
    otherwise nnU-Net's ``DatasetFingerprintExtractor`` and ``ExperimentPlanner`` run on the data.
    """
    fingerprint = layout.preprocessed / "dataset_fingerprint.json"
    layout.preprocessed.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(layout.raw / "dataset.json", layout.preprocessed / "dataset.json")
    if _readable_json(layout.plans_file) and _readable_json(fingerprint):
        return
    if previous is not None and previous.plans_file.is_file():
        log.info("round %d reuses the plans of round %d (no re-planning)", layout.round_index, previous.round_index)
        plans = read_json(previous.plans_file)
        plans["dataset_name"] = layout.dataset_name
        shutil.copyfile(previous.preprocessed / "dataset_fingerprint.json", fingerprint)
        write_json_atomic(layout.plans_file, plans)
        return

    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    log.info("nnU-Net: extracting the fingerprint of %s", layout.dataset_name)
    extractor = DatasetFingerprintExtractor(layout.dataset_name, n_proc, verbose=False)
    extractor.show_progress_bar = False
    extractor.num_foreground_voxels_for_intensitystats = _FOREGROUND_SAMPLES_PER_CASE * len(extractor.dataset)
    try:
        extractor.run(overwrite_existing=True)
    except RuntimeError as exc:
        raise _worker_failure("fingerprint", exc) from exc
    log.info("nnU-Net: planning %s", layout.dataset_name)
    planner = ExperimentPlanner(layout.dataset_name, plans_name=PLANS_NAME)
    planner.plan_experiment()


def resolve_configuration(plans: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A plans configuration with its ``inherits_from`` chain applied (nnU-Net's rule).

    As in nnU-Net's ``PlansManager``, a child's keys replace its parent's, one level deep
    (a child that changes the architecture carries the whole ``architecture`` entry).
    """
    configurations = plans["configurations"]
    chain: list[str] = []
    current: str | None = name
    while current is not None:
        if current in chain:
            raise ValueError(f"circular inherits_from in the plans: {' -> '.join(chain + [current])}")
        if current not in configurations:
            raise KeyError(f"configuration {current!r} is not in the plans")
        chain.append(current)
        current = configurations[current].get("inherits_from")
    resolved: dict[str, Any] = {}
    for link in reversed(chain):
        resolved.update(copy.deepcopy(configurations[link]))
    return resolved


def stock_configurations(plans: Mapping[str, Any]) -> tuple[str, ...]:
    """The stock configurations nnU-Net planned (vstk's own ``inherits_from`` entries left out)."""
    return tuple(name for name in CONFIGURATIONS if name in plans["configurations"])


def network_configurations(plans: Mapping[str, Any], config: NnUNetConfig) -> dict[str, dict[str, Any] | None]:
    """``{name: entry}`` of every configuration to train, in training order (see
    :func:`network_configuration`); ``configuration=planned`` resolves against ``plans``."""
    bases = config.trained_configurations(stock_configurations(plans))
    return dict(network_configuration(plans, config, base, bases) for base in bases)


def network_configuration(plans: Mapping[str, Any], config: NnUNetConfig, base: str | None = None,
                          trained: Sequence[str] = ()) -> tuple[str, dict[str, Any] | None]:
    """A plans configuration to train: its name and, when vstk changes the network, its entry.

    ``base`` is the stock configuration (None: ``config.configuration``). The entry
    ``inherits_from`` it, so it shares its preprocessed data; it replaces the architecture's
    ``features_per_stage`` and optionally the batch and patch sizes. Its name says what
    changed, e.g. ``3d_fullres_f8-64`` or ``2d_f16-128_b12_p64x64``. A cascade's stages point
    at each other under their new names (``previous_stage`` / ``next_stage``), as nnU-Net
    finds a stage's predictions through them; a stage outside ``trained`` (the stock
    configurations trained with it) is dropped from ``next_stage``.
    """
    base = config.configuration if base is None else base
    configurations = plans["configurations"]
    if base not in configurations:
        raise InputError(f"nnU-Net planned no {base!r} configuration for these images "
                         f"(it planned {', '.join(stock_configurations(plans))})",
                         fix="use configuration=2d for single-slice images" if base != "3d_lowres" else
                         "nnU-Net plans 3d_lowres only for images much larger than a 3d_fullres patch: use "
                         "configuration=planned, or 3d_fullres")
    if not config.customises_network:
        return base, None
    architecture = resolve_configuration(plans, base)["architecture"]
    kwargs = architecture["arch_kwargs"]
    entry: dict[str, Any] = {"inherits_from": base}
    parts = [base]
    if config.features_base is not None:
        cap = config.features_max or max(kwargs["features_per_stage"])
        kwargs["features_per_stage"] = [min(cap, config.features_base * 2 ** i) for i in range(kwargs["n_stages"])]
        entry["architecture"] = architecture
        parts.append(f"f{config.features_base}-{cap}")
    if config.batch_size is not None:
        entry["batch_size"] = config.batch_size
        parts.append(f"b{config.batch_size}")
    if config.patch_size is not None:
        stride = np.prod(np.asarray(kwargs["strides"]), axis=0)
        bad = [int(p) for p, s in zip(config.patch_size, stride) if p % s]
        if bad:
            suggestion = "x".join(str(max(int(s), int(p) // int(s) * int(s)))
                                  for p, s in zip(config.patch_size, stride))
            raise ConfigError(f"patch_size={'x'.join(map(str, config.patch_size))} does not fit the network: each axis "
                              f"must be divisible by its total stride {'x'.join(str(int(s)) for s in stride)}",
                              fix=f"e.g. patch_size={suggestion}")
        entry["patch_size"] = [int(p) for p in config.patch_size]
        parts.append("p" + "x".join(str(p) for p in config.patch_size))
    suffix = "_".join(parts[1:])
    for key in ("previous_stage", "next_stage"):
        stage = resolve_configuration(plans, base).get(key)
        if stage is not None:
            stages = [f"{s}_{suffix}" for s in ([stage] if isinstance(stage, str) else stage) if s in trained]
            entry[key] = (stages[0] if key == "previous_stage" else stages) if stages else None
    return "_".join(parts), entry


def add_network_configurations(layout: RoundLayout, config: NnUNetConfig) -> list[str]:
    """Write vstk's configurations (if any) into the round's plans; return the names to train,
    in training order (a cascade's low-resolution stage first).

    Only adds or replaces vstk's own entries: the stock configurations and their preprocessed
    data stay as planned.
    """
    plans = read_json(layout.plans_file)
    wanted = network_configurations(plans, config)
    changed = {name: entry for name, entry in wanted.items()
               if entry is not None and plans["configurations"].get(name) != entry}
    if changed:
        plans["configurations"].update(changed)
        write_json_atomic(layout.plans_file, plans)
    return list(wanted)


def link_ground_truth(layout: RoundLayout, case_ids: Sequence[str]) -> None:
    """``nnUNet_preprocessed/Dataset.../gt_segmentations/{case}.nii.gz``: the training labels,
    hard-linked from ``labelsTr``. nnU-Net's final validation, ensembling and postprocessing
    score against this folder (its own preprocessing entry point would have copied it)."""
    folder = layout.preprocessed / "gt_segmentations"
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {f"{case}{FILE_ENDING}" for case in case_ids}
    for path in folder.iterdir():
        if path.name not in wanted:
            path.unlink()
    for name in sorted(wanted):
        source = layout.raw / "labelsTr" / name
        target = folder / name
        if not target.is_file() or not _same_file(source, target):
            link_or_copy(source, target)


def _same_file(a, b) -> bool:
    try:
        return a.samefile(b) or a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def _same_preprocessing(plans: Mapping[str, Any], other: Mapping[str, Any], configuration_name: str) -> bool:
    """True when two plans preprocess ``configuration_name`` identically (ignoring the dataset name)."""
    def essentials(p: Mapping[str, Any]) -> Any:
        resolved = resolve_configuration(p, configuration_name)
        globals_ = {k: v for k, v in p.items() if k not in ("dataset_name", "configurations")}
        return globals_, {k: v for k, v in resolved.items() if k not in ("architecture", "batch_size", "patch_size")}

    try:
        return essentials(plans) == essentials(other)
    except (KeyError, ValueError):
        return False


def _preprocess_one(preprocessor: Any, output_truncated: str, image: str, label: str,
                    plans_manager: Any, configuration_manager: Any, dataset_json: dict) -> None:
    preprocessor.run_case_save(output_truncated, [image], label, plans_manager, configuration_manager, dataset_json)


def preprocess_round(layout: RoundLayout, previous: RoundLayout | None, configuration_name: str,
                     digests: Mapping[str, str], n_proc: int) -> None:
    """Preprocess the round's cases for ``configuration_name`` with nnU-Net's preprocessor.

    Already preprocessed cases (same digest, recorded in ``vstk_preprocessed.json``) are kept;
    cases the previous round preprocessed identically are hard-linked from it; only the rest
    runs through nnU-Net (``n_proc`` spawn workers, or in this process for 1).
    """
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = read_json(layout.plans_file)
    data_id = resolve_configuration(plans, configuration_name)["data_identifier"]
    out = layout.preprocessed / data_id
    out.mkdir(parents=True, exist_ok=True)
    marker_path = layout.preprocessed / PREPROCESSED_MARKER
    marker = read_json(marker_path) if marker_path.is_file() else {}
    done = {case: digest for case, digest in marker.get(data_id, {}).items() if case in digests}
    wanted = {case: digest for case, digest in digests.items() if done.get(case) != digest}
    for path in out.iterdir():  # cases of an abandoned case list
        case = path.name.removesuffix(".pkl").removesuffix(".b2nd").removesuffix("_seg")
        if case not in digests:
            path.unlink()
    if not wanted:
        return

    if previous is not None and (previous.preprocessed / PREPROCESSED_MARKER).is_file() \
            and previous.plans_file.is_file() \
            and _same_preprocessing(plans, read_json(previous.plans_file), configuration_name):
        previous_done = read_json(previous.preprocessed / PREPROCESSED_MARKER).get(data_id, {})
        reusable = [case for case in wanted if previous_done.get(case) == wanted[case]]
        for case in reusable:
            for suffix in _PREPROCESSED_SUFFIXES:
                link_or_copy(previous.preprocessed / data_id / f"{case}{suffix}", out / f"{case}{suffix}")
            done[case] = wanted.pop(case)
        if reusable:
            log.info("round %d: %d preprocessed case(s) linked from round %d", layout.round_index, len(reusable),
                     previous.round_index)

    if wanted:
        dataset_json = read_json(layout.preprocessed / "dataset.json")
        plans_manager = PlansManager(plans)
        configuration_manager = plans_manager.get_configuration(configuration_name)
        preprocessor = configuration_manager.preprocessor_class(verbose=False)
        jobs = [(str(out / case), str(layout.raw / dataset_json["dataset"][case]["images"][0]),
                 str(layout.raw / dataset_json["dataset"][case]["label"])) for case in wanted]
        for case in wanted:  # never write into a file: it may be a hard link into another round
            for suffix in _PREPROCESSED_SUFFIXES:
                (out / f"{case}{suffix}").unlink(missing_ok=True)
        log.info("nnU-Net: preprocessing %d case(s) of %s for %s", len(jobs), layout.dataset_name, data_id)
        workers = min(n_proc, len(jobs))
        if workers <= 1:
            for output, image, label in jobs:
                _preprocess_one(preprocessor, output, image, label, plans_manager, configuration_manager, dataset_json)
        else:
            context = multiprocessing.get_context("spawn")
            try:
                with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
                    futures = [pool.submit(_preprocess_one, preprocessor, output, image, label, plans_manager,
                                           configuration_manager, dataset_json) for output, image, label in jobs]
                    for future in futures:
                        future.result()
            except concurrent.futures.process.BrokenProcessPool as exc:
                raise _worker_failure("preprocessing", exc) from exc
        done.update(wanted)
    marker[data_id] = done
    write_json_atomic(marker_path, marker)
