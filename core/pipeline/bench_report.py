"""The ``vstk bench`` report: Table 1, paired t-test matrices, fidelity and time, as Markdown,
JSON and PNG (``OUT/bench.md``, ``OUT/bench.json``, ``OUT/figures/``).

Every number in ``bench.md`` is formatted from the dictionary written to ``bench.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..config import to_json_dict
from ..evaluation.evaluate import Evaluation, paired_t_test
from ..atomic import write_json_atomic
from .bench_model import NONE, STRUCTURE_METRICS, SUPERVISED, TEST_METRICS, BenchPlan, finite
from .records import dataclass_dict
from .report import dice_boxplot, pyplot, translation_figure

log = logging.getLogger(__name__)

METRIC_TITLES = {"VS_dice": "VS Dice", "cochlea_dice": "cochlea Dice", "mean_dice": "mean Dice"}
#: nnU-Net fields reported per row (each row has its own workspace and dataset name)
_PER_ROW_FIELDS = ("dataset_id", "dataset_name")


def gap_closed(value: float, floor: float | None, ceiling: float | None) -> float | None:
    """Share of the floor-to-ceiling gap closed: ``(value - floor) / (ceiling - floor)``.

    None without both references, or when the ceiling is not above the floor (then there is
    no gap to close, and a ratio of two negative or tiny differences would read as progress).
    """
    if floor is None or ceiling is None or ceiling - floor < 1e-9:
        return None
    return (value - floor) / (ceiling - floor) + 0.0  # + 0.0: the floor row reads 0%, never -0%


def t_test_matrix(cases: dict[str, dict[str, dict[str, float]]], metric: str) -> dict[str, Any]:
    """Paired t-tests of every pair of methods on per-case ``metric``: symmetric p, antisymmetric t."""
    names = list(cases)
    shared = sorted(set.intersection(*(set(c) for c in cases.values())))
    values = {name: [cases[name][case][metric] for case in shared] for name in names}
    n = len(names)
    p = [[1.0] * n for _ in range(n)]
    t = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            result = paired_t_test(values[names[i]], values[names[j]])
            p[i][j] = p[j][i] = result["p"]
            t[i][j], t[j][i] = result["t"], -result["t"]
    return {"methods": names, "cases": len(shared), "p": p, "t": t}


def _seconds(stage: dict[str, Any] | None) -> float:
    return float(stage.get("seconds", 0.0)) if stage else 0.0


def collect(plan: BenchPlan, stages: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every number of the report, keyed as in ``bench.json``."""
    translators = {}
    for name in plan.run.translators:
        pool = stages.get(f"pool-{name}") or stages.get("pool", {})  # added later, or in the first build
        translate = pool.get("translate_seconds", {}).get(name)
        volumes = max(1, pool.get("volumes", 1))
        translators[name] = {
            "train_seconds": _seconds(stages.get(f"translator-{name}")),
            "translate_seconds": translate,
            "translate_seconds_per_volume": None if translate is None else round(translate / volumes, 2),
        }
    evaluations, seeds = {}, {}
    for method in plan.methods:
        replicates = plan.replicates_of(method)
        runs = [stages[f"evaluate-{r.key}"] for r in replicates]
        evaluations[method.name] = average_over_seeds(runs)
        if plan.options.seeds:
            seeds[method.name] = seed_spread({r.seed: e for r, e in zip(replicates, runs)})
    means = {name: e["summary"]["mean_dice"]["mean"] for name, e in evaluations.items()}
    floor, ceiling = means.get(NONE), means.get(SUPERVISED)
    methods = {}
    for method in plan.methods:
        evaluation = evaluations[method.name]
        rounds = plan.rounds_of(method)
        keys = [r.key for r in plan.replicates_of(method)]
        segment = np.mean([sum(_seconds(stages.get(f"segment-{k}-r{r}")) for r in range(rounds + 1)) for k in keys])
        methods[method.name] = {
            "training_data": method.training_data,
            "views": list(method.views),
            "rounds": rounds,
            "summary": {m: evaluation["summary"][m] for m in STRUCTURE_METRICS},
            "gap_closed": gap_closed(means[method.name], floor, ceiling),
            "seeds": seeds.get(method.name),
            "seconds": {
                "translator_training": round(sum(translators[v]["train_seconds"] for v in method.views), 1),
                "translation": round(sum(translators[v]["translate_seconds"] or 0.0 for v in method.views), 1),
                "segmenter_training": round(float(segment), 1),
                "prediction": round(float(np.mean([_seconds(stages.get(f"predict-{k}")) for k in keys])), 1),
            },
            "cases": evaluation["cases"],
        }
    cases = {name: m["cases"] for name, m in methods.items()}
    fidelity = stages.get("fidelity")
    per_row_fields = _PER_ROW_FIELDS + (("seed",) if plan.options.seeds else ())
    configs = [to_json_dict(s.config) for s in plan.segmenters.values()]
    shared_config = {k: v for k, v in configs[0].items() if k not in per_row_fields}
    return finite({
        "options": dataclass_dict(plan.options),
        "data": {"labelled_ceT1": len(plan.run.train.source), "unlabelled_hrT2": len(plan.run.train.target),
                 "labelled_hrT2": len(plan.labelled_targets), "test_hrT2": len(plan.run.test.target),
                 "paired": len(plan.paired)},
        "segmenter": {"name": plan.options.segmenter, "config": shared_config,
                      "per_row": {key: {k: to_json_dict(s.config).get(k) for k in per_row_fields}
                                  for key, s in plan.segmenters.items()}},
        "methods": methods,
        "paired_t_tests": {metric: t_test_matrix(cases, metric) for metric in TEST_METRICS},
        "fidelity": None if fidelity is None else fidelity["methods"],
        "fidelity_cases": None if fidelity is None else fidelity["cases"],
        "translators": translators,
        "notes": list(plan.notes),
    })


