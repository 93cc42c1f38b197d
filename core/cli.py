"""The ``vstk`` command line. Heavy imports happen inside the commands that need them."""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import click

from .cli_options import DEFAULT_PHANTOM_GEOMETRY, PHANTOM_GEOMETRIES, format_table, plugin_host
from .errors import VstkError

log = logging.getLogger("vstk")

BUILTIN_COMMANDS: dict[str, str] = {
    # name -> "module:attribute" of the click command, imported on use
    "plugins": "vstk.cli:plugins_command",
    "phantom": "vstk.cli:phantom_command",
    "data": "vstk.cli:data_group",
    "translate": "vstk.translation.cli:translate_group",
    "evaluate": "vstk.cli:evaluate_command",
    "pool": "vstk.pipeline.cli:pool_group",
    "run": "vstk.pipeline.cli:run_command",
    "predict": "vstk.pipeline.cli:predict_command",
    "bench": "vstk.pipeline.cli:bench_command",
}


class VstkGroup(click.Group):
    """Turns :class:`VstkError` into one line and exit code 2 (tracebacks only with --debug);
    adds plugin commands (``vstk_add_commands``) when a name is not built in."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lazy = dict(lazy or {})
        self._plugin_commands_added = False

    def _add_plugin_commands(self, ctx: click.Context) -> None:
        if self._plugin_commands_added or ctx.parent is not None:
            return
        self._plugin_commands_added = True
        host = plugin_host(ctx)
        before = set(self.commands) | set(self._lazy)
        collector = click.Group()
        host.call_add_commands(collector)
        for name, command in collector.commands.items():
            if name in before:
                log.warning("a plugin tried to add command %r, which already exists; ignored", name)
                continue
            self.add_command(command, name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._add_plugin_commands(ctx)
        return sorted(set(super().list_commands(ctx)) | set(self._lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self._lazy:
            import importlib

            module, _, attr = self._lazy[name].partition(":")
            return getattr(importlib.import_module(module), attr)
        command = super().get_command(ctx, name)
        if command is None and ctx.parent is None:
            self._add_plugin_commands(ctx)
            command = super().get_command(ctx, name)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VstkError as exc:
            if ctx.find_root().meta.get("vstk.debug"):
                traceback.print_exc()
            click.secho(f"error: {exc.one_line()}", err=True, fg="red")
            ctx.exit(2)


@click.group(cls=VstkGroup, lazy=BUILTIN_COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug logs).")
@click.version_option(package_name="vstk")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: int) -> None:
    """vstk: multi-view ceT1 -> hrT2 translation and nnU-Net self-training for VS and cochlea.

    Plugins come from the `vstk` entry-point group; `vstk plugins` lists them and
    VSTK_DISABLE_PLUGINS=a,b skips some.
    """
    ctx.meta["vstk.debug"] = debug or bool(os.environ.get("VSTK_DEBUG"))
    level = logging.WARNING - 10 * min(verbose + 1, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main() -> None:
    cli(prog_name="vstk")


# --- vstk plugins -------------------------------------------------------------------------
@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def plugins_command(as_json: bool) -> None:
    """List installed plugins: name, kind, distribution, version, status."""
    rows = [info.as_dict() for info in plugin_host().infos()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no plugins installed")
        return
    click.echo(format_table(rows, ["name", "kind", "distribution", "version", "status"]))


# --- vstk phantom -------------------------------------------------------------------------
@click.command("phantom")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--cases", default=10, show_default=True, type=click.IntRange(2, 500),
              help="Labelled ceT1 training cases (and as many unlabelled hrT2).")
@click.option("--test-cases", type=click.IntRange(2, 500), default=None, help="Test hrT2 cases [cases // 2, min 2].")
@click.option("--paired-cases", type=click.IntRange(2, 500), default=None,
              help="Paired ceT1/hrT2 cases for scoring translation [cases // 4, min 2].")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--png/--no-png", default=True, show_default=True, help="Write OUT/overview.png.")
@click.option("--target-labels", is_flag=True, default=False,
              help="Also write truth labels of the training hrT2 to OUT/train_hrT2_labels (vstk bench's "
                   "supervised reference).")
@click.option("--geometry", type=click.Choice(PHANTOM_GEOMETRIES), default=DEFAULT_PHANTOM_GEOMETRY,
              show_default=True,
              help="slab: small fields of view around the ears; crossmoda: whole-head ceT1 and hrT2 slabs, "
                   "heads shifted and turned in the field of view, as the CrossMoDA data.")
@click.option("--scale", "resolution_scale", type=click.FloatRange(0.2, 2.0), default=1.0, show_default=True,
              help="Voxels per axis relative to the real protocols (same fields of view); 0.5 for a quick set.")
@click.option("--vary", is_flag=True, default=False,
              help="Draw one population per seed, shared by all its subjects: tissue contrasts (+-25 %, "
                   "fluid brightest and VS grey on hrT2, VS enhancing on ceT1), VS texture, noise and bias, "
                   "slab voxel sizes and fields of view per site, tumour sizes, intrameatal share and "
                   "cochlea size; recorded under \"population\" in OUT/phantom.json.")
def phantom_command(out: Path, cases: int, test_cases: int | None, paired_cases: int | None, seed: int,
                    png: bool, target_labels: bool, geometry: str, resolution_scale: float, vary: bool) -> None:
    """Write a procedural CrossMoDA-layout phantom data set to OUT.

    Without --vary every seed shares one contrast table, one pair of grids per site and one
    set of anatomy distributions; with --vary those differ between seeds too, so settings
    chosen on some seeds can be judged on others.
    """
    from .phantom import PhantomConfig, generate_phantom, save_overview_png

    config = PhantomConfig(cases=cases, test_cases=test_cases, paired_cases=paired_cases, seed=seed,
                           target_labels=target_labels, geometry=geometry, resolution_scale=resolution_scale,
                           vary=vary)
    summary = generate_phantom(out, config, progress=lambda message: log.info("%s", message),
                               workers=min(2, os.cpu_count() or 1))
    click.echo(f"wrote phantom data to {out}: " + ", ".join(
        f"{k} {v}" for k, v in summary.get("counts", {}).items()) + f" in {summary.get('seconds', 0):.1f} s")
    if png:
        path = save_overview_png(out, out / "overview.png")
        click.echo(f"overview: {path}")


# --- vstk data ----------------------------------------------------------------------------
@click.group("data", cls=VstkGroup)
def data_group() -> None:
    """Inspect and validate data folders (CrossMoDA 2021/2022 or plain layout)."""


@data_group.command("check")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--labels", type=click.Path(path_type=Path), default=None,
              help="Separate folder of *_Label.nii.gz for the hrT2 images (test truth).")
@click.option("--label-scheme", type=click.Choice(["crossmoda2022", "crossmoda2023"]), default="crossmoda2022",
              show_default=True, help="crossmoda2023 maps 1,2 (intra/extra-meatal VS) -> 1 and 3 -> 2.")
@click.option("--ears", "find_ears", is_flag=True, default=False,
              help="Also find the inner ears of every image from its content (as vstk run --ears found) and print "
                   "the cochlea centres found and the share of labelled voxels inside the ear region and boxes.")
@click.option("--ear-reference", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="With --ears: a vstk run folder made with --ears found (its reference), or a folder with a "
                   "labelled ceT1 [the first labelled ceT1 of FOLDER].")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def data_check_command(folder: Path, labels: Path | None, label_scheme: str, find_ears: bool,
                       ear_reference: Path | None, as_json: bool) -> None:
    """Read and validate every image and label of FOLDER; print one row per file."""
    import numpy as np

    from .crossmoda import discover, load_case

    data = discover(folder, labels=labels)
    reference = _ear_reference(ear_reference or folder, label_scheme) if find_ears else None
    rows = []
    for modality, cases in (("ceT1", data.source), ("hrT2", data.target)):
        for case in cases:
            image, label = load_case(case, modality, scheme=label_scheme)
            row = {"case": case.case_id, "modality": modality, "site": case.site or "",
                   "size": "x".join(map(str, image.size_xyz)),
                   "spacing": "x".join(f"{s:.2f}" for s in image.spacing), "label": "-"}
            if label is not None:
                counts = np.bincount(label.array.ravel(), minlength=3)
                row["label"] = f"VS {counts[1]} / cochlea {counts[2]} vox"
            if reference is not None:
                row.update(_ear_columns(image, label, reference, getattr(case, modality)))
            rows.append(row)
    if as_json:
        click.echo(json.dumps({"root": str(folder), "layout": data.layout, "files": rows}, indent=2))
        return
    click.echo(f"{folder}: layout {data.layout}, {len(data.source)} labelled ceT1, {len(data.target)} hrT2")
    ear_columns = ["cochleae found (mm)", "in region", "in boxes"] if reference is not None else []
    if rows:
        click.echo(format_table(rows, ["case", "modality", "site", "size", "spacing", "label", *ear_columns]))


def _ear_reference(where: Path, scheme: str):
    """The ear reference of a run folder (``OUT/ears/reference``), or built from the first
    labelled ceT1 of a data folder."""
    from .crossmoda import discover, load_case
    from .ears import EarReference, build_reference
    from .errors import InputError

    if (where / "ears" / "reference" / "ear_reference.json").is_file():
        return EarReference.load(where / "ears" / "reference")
    labelled = [c for c in discover(where).source if c.label is not None]
    if not labelled:
        raise InputError("no labelled ceT1 here to build the ear reference from", path=where,
                         fix="pass --ear-reference with a training folder or a run made with --ears found")
    return build_reference(*load_case(labelled[0], "ceT1", scheme=scheme))


def _ear_columns(image, label, reference, path: Path) -> dict[str, str]:
    """The ears found in ``image``, and the share of ``label``'s voxels inside the ear region the
    run would crop and inside the ear boxes placed there (as ``vstk run --ears found`` does)."""
    from .pipeline.regions import find_region, found_centres
    from .roi import EarRule, crop, ear_boxes, labels_outside

    region = find_region(image, reference, path)
    centres = "  ".join("(" + ", ".join(f"{v:.1f}" for v in point) + ")" for point in region.ears.cochleae)
    out = {"cochleae found (mm)": centres, "in region": "-", "in boxes": "-"}
    if label is not None and (label.array > 0).any():
        part = crop(label, region.box)
        rule = EarRule(found=found_centres({str(path): region}))
        total = int((label.array > 0).sum())
        for key, volume, boxes in (("in region", label, [region.box]), ("in boxes", part, ear_boxes(part, rule))):
            outside = sum(o.voxels for o in labels_outside(volume, boxes))
            out[key] = f"{100.0 * (total - outside) / total:.1f}%"
    return out


# --- vstk evaluate ------------------------------------------------------------------------
@click.command("evaluate")
@click.argument("pred_dir", type=click.Path(path_type=Path))
@click.argument("label_dir", type=click.Path(path_type=Path))
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write per-case scores and the summary as JSON.")
def evaluate_command(pred_dir: Path, label_dir: Path, json_path: Path | None) -> None:
    """Dice and ASSD (mm) of VS and cochlea for every case, mean +- std (Table 1 of Kang et al.),
    and the predicted and true volumes (ml).

    Empty masks: both empty -> Dice 1, ASSD 0; one empty -> Dice 0, ASSD = image diagonal (mm).
    """
    from .atomic import write_json_atomic
    from .evaluation.evaluate import evaluate_folders, summary_table, volume_table

    evaluation = evaluate_folders(pred_dir, label_dir)
    rows = [{"case": c, **{k: f"{v:.3f}" for k, v in s.items()}} for c, s in evaluation.cases.items()]
    click.echo(format_table(rows, ["case", "VS_dice", "VS_assd", "cochlea_dice", "cochlea_assd", "mean_dice",
                                   "VS_ml", "VS_true_ml", "cochlea_ml", "cochlea_true_ml"]))
    click.echo("")
    name = pred_dir.name or "prediction"
    click.echo(summary_table({name: evaluation.summary(),
                              **{f"{name}, {site}": part.summary() for site, part in evaluation.by_site().items()}}))
    click.echo("")
    click.echo(volume_table({name: (evaluation.summary(), evaluation.volume_ratios())}))
    if json_path is not None:
        write_json_atomic(json_path, evaluation.as_dict())


if __name__ == "__main__":
    main()
