"""``vstk run``, ``vstk bench``, ``vstk predict`` and ``vstk pool build`` / ``add-view``: the
commands that compose plugins."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from ..cli_options import (DEFAULT_PHANTOM_GEOMETRY, PHANTOM_GEOMETRIES, collect_settings, config_option,
                           default_profile, device_option, ear_options, ear_settings, log_to_file, plugin_host,
                           profile_option, segment_on_option, set_option, translators_option)
from ..pool.cli import pool_group

log = logging.getLogger(__name__)


def _pool_job(translators: str, data: Path, work: Path, pool: Path, profile: str | None, settings, config_file,
              device: str | None, extend: bool, shard: str | None = None) -> Path:
    from ..crossmoda import discover
    from ..progress import progress_bar
    from ..components import configured_translators
    from .plan import parse_translators
    from .stages import build_pool, train_translators

    host = plugin_host()
    models = configured_translators(host, parse_translators(translators), default_profile(profile, device),
                                    dict(collect_settings(settings, config_file)), device=device)
    folder = discover(data, require_source=True, require_target=not extend)
    spec = None
    planned = models
    if shard is not None:
        from ..errors import ConfigError
        from ..pool.shard import ShardPlan, ShardSpec

        spec = ShardSpec.parse(shard)
        share = ShardPlan.of(models, [c.case_id for c in folder.source], [c.case_id for c in folder.target]).share(spec)
        needed = {view for view, _ in share.views}
        for name in sorted(needed):
            if not (work / name / "translator.pt").exists():
                # Shards run at the same time: training one translator in each would race.
                raise ConfigError(f"sharded build needs a trained translator: {work / name / 'translator.pt'} "
                                  "is missing", fix=f"train it first in one job: vstk translate train -t {name} "
                                                    f"--data {data} --out {work}")
        models = {name: model for name, model in models.items() if name in needed}
    untrained = [name for name in models if not (work / name / "translator.pt").exists()]
    training = discover(data, require_source=True, require_target=True) if untrained and extend else folder
    checkpoints = train_translators(models, work, training.source, training.target)
    total = len(folder.source) * len(models) + (0 if extend else len(folder.target))
    with progress_bar(total, "pool") as bar:
        # Every translator names a view of a sharded build's plan, used by this shard or not.
        return build_pool(pool, planned, checkpoints, folder.source, folder.target, host, extend=extend,
                          progress=bar, shard=spec)


@click.command("build")
@translators_option
@click.option("--data", required=True, type=click.Path(path_type=Path), help="CrossMoDA training folder.")
@click.option("--work", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Translator work folder: WORK/NAME/translator.pt is trained when missing.")
@click.option("--out", "pool", required=True, type=click.Path(dir_okay=False, path_type=Path), help="POOL.h5")
@profile_option
@set_option
@config_option
@device_option
@click.option("--shard", default=None, metavar="I/N",
              help="Build only shard I of N (by view, then case range) into --out, for `vstk pool merge`; "
                   "the translators must be trained already.")
def build_command(translators: str, data: Path, work: Path, pool: Path, profile: str | None, settings, config_file,
                  device: str | None, shard: str | None) -> None:
    """Translate every labelled ceT1 with every translator into one HDF5 pool (resumable).

    Across processes or machines: run `--shard I/N` for I = 1..N (each its own --out), then
    `vstk pool merge SHARD... --out POOL.h5`.
    """
    path = _pool_job(translators, data, work, pool, profile, settings, config_file, device, extend=False,
                     shard=shard)
    click.echo(f"pool {'shard ' + shard + ' ' if shard else ''}written: {path}")


@click.command("add-view")
@click.argument("pool", type=click.Path(dir_okay=False, path_type=Path))
@translators_option
@click.option("--data", required=True, type=click.Path(path_type=Path), help="The pool's training folder.")
@click.option("--work", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Translator work folder (trained when WORK/NAME/translator.pt is missing).")
@profile_option
@set_option
@config_option
@device_option
def add_view_command(pool: Path, translators: str, data: Path, work: Path, profile: str | None, settings,
                     config_file, device: str | None) -> None:
    """Add the views of more translators to an existing POOL."""
    path = _pool_job(translators, data, work, pool, profile, settings, config_file, device, extend=True)
    click.echo(f"pool extended: {path}")


phantom_geometry_option = click.option(
    "--phantom-geometry", type=click.Choice(PHANTOM_GEOMETRIES), default=DEFAULT_PHANTOM_GEOMETRY, show_default=True,
    help="Geometry of the phantom used without --data (see vstk phantom --geometry); crossmoda (whole-head ceT1) "
         "needs the ears found (--ears found, the default where the segmenter trains on the ear boxes).")


@click.command("run")
@translators_option
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="CrossMoDA training folder (labelled ceT1 + unlabelled hrT2) [built-in phantom].")
@click.option("--test", type=click.Path(path_type=Path), default=None, help="Folder of test hrT2 to segment.")
@click.option("--test-labels", type=click.Path(path_type=Path), default=None,
              help="Truth {case}_Label.nii.gz for the test images: enables evaluation.")
@profile_option
@click.option("--rounds", type=click.IntRange(0, 20), default=1, show_default=True,
              help="Self-training rounds after the first segmenter.")
@click.option("--segmenter", default="nnunet", show_default=True)
@click.option("--pseudo-labeler", default="all", show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--phantom-cases", type=click.IntRange(1, 500), default=10, show_default=True,
              help="Labelled cases of the phantom used without --data.")
@phantom_geometry_option
@click.option("--keep-largest-vs", is_flag=True, default=False,
              help="Post-process the test predictions: keep only the largest connected VS component "
                   "(one tumour per patient); off by default: stock nnU-Net predictions.")
@ear_options
@segment_on_option
@set_option
@config_option
@device_option
def run_command(translators: str, data: Path | None, test: Path | None, test_labels: Path | None,
                profile: str | None, rounds: int, segmenter: str, pseudo_labeler: str, out: Path,
                phantom_cases: int, phantom_geometry: str, keep_largest_vs: bool, ears: str, ear_offset, ear_size,
                segment_on: str | None, settings, config_file, device: str | None) -> None:
    """Translate, pool, train the segmenter, self-train, segment the test set, evaluate.

    Rerunning the same command resumes: finished stages are skipped and an interrupted one
    restarts from its own checkpoints; a rerun whose settings would change a finished or
    started stage is refused (give them a new --out). Writes OUT/predictions/{case}_Label.nii.gz,
    OUT/evaluation.json, OUT/report.md and a log file OUT/vstk.log.
    """
    from .plan import RunOptions, parse_translators
    from .run import run

    with log_to_file(out / "vstk.log"):
        options = RunOptions(out=out, translators=parse_translators(translators), data=data, test=test,
                             test_labels=test_labels, profile=default_profile(profile, device), rounds=rounds,
                             segmenter=segmenter, pseudo_labeler=pseudo_labeler,
                             settings=collect_settings(settings, config_file), device=device,
                             phantom_cases=phantom_cases, phantom_geometry=phantom_geometry,
                             keep_largest_vs=keep_largest_vs, segment_on=segment_on,
                             **ear_settings(ear_offset, ear_size, ears))
        summary = run(options, plugin_host())
    if "evaluate" in summary:
        record = summary["evaluate"]  # records of older versions keep the scores at the top
        models = record.get("scores", {k: v for k, v in record.items() if isinstance(v, dict)})
        for model, scores in models.items():
            click.echo(f"{model}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    click.echo(f"report: {out / 'report.md'}" if (out / "report.md").exists() else f"done: {out}")


@click.command("predict")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("images", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the {case}_Label.nii.gz files.")
@click.option("--round", "round_index", type=click.IntRange(0, 20), default=None,
              help="Self-training round whose model segments [the run's last].")
@click.option("--keep-largest-vs/--all-vs-components", default=None,
              help="Keep only the largest connected VS component [as the run did].")
@click.option("--device", type=click.Choice(["cpu", "cuda", "mps"]), default=None,
              help="Where the segmenter runs [the run's device].")
@click.option("--save-probabilities", is_flag=True,
              help="Also write each image's softmax as {case}_Label.npz (key 'probabilities', "
                   "[classes, z, y, x], as nnU-Net's --save_probabilities) with its grid in {case}_Label.json.")
def predict_command(run_dir: Path, images: Path, out: Path, round_index: int | None,
                    keep_largest_vs: bool | None, device: str | None, save_probabilities: bool) -> None:
    """Segment the hrT2 images in IMAGES ({case}_hrT2.nii.gz) with the segmenter of the finished
    vstk run in RUN_DIR (its --out folder), on each image's own grid.

    The run's record (RUN_DIR/run.json) gives the segmenter, profile, settings and ear boxes;
    score the labels with `vstk evaluate OUT LABELS`.
    """
    from .predict import predict

    summary = predict(run_dir, images, out, plugin_host(), round_index=round_index, keep_largest_vs=keep_largest_vs,
                      device=device, save_probabilities=save_probabilities)
    click.echo(f"{summary['cases']} label(s){' with probabilities' if save_probabilities else ''} "
               f"of round {summary['round']} in {out}")


@click.command("bench")
@translators_option
@click.option("--combos", multiple=True, metavar="A+B[,C+D]",
              help="Multi-view combination(s) to score besides each translator alone: translators of "
                   "--translators joined by '+', e.g. cyclegan+qsattn (repeatable or comma-separated).")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="CrossMoDA training folder (labelled ceT1 + unlabelled hrT2) [built-in phantom].")
@click.option("--test", type=click.Path(path_type=Path), default=None, help="Folder of test hrT2 (with --data).")
@click.option("--test-labels", type=click.Path(path_type=Path), default=None,
              help="Truth {case}_Label.nii.gz of the test hrT2 (with --data).")
@click.option("--target-labels", type=click.Path(path_type=Path), default=None,
              help="Truth labels of the training hrT2: enables the supervised reference row.")
@click.option("--paired", type=click.Path(path_type=Path), default=None,
              help="Folder of paired {case}_ceT1/_hrT2 on one grid: enables translation fidelity (PSNR, SSIM).")
@profile_option
@click.option("--rounds", type=click.IntRange(0, 20), default=0, show_default=True,
              help="Self-training rounds of every method after its first segmenter.")
@click.option("--segmenter", default="nnunet", show_default=True)
@click.option("--pseudo-labeler", default="all", show_default=True, help="Used with --rounds above 0.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--phantom-cases", type=click.IntRange(2, 500), default=10, show_default=True,
              help="Labelled cases of the phantom used without --data.")
@phantom_geometry_option
@click.option("--jobs", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Rows whose segmenters train side by side, one process each, with cores / jobs "
                   "threads each.")
@click.option("--seeds", default=None, metavar="N[,N...]",
              help="Train every row's segmenter once per seed (e.g. 0,1,2) and report the seed-averaged "
                   "scores and the spread over seeds [one training, with the segmenter's seed setting].")
@ear_options
@segment_on_option
@set_option
@config_option
@device_option
def bench_command(translators: str, combos: tuple[str, ...], data: Path | None, test: Path | None,
                  test_labels: Path | None, target_labels: Path | None, paired: Path | None, profile: str | None,
                  rounds: int, segmenter: str, pseudo_labeler: str, out: Path, phantom_cases: int,
                  phantom_geometry: str, jobs: int, seeds: str | None, ears: str, ear_offset, ear_size,
                  segment_on: str | None, settings, config_file, device: str | None) -> None:
    """Benchmark translators alone and combined under one segmentation protocol.

    Rows: none (segmenter on raw ceT1: the floor), each translator, each --combos
    combination, supervised (on labelled hrT2, when there are labels: the ceiling). Every row
    trains the same segmenter with the same seed (or once per --seeds seed); each translator
    trains once and one pool holds every view. Writes OUT/bench.md (Table 1 with the share of
    the floor-to-ceiling gap each row closes, the spread over seeds, paired t-tests,
    translation fidelity, time), OUT/bench.json and OUT/figures/*.png. Rerunning the same
    command resumes and skips finished stages; a rerun of other settings is refused.
    """
    from .bench import bench
    from .bench_model import BenchOptions, parse_combos
    from .plan import parse_translators

    options = BenchOptions(out=out, translators=parse_translators(translators), combos=parse_combos(combos),
                           data=data, test=test, test_labels=test_labels, target_labels=target_labels,
                           paired=paired, profile=default_profile(profile, device), rounds=rounds,
                           segmenter=segmenter, pseudo_labeler=pseudo_labeler,
                           settings=collect_settings(settings, config_file), device=device,
                           phantom_cases=phantom_cases, phantom_geometry=phantom_geometry, jobs=jobs,
                           seeds=_parse_seeds(seeds),
                           segment_on=segment_on, **ear_settings(ear_offset, ear_size, ears))
    with log_to_file(out / "vstk.log"):
        data_out = bench(options, plugin_host())
    for name, method in data_out["methods"].items():
        spread = method["seeds"]
        click.echo(f"{name}: mean Dice {method['summary']['mean_dice']['mean']:.3f}"
                   + (f" (seeds: {spread['over_seeds']['mean_dice']['mean']:.3f} +- "
                      f"{spread['over_seeds']['mean_dice']['std']:.3f})" if spread else "")
                   + (f", gap closed {method['gap_closed']:.0%}" if method["gap_closed"] is not None else ""))
    click.echo(f"report: {out / 'bench.md'}")


def _parse_seeds(value: str | None) -> tuple[int, ...]:
    """``"0,1,2"`` -> ``(0, 1, 2)``; None -> ``()`` (one training with the configured seed)."""
    from ..errors import ConfigError

    if value is None:
        return ()
    parts = [part.strip() for part in value.split(",") if part.strip()]
    try:
        seeds = tuple(int(part) for part in parts)
    except ValueError:
        raise ConfigError(f"--seeds {value!r}: seeds are whole numbers separated by commas",
                          fix="e.g. --seeds 0,1,2") from None
    if not seeds:
        raise ConfigError("--seeds names no seed", fix="e.g. --seeds 0,1,2, or leave it out")
    return seeds


# `vstk pool` is the pool's own group (info, export, merge) with the two commands that compose
# translator plugins into a pool: the pool package stays below the pipeline.
pool_group.add_command(build_command)
pool_group.add_command(add_view_command)