def average_over_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One evaluation from the evaluations of several seeds: each case's scores averaged over
    the seeds (the cases all of them scored), with their summary over cases."""
    if len(runs) == 1:
        return runs[0]
    shared = sorted(set.intersection(*(set(run["cases"]) for run in runs)))
    cases = {case: {metric: float(np.mean([run["cases"][case][metric] for run in runs]))
                    for metric in runs[0]["cases"][case]} for case in shared}
    return Evaluation(cases).as_dict()


def seed_spread(runs: dict[int | None, dict[str, Any]]) -> dict[str, Any]:
    """Each seed's mean over cases, and the mean and std (ddof 0) of those means over seeds."""
    per_seed = {str(seed): {m: run["summary"][m]["mean"] for m in TEST_METRICS} for seed, run in runs.items()}
    spread = {}
    for metric in TEST_METRICS:
        values = np.array([scores[metric] for scores in per_seed.values()], dtype=np.float64)
        spread[metric] = {"mean": float(values.mean()), "std": float(values.std(ddof=0)), "n": int(len(values))}
    return {"per_seed": per_seed, "over_seeds": spread}


def _pm(stat: dict[str, float], digits: int) -> str:
    return f"{stat['mean']:.{digits}f} +- {stat['std']:.{digits}f}"


def format_p(p: float | None) -> str:
    return "-" if p is None else f"{p:.3g}"


def format_gap(gap: float | None) -> str:
    return "-" if gap is None else f"{gap:.0%}"


def _seconds_cell(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}" if value >= 1 else f"{value:.2f}"


def table_one(data: dict[str, Any]) -> list[str]:
    header = ("| method | training data | VS Dice | VS ASSD (mm) | cochlea Dice | cochlea ASSD (mm) | mean Dice | "
              "mean ASSD (mm) | gap closed |")
    lines = [header, "|---" * 9 + "|"]
    for name, m in data["methods"].items():
        s = m["summary"]
        lines.append(f"| {name} | {m['training_data']} | {_pm(s['VS_dice'], 3)} | {_pm(s['VS_assd'], 2)} | "
                     f"{_pm(s['cochlea_dice'], 3)} | {_pm(s['cochlea_assd'], 2)} | {_pm(s['mean_dice'], 3)} | "
                     f"{_pm(s['mean_assd'], 2)} | {format_gap(m['gap_closed'])} |")
    return lines


