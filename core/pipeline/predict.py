"""``vstk predict``: segment new hrT2 images with the segmenter a finished ``vstk run`` trained.

The run's own record (``OUT/run.json``) says how its segmenter was configured (plugin,
profile, ``--set`` settings, ear boxes), so the command needs only the run folder, the images
and an output folder, as ``nnUNetv2_predict`` needs only a model folder. The images are read
and checked as ``vstk run`` reads its test folder (CrossMoDA names, ``{case}_hrT2.nii.gz``);
the labels are written as ``{case}_Label.nii.gz`` on each image's own grid, ready for
``vstk evaluate``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from ..crossmoda import discover, load_case, read_image
from ..errors import ConfigError, InputError
from ..plugins import PluginHost
from . import records
from .plan import RunOptions, component_classes, ear_rule, run_components
from .predictions import write_predictions
from .regions import EARS_DIR, crop_to_region, found_centres, locate_regions

log = logging.getLogger(__name__)


def recorded_options(run_dir: Path) -> RunOptions:
    """The :class:`RunOptions` a finished run recorded in ``run_dir/run.json``, with ``out``
    set to ``run_dir`` (the record may hold a path relative to where the run was started)."""
    record_path = run_dir / "run.json"
    if not record_path.is_file():
        raise InputError(f"{run_dir} holds no run.json, the record a finished vstk run writes last",
                         path=record_path, fix="pass the --out folder of a vstk run that finished, or rerun "
                                               "that vstk run command to finish it")
    try:
        recorded = json.loads(record_path.read_text())["options"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise InputError(f"run.json is not a vstk run record ({error})", path=record_path,
                         fix="rerun the vstk run command that wrote this folder") from error
    fields = {f.name for f in dataclasses.fields(RunOptions)}
    unknown = set(recorded) - fields
    if unknown:
        raise ConfigError(f"{record_path} records options this vstk does not know: {', '.join(sorted(unknown))}",
                          fix="predict with the vstk version that made the run")
    values: dict[str, Any] = dict(recorded, out=run_dir)
    values.setdefault("segment_on", "ears")  # runs recorded before --segment-on trained on the ear boxes
    for name in ("data", "test", "test_labels"):
        if values.get(name) is not None:
            values[name] = Path(values[name])
    for name in ("translators", "ear_offset_mm", "ear_size_mm"):
        if name in values:
            values[name] = tuple(values[name])
    if "settings" in values:
        values["settings"] = tuple((str(k), str(v)) for k, v in values["settings"])
    return RunOptions(**values)


def on_device(options: RunOptions, device: str | None) -> RunOptions:
    """``options`` with every component on ``device`` (None: as recorded): the run's
    ``--device`` and any ``--set [NAME.]device=...`` are replaced, e.g. to predict on a CPU
    with a model trained on a GPU."""
    if device is None:
        return options
    settings = tuple((k, v) for k, v in options.settings if k.rsplit(".", 1)[-1] != "device")
    return dataclasses.replace(options, device=device, settings=settings)


def predict(run_dir: Path, images: Path, out: Path, host: PluginHost, *, round_index: int | None = None,
            keep_largest_vs: bool | None = None, device: str | None = None,
            show: bool | None = None, save_probabilities: bool = False) -> dict[str, Any]:
    """Segment every ``{case}_hrT2.nii.gz`` in ``images`` with round ``round_index`` (None: the
    run's last round) of the run in ``run_dir``; write ``out/{case}_Label.nii.gz``.

    ``keep_largest_vs`` None follows the run's own ``--keep-largest-vs``; ``device`` None the
    run's device (see :func:`on_device`). ``save_probabilities`` also writes each image's
    softmax, ``out/{case}_Label.npz`` + ``.json`` (:func:`write_probabilities`). Every image
    is read and checked before the model is loaded.

    Raises:
        InputError: no run record, an image folder without hrT2, a corrupt image.
        ConfigError: a round the run does not have or has not finished.
        NotTrainedError: (from the segmenter) the round's model is missing.
    """
    options = on_device(recorded_options(run_dir), device)
    if round_index is None:
        round_index = options.rounds
    if not 0 <= round_index <= options.rounds:
        raise ConfigError(f"round {round_index} is not a round of the run in {run_dir} (rounds 0 to {options.rounds})",
                          fix=f"pass --round between 0 and {options.rounds}")
    folder = discover(images, require_target=True)
    for case in folder.target:  # a bad image stops the command before the model loads
        load_case(case, "hrT2")
    if out.resolve() == Path(images).resolve():
        raise ConfigError(f"the output folder {out} is the image folder",
                          fix="write the labels to another folder (--out)")
    if records.stage_done(run_dir / "state", f"segment-r{round_index}") is None:  # before the ears are sought
        raise ConfigError(f"round {round_index} has not been trained in {run_dir}: its stage "
                          f"segment-r{round_index} is not finished",
                          fix="rerun the vstk run command that made this folder (it resumes), or pick a finished "
                              "--round")
    segmenter = run_components(options, component_classes(options, host)).segmenter
    volumes = {c.case_id: read_image(c.hrT2) for c in folder.target}
    originals = None
    rule = None if options.segments_whole_volumes else ear_rule(options)
    if options.ears == "found":  # as the run predicted: each image cut to the ear region found in it
        regions = locate_regions({c.case_id: (c.hrT2, volumes[c.case_id]) for c in folder.target},
                                 run_dir / EARS_DIR)
        originals = {case: (regions[case], volumes[case]) for case in volumes}
        volumes = {case: crop_to_region(volume, regions[case]) for case, volume in volumes.items()}
        rule = dataclasses.replace(rule, found=found_centres(regions))
    keep = options.keep_largest_vs if keep_largest_vs is None else keep_largest_vs
    written = write_predictions(segmenter, rule, volumes, out, round_index=round_index,
                                keep_largest_vs=keep, show=show, onto=originals,
                                save_probabilities=save_probabilities)
    log.info("wrote %d label(s) of round %d to %s", len(written), round_index, out)
    return {"cases": len(written), "round": round_index, "keep_largest_vs": keep, "out": str(out),
            "probabilities": save_probabilities}
