"""``vstk pool ...`` commands: a click group for the top-level CLI to mount.

``vstk pool build`` / ``add-view`` compose translator plugins and are added to this group by
:mod:`vstk.pipeline.cli`, which the top-level CLI mounts as ``vstk pool``. Errors are raised as :class:`~vstk.errors.VstkError`; the top-level group prints
them as one line with exit status 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..cli_options import format_table


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f}"


def _ratio(value: float | None) -> str:
    return f"{value:.2f}x" if value else "-"


def format_info(info: dict[str, Any]) -> str:
    """The readable summary printed by ``vstk pool info``: header, a cases x views table of
    shapes, one row per view entry (sizes, provenance), totals per view, pseudo-label rounds."""
    lines = [
        f"{info['path']}",
        f"schema {info['schema']} v{info['schema_version']}, written by vstk {info['vstk_version']} "
        f"at {info['created']}, target spacing {' x '.join(f'{v:g}' for v in info['target_spacing'])} mm",
        f"{len(info['views'])} view(s), {len(info['labels'])} label(s), {len(info['targets'])} target(s), "
        f"pseudo-label rounds: {', '.join(info['pseudo_labels']) or 'none'}",
        f"voxels {_mb(info['raw_bytes'])} MB, file {_mb(info['file_bytes'])} MB "
        f"(compression {_ratio(info['compression_ratio'])})",
        "",
    ]
    views = list(info["views"])
    shapes = {(e["view"], e["case"]): "x".join(map(str, e["shape"])) for e in info["entries"]}
    cases = sorted({case for _, case in shapes} | set(info["labels"]))
    if cases:
        lines.append("cases x views (array shape z,y,x; '-' = missing):")
        lines.append(format_table(
            [{"case": case, **{view: shapes.get((view, case), "-") for view in views},
              "label": "yes" if case in info["labels"] else "-"} for case in cases],
            ["case", *views, "label"]))
        lines.append("")
    rows = []
    for entry in info["entries"]:
        prov = entry["provenance"]
        rows.append({
            "view": entry["view"], "case": entry["case"],
            "MB raw": _mb(entry["raw_bytes"]), "MB stored": _mb(entry["stored_bytes"]),
            "ratio": _ratio(entry["compression_ratio"]), "translator": prov["translator"],
            "plugin": f"{prov['plugin_distribution']} {prov['plugin_version']}",
            "checkpoint": prov["checkpoint_sha256"][:12], "seed": prov["seed"],
        })
    if rows:
        lines.append(format_table(rows, list(rows[0])))
    else:
        lines.append("no view entries")
    if info["views"]:
        lines += ["", format_table(
            [{"view": v, "cases": s["cases"], "MB raw": _mb(s["raw_bytes"]), "MB stored": _mb(s["stored_bytes"]),
              "ratio": _ratio(s["compression_ratio"])} for v, s in info["views"].items()],
            ["view", "cases", "MB raw", "MB stored", "ratio"])]
    for round_name, summary in info["pseudo_labels"].items():
        confidences = list(summary["confidence"].values())
        lines.append(f"pseudo labels round {round_name}: {summary['cases']} case(s), confidence "
                     f"{min(confidences):.3f}-{max(confidences):.3f}")
    return "\n".join(lines)


@click.group("pool")
def pool_group() -> None:
    """Build, inspect and export the HDF5 multi-view pool (translated views + labels)."""


# `build` and `add-view` (they need the translators) live in vstk.pipeline.cli and are added
# to this group there; see that module.


@pool_group.command("info")
@click.argument("pool", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON instead of tables.")
def info_command(pool: Path, as_json: bool) -> None:
    """Summarise POOL.h5: views x cases, shapes, sizes, compression and provenance."""
    from .reader import Pool

    with Pool(pool) as handle:
        info = handle.info()
    click.echo(json.dumps(info, indent=2) if as_json else format_info(info))


@pool_group.command("export-nnunet")
@click.argument("pool", type=click.Path(path_type=Path))
@click.option("--out", "raw_root", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="nnUNet_raw folder to write Dataset{ID}_{NAME} into.")
@click.option("--dataset-id", required=True, type=int, help="nnU-Net dataset id (1-999).")
@click.option("--name", default="vstkPool", show_default=True, help="Dataset name.")
@click.option("--views", default=None, help="Comma-separated views to export [all].")
@click.option("--pseudo-round", type=int, default=None,
              help="Also export real hrT2 with this self-training round's pseudo labels.")
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset folder of that id and name.")
def export_nnunet_command(pool: Path, raw_root: Path, dataset_id: int, name: str, views: str | None,
                          pseudo_round: int | None, overwrite: bool) -> None:
    """Write POOL.h5's views as an nnU-Net v2 raw dataset (case ids {view}__{case})."""
    from ..progress import progress_bar
    from .export import export_nnunet

    with progress_bar(0, "export") as progress:
        folder = export_nnunet(pool, raw_root, dataset_id, name=name, views=views, pseudo_round=pseudo_round,
                               overwrite=overwrite, progress=progress)
    count = json.loads((folder / "dataset.json").read_text())["numTraining"]
    click.echo(f"wrote {count} training cases to {folder}")


@pool_group.command("merge")
@click.argument("shards", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The merged POOL.h5.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
def merge_command(shards: tuple[Path, ...], out: Path, overwrite: bool) -> None:
    """Join the shard files of `vstk pool build --shard I/N` (all N of them) into one pool.

    Checks that the shards belong to one build, none is missing or overlaps another, and they
    agree on schema and spacing; the merged pool reads exactly like a single-process build.
    """
    from ..progress import progress_bar
    from .shard import merge_shards

    with progress_bar(0, "merge") as progress:
        path = merge_shards(shards, out, overwrite=overwrite, progress=progress)
    click.echo(f"merged {len(shards)} shard(s) into {path}")