def seed_table(data: dict[str, Any], seeds: tuple[int, ...]) -> list[str]:
    header = ("| method | " + " | ".join(f"mean Dice, seed {seed}" for seed in seeds)
              + " | VS Dice over seeds | cochlea Dice over seeds | mean Dice over seeds |")
    lines = [header, "|---" * (len(seeds) + 4) + "|"]
    for name, m in data["methods"].items():
        spread = m["seeds"]
        cells = [f"{spread['per_seed'][str(seed)]['mean_dice']:.3f}" for seed in seeds]
        cells += [_pm(spread["over_seeds"][metric], 3) for metric in ("VS_dice", "cochlea_dice", "mean_dice")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def p_table(matrix: dict[str, Any]) -> list[str]:
    names = matrix["methods"]
    lines = ["| p | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for i, name in enumerate(names):
        cells = ["-" if i == j else format_p(matrix["p"][i][j]) for j in range(len(names))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def markdown(plan: BenchPlan, data: dict[str, Any], figures: dict[str, Path]) -> str:
    options, counts = plan.options, data["data"]
    config = data["segmenter"]["config"]
    shown = ("configuration", "num_epochs", "bf16_epoch_scale", "iterations_per_epoch", "seed")
    budget = ", ".join(f"{k} {config[k]}" for k in shown if k in config)
    combos = ", ".join("+".join(c) for c in options.combos) or "none"
    seeds = ", ".join(str(seed) for seed in options.seeds)
    seeding = f"once with each of the seeds {seeds}" if options.seeds else "with the same seed"
    lines = [
        f"# vstk bench: {', '.join(options.translators)}",
        "",
        (f"Profile `{options.profile}`. Translators: {', '.join(options.translators)}; multi-view combinations: "
         f"{combos}. Every row trains the same segmenter `{options.segmenter}` ({budget}) {seeding} on "
         f"the ear crops of its own training images, {options.rounds} self-training round(s), and is scored on the "
         f"same {counts['test_hrT2']} test hrT2. Data: {counts['labelled_ceT1']} labelled ceT1, "
         f"{counts['unlabelled_hrT2']} unlabelled hrT2"
         + (f" ({counts['labelled_hrT2']} with labels for the `{SUPERVISED}` row)" if counts["labelled_hrT2"] else "")
         + "."),
        "",
        "## Table 1: test set (mean +- std over cases)",
        "",
        *table_one(data),
        "",
        *([f"With --seeds, each case's scores are first averaged over the {len(options.seeds)} seeds; the spread "
           "over seeds is in the next table.", ""] if options.seeds else []),
        (f"`{NONE}`: the segmenter on raw ceT1 (the floor); `{SUPERVISED}`: on labelled hrT2 (the ceiling). "
         f"Gap closed = (mean Dice - {NONE}) / ({SUPERVISED} - {NONE}); '-' when `{SUPERVISED}` is not above "
         f"`{NONE}` (the segmenter budget did not learn the target domain: no gap to measure). "
         "Empty masks: both empty Dice 1, ASSD 0; "
         "one empty Dice 0, ASSD = the image diagonal."),
        "",
    ]
    if options.seeds:
        lines += [f"## Seeds (mean over the {counts['test_hrT2']} test cases, per segmenter seed)", "",
                  *seed_table(data, options.seeds), "",
                  "The last three columns: mean +- std over the seeds of each seed's mean (std with ddof 0).", ""]
    tests = data["paired_t_tests"]
    lines += [f"## Paired t-tests on per-case mean Dice ({tests['mean_dice']['cases']} test cases)", "",
              "Two-sided p-values (the paper's Fig. 3)"
              + (" on the seed-averaged case scores" if options.seeds else "")
              + "; VS and cochlea matrices are in bench.json and the figure.",
              "", *p_table(tests["mean_dice"]), "", "![p-values](figures/ttest_pvalues.png)", ""]
    if data["fidelity"] is not None:
        lines += [f"## Translation fidelity ({data['fidelity_cases']} paired cases, against the true hrT2)", "",
                  "| translator | PSNR (dB) | SSIM | training (s) | translation (s / volume) |", "|---|---|---|---|---|"]
        for name, f in data["fidelity"].items():
            info = data["translators"].get(name, {})
            label = f"{name} (ceT1 as is)" if name == NONE else name
            lines.append(f"| {label} | {_pm(f['psnr'], 2)} | {_pm(f['ssim'], 3)} | "
                         f"{_seconds_cell(info.get('train_seconds'))} | "
                         f"{_seconds_cell(info.get('translate_seconds_per_volume'))} |")
        lines.append("")
    lines += ["## Time (seconds" + (", segmenter and prediction per seed" if options.seeds else "") + ")", "",
              "| method | translator training | translation | segmenter training | prediction |", "|---|---|---|---|---|"]
    for name, m in data["methods"].items():
        s = m["seconds"]
        lines.append(f"| {name} | {_seconds_cell(s['translator_training'])} | {_seconds_cell(s['translation'])} | "
                     f"{_seconds_cell(s['segmenter_training'])} | {_seconds_cell(s['prediction'])} |")
    lines += ["", ("Each translator trains once and its views are translated once; a combination lists the sum "
                   "over its translators."), ""]
    if data["notes"]:
        lines += ["## Notes", "", *[f"- {note}" for note in data["notes"]], ""]
    lines += ["## Figures", "", "![Dice per structure and method](figures/dice_boxplot.png)", ""]
    if "views" in figures:
        lines += ["![Translated views](figures/translated_views.png)", ""]
    return "\n".join(lines)


def pvalue_figure(tests: dict[str, dict[str, Any]], path: Path) -> Path:
    """Heat maps of the paired t-test p-values (VS, cochlea, mean Dice), one cell per pair."""
    from matplotlib.colors import LogNorm

    plt = pyplot()
    names = tests["mean_dice"]["methods"]
    n = len(names)
    fig, axes = plt.subplots(1, len(tests), figsize=(2.2 + 1.9 * len(tests) * max(3, 0.55 * n + 1.2) / 2.4,
                                                     1.6 + 0.55 * n), squeeze=False)
    norm = LogNorm(vmin=1e-4, vmax=1.0)
    image = None
    for ax, (metric, matrix) in zip(axes[0], tests.items()):
        p = np.array([[np.nan if v is None else v for v in row] for row in matrix["p"]], dtype=float)
        shown = np.clip(np.where(np.eye(n, dtype=bool), np.nan, p), 1e-4, 1.0)
        image = ax.imshow(shown, cmap="magma", norm=norm)
        for i in range(n):
            for j in range(n):
                if i == j:
                    continue
                value = p[i, j]
                text = "nan" if np.isnan(value) else "<0.001" if value < 0.001 else f"{value:.2g}"
                dark = not np.isnan(value) and value < 0.01
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if dark else "black", fontweight="bold" if value < 0.05 else "normal")
        ax.set_xticks(range(n), names, rotation=35, ha="right", fontsize=8)
        ax.set_yticks(range(n), names if ax is axes[0][0] else [""] * n, fontsize=8)
        ax.set_title(METRIC_TITLES[metric], fontsize=9)
        ax.set_facecolor("0.85")
    cbar = fig.colorbar(image, ax=list(axes[0]), shrink=0.85, pad=0.02)
    cbar.set_label("p (paired t-test, per-case)", fontsize=8)
    cbar.ax.tick_params(labelsize=7)
    fig.suptitle("Paired t-tests between methods (bold: p < 0.05)", fontsize=10)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def write_bench_report(plan: BenchPlan, stages: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Write ``bench.json``, ``bench.md`` and the figures; return the JSON's content."""
    data = collect(plan, stages)
    folder = plan.out / "figures"
    folder.mkdir(exist_ok=True)
    figures = {
        "dice": dice_boxplot({name: m["cases"] for name, m in data["methods"].items()}, folder / "dice_boxplot.png",
                             panels=(("VS_dice", "VS"), ("cochlea_dice", "cochlea"), ("mean_dice", "mean"))),
        "ttest": pvalue_figure(data["paired_t_tests"], folder / "ttest_pvalues.png"),
    }
    figures["views"] = translation_figure(plan.run, folder / "translated_views.png")
    write_json_atomic(plan.out / "bench.json", data, default=str)
    (plan.out / "bench.md").write_text(markdown(plan, data, figures))
    log.info("bench report: %s", plan.out / "bench.md")
    return data
