"""``vstk translate``: train a translator, or apply one to volumes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click
import numpy as np

from ..cli_options import (collect_settings, default_profile, device_option, plugin_host, profile_option, set_option,
                           translator_option)
from ..errors import ConfigError, InputError

log = logging.getLogger(__name__)


def translator_from_options(name: str, profile: str, settings: tuple[str, ...], steps: int | None,
                            device: str | None) -> Any:
    """Instantiate translator ``name`` with a profile, ``--set`` overrides and ``--steps``."""
    from ..components import configured_translators

    overrides: dict[str, Any] = dict(collect_settings(settings))
    if steps is not None:
        if steps < 1:
            raise ConfigError(f"--steps {steps} must be at least 1")
        # half at the initial rate, half decaying, as CycleGAN's n_epochs / n_epochs_decay
        overrides.update(steps=steps - steps // 2, decay_steps=steps // 2, epochs="none", decay_epochs="none")
    return configured_translators(plugin_host(), [name], profile, overrides, device=device)[name]


def looks_like_label(path: Path, array: np.ndarray) -> bool:
    """A label map given where an image is expected: integer values, at most 4 distinct."""
    if "_Label" in path.name:
        return True
    if np.issubdtype(array.dtype, np.integer) or np.array_equal(array, np.round(array)):
        return len(np.unique(array[:: max(1, array.shape[0] // 8)])) <= 4
    return False


def read_source_image(path: Path):
    from ..crossmoda import read_image

    image = read_image(path)
    if looks_like_label(path, image.array):
        raise InputError("this looks like a label map (at most 4 integer values), not a ceT1 image", path=path,
                         fix="pass the *_ceT1.nii.gz image")
    return image


@click.group("translate")
def translate_group() -> None:
    """Train ceT1 -> hrT2 translators and apply them to volumes."""


@translate_group.command("train")
@translator_option
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Folder with labelled ceT1 and unlabelled hrT2 (CrossMoDA layout).")
@click.option("--out", "work", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Work folder; the translator writes WORK/NAME/ (checkpoints, losses.csv, samples/).")
@profile_option
@click.option("--steps", type=int, default=None, help="Total training steps (half decaying).")
@set_option
@device_option
@click.option("--nproc", type=click.IntRange(1, None), default=None,
              help="Train data-parallel with N processes on this machine (one per GPU, or CPU shares with gloo): "
                   "relaunches this command under torchrun. Under torchrun itself, leave it out.")
@click.pass_context
def train_command(ctx: click.Context, translator: str, data: Path, work: Path, profile: str | None,
                  steps: int | None, settings: tuple[str, ...], device: str | None, nproc: int | None) -> None:
    """Train a translator on unpaired ceT1 and hrT2 slices (resumes an interrupted run).

    Multi-GPU / multi-node: `--nproc N`, or `torchrun --nproc-per-node N -m vstk translate train ...`
    (every rank trains on its share of the slices; rank 0 writes the files).
    """
    import os

    from ..crossmoda import discover, read_image
    from ..progress import progress_bar
    from ..translation.distributed import DistContext, launch

    context = DistContext.from_env(os.environ)
    if nproc is not None and nproc > 1 and not context.active:
        args = ["translate", "train", "-t", translator, "--data", str(data), "--out", str(work)]
        args += ["--profile", profile] if profile else []
        args += ["--steps", str(steps)] if steps is not None else []
        args += [item for value in settings for item in ("--set", value)]
        args += ["--device", device] if device else []
        root = ctx.find_root().params
        prefix = (["--debug"] if root.get("debug") else []) + ["-v"] * int(root.get("verbose") or 0)
        code = launch(nproc, [*prefix, *args])
        if code:
            raise ConfigError(f"{nproc} training processes ended with exit status {code}",
                              fix="see the first error printed above (each rank logs its own)")
        click.echo(f"{translator}: {work / translator / 'translator.pt'}")
        return
    if nproc is not None and context.active and nproc != context.world_size:
        raise ConfigError(f"--nproc {nproc} but torchrun started {context.world_size} processes",
                          fix="leave out --nproc under torchrun")
    model = translator_from_options(translator, default_profile(profile, device), settings, steps, device)
    folder = discover(data, require_source=True, require_target=True)
    sources = [read_image(c.ceT1) for c in folder.source]
    targets = [read_image(c.hrT2) for c in folder.target]
    if context.is_main:
        log.info("training %s on %d ceT1 and %d hrT2 volumes%s", translator, len(sources), len(targets),
                 f" with {context.world_size} processes" if context.active else "")
    with progress_bar(0, f"train {translator}", enabled=None if context.is_main else False) as progress:
        path = model.train(sources, targets, work / translator, progress=progress, distributed=context)
    if context.is_main:
        click.echo(f"{translator}: {path}")


@translate_group.command("apply")
@translator_option
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="translator.pt from `vstk translate train` (or an official generator with --official).")
@click.option("--official", is_flag=True, help="The checkpoint is an official CycleGAN/CUT/QS-Attn generator.")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("dest", type=click.Path(path_type=Path))
@set_option
@device_option
def apply_command(translator: str, checkpoint: Path, official: bool, source: Path, dest: Path,
                  settings: tuple[str, ...], device: str | None) -> None:
    """Translate SOURCE (a ceT1 .nii.gz, or a folder of them) to DEST (a file, or a folder)."""
    from ..progress import progress_bar
    from ..volume import write_nifti

    model = translator_from_options(translator, "cpu", settings, None, device)
    if official:
        if not hasattr(model, "load_official"):
            raise ConfigError(f"the translator {translator!r} cannot read official checkpoints (it has no load_official)",
                              fix="leave out --official and pass a translator.pt of vstk translate train")
        model.load_official(checkpoint)
    else:
        model.load(checkpoint)
    if source.is_dir():
        inputs = sorted(p for p in source.iterdir() if p.name.endswith((".nii.gz", ".nii")) and "_Label" not in p.name)
        if not inputs:
            raise InputError("no .nii/.nii.gz images in the folder", path=source, fix="check the path")
        outputs = [dest / p.name for p in inputs]
    else:
        if dest.is_dir():
            raise InputError("destination is a folder but the source is one file", path=dest,
                             fix="give an output file name")
        inputs, outputs = [source], [dest]
    with progress_bar(len(inputs), f"translate ({translator})") as progress:
        for i, (path_in, path_out) in enumerate(zip(inputs, outputs)):
            volume = read_source_image(path_in)
            write_nifti(model.translate_volume(volume), path_out)
            progress(i + 1, len(inputs), path_in.name)
    click.echo(f"translated {len(inputs)} volume(s) into {dest}")
