"""Evaluation and the run report: Markdown + JSON tables and PNG figures.

Figures (the paper's): Dice box plots per structure and model (Fig. 2), translated examples
of every view beside a real hrT2 (Fig. 4), and predicted contours on test slices.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..atomic import write_json_atomic
from ..evaluation.evaluate import evaluate_folders, paired_t_test, summary_table, volume_table
from ..labels import COCHLEA, VS
from ..roi import ear_boxes
from .predictions import prediction_dirs, prediction_rounds

log = logging.getLogger(__name__)


def evaluate_run(plan) -> dict[str, Any]:
    """Score every prediction folder of the run against the test labels -> evaluation.json."""
    labels = _label_dir(plan)
    results = {}
    for name, folder in prediction_dirs(plan).items():
        results[name] = evaluate_folders(folder, labels).as_dict()
    names = list(results)
    tests = {}
    if len(names) > 1:
        a, b = names[0], names[1]
        for metric in ("VS_dice", "cochlea_dice", "mean_dice"):
            va = [results[a]["cases"][c][metric] for c in sorted(results[a]["cases"])]
            vb = [results[b]["cases"][c][metric] for c in sorted(results[b]["cases"])]
            tests[f"{a} vs {b}: {metric}"] = paired_t_test(va, vb)
    data = {"models": results, "paired_t_tests": tests, "label_dir": str(labels)}
    write_json_atomic(plan.out / "evaluation.json", data)
    return {"scores": {name: {m: r["summary"][m]["mean"] for m in ("VS_dice", "cochlea_dice", "mean_dice")}
                       for name, r in results.items()}}


def _label_dir(plan) -> Path:
    labels = {c.label.parent for c in plan.test.target if c.label is not None}
    if len(labels) != 1:
        raise ValueError("test labels must live in one folder")
    return labels.pop()


def write_report(plan, summary: dict[str, Any]) -> Path:
    """OUT/report.md with the tables and the three figures."""
    evaluation = json.loads((plan.out / "evaluation.json").read_text())
    figures = plan.out / "figures"
    figures.mkdir(exist_ok=True)
    models = evaluation["models"]
    dice_png = dice_boxplot({k: v["cases"] for k, v in models.items()}, figures / "dice_boxplot.png")
    views_png = translation_figure(plan, figures / "translated_views.png")
    contours_png = contour_figure(plan, figures / "test_contours.png")
    lines = [
        f"# vstk run: {', '.join(plan.translators)}",
        "",
        f"Profile `{plan.options.profile}`, segmenter `{plan.options.segmenter}`, pseudo-labeler "
        f"`{plan.options.pseudo_labeler}`, {plan.options.rounds} self-training round(s); "
        f"{len(plan.train.source)} labelled ceT1, {len(plan.train.target)} unlabelled hrT2, "
        f"{len(plan.test.target)} test hrT2"
        f"{'; test predictions keep only their largest VS component' if plan.options.keep_largest_vs else ''}.",
        "",
        "## Test set (mean +- std over cases)",
        "",
        summary_table({name: m["summary"] for name, m in models.items()}),
        "",
        "Empty masks: " + next(iter(models.values()))["convention"] + ".",
        "",
    ]
    by_site = {f"{name}, {site}": summary for name, m in models.items()
               for site, summary in m.get("summary_by_site", {}).items()}  # evaluations of older runs have none
    if by_site:
        lines += ["## Test set by site (mean +- std over each site's cases)", "", summary_table(by_site), ""]
    if all("volume_ratio_median" in m for m in models.values()):  # evaluations of older runs have none
        lines += ["## Volumes (mean over cases; ratio: median over cases)", "",
                  volume_table({name: (m["summary"], m["volume_ratio_median"]) for name, m in models.items()}), "",
                  "A ratio far from 1 on every case is a systematic over- or under-segmentation.", ""]
    if evaluation["paired_t_tests"]:
        lines += ["## Paired t-tests (per-case Dice)", "", "| comparison | t | p |", "|---|---|---|"]
        for name, t in evaluation["paired_t_tests"].items():
            lines.append(f"| {name} | {t['t']:.3f} | {t['p']:.4f} |")
        lines.append("")
    lines += _contrast_section(plan)
    if plan.regions is not None:
        lines += _ears_section(plan, figures / "ears_found.png")
    lines += _model_sections(plan)
    lines += ["## Stages", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {name} | {info.get('seconds', '-')} |" for name, info in summary.items()]
    lines += ["", "## Figures", "", f"![Dice per structure]({dice_png.relative_to(plan.out)})", "",
              f"![Translated views]({views_png.relative_to(plan.out)})", "",
              f"![Test contours]({contours_png.relative_to(plan.out)})", ""]
    path = plan.out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _contrast_section(plan) -> list[str]:
    """How each view draws the VS and the cochlea next to the ceT1 and the labelled test hrT2
    (-> ``structure_contrast.json``); nothing for a run without a pool."""
    from ..evaluation.contrast import RING_MM, contrast_summary, contrast_table, pool_contrasts

    if not plan.pool.is_file():
        return []
    sources = {c.case_id: c.ceT1 for c in plan.train.source}
    real = [(c.hrT2, c.label) for c in plan.test.target if c.label is not None]
    summary = contrast_summary(pool_contrasts(plan.pool, sources, real))
    write_json_atomic(plan.out / "structure_contrast.json", {"ring_mm": RING_MM, "summary": summary})
    return ["## Structure contrast of the views", "",
            f"Mean inside the structure minus the mean of the unlabelled voxels within {RING_MM:g} mm of it, over the "
            "image's robust intensity range; median (min..max) over cases. A view that has taken on hrT2's "
            "contrast reads like the real hrT2 column (cochlea bright against bone, VS grey against bright "
            "fluid), one that kept ceT1's like the ceT1 column.", "", contrast_table(summary), ""]


def _ears_section(plan, path: Path) -> list[str]:
    """With ``--ears found``: where the ears were found in each test image (the distance to
    the truth cochlea where a test label exists) and a figure of them."""
    from ..crossmoda import read_label
    from ..ears import cochlea_centres
    from ..errors import InputError

    lines = ["## Ears found in the test images", "",
             "Cochlea centres found (mm, physical x y z; `-x` side first) and, with a test label, the distance "
             "to the centroid of each true cochlea. Every image's ears: `ears/regions.json`.", "",
             "| image | cochlea 1 | cochlea 2 | distance to truth (mm) |", "|---|---|---|---|"]
    shown = []
    for case in plan.test.target:
        region = plan.regions[str(case.hrT2)]
        found = [np.asarray(c) for c in region.ears.cochleae]
        truth = []
        if case.label is not None:
            try:
                truth = cochlea_centres(read_label(case.label))
            except InputError:  # a label without cochleae: no distance to show
                pass
        distances = "-"
        if len(truth) == 2:
            distances = ", ".join(f"{min(np.linalg.norm(f - t) for t in truth):.1f}" for f in found)
        lines.append(f"| {case.case_id} | " + " | ".join(" ".join(f"{v:.1f}" for v in c) for c in found)
                     + f" | {distances} |")
        if len(shown) < 4:
            shown.append((case, region, truth))
    lines += ["", f"![Ears found]({ears_figure(shown, path).relative_to(plan.out)})", ""]
    return lines


def ears_figure(shown, path: Path) -> Path:
    """Each image whole, on the axial slice through its cochleae: the ears found (red +),
    the ear region cropped for the segmenter (yellow) and the true cochleae (green x)."""
    from ..crossmoda import read_image

    plt = pyplot()
    fig, axes = plt.subplots(1, len(shown), figsize=(3.4 * len(shown), 3.6), squeeze=False)
    for ax, (case, region, truth) in zip(axes[0], shown):
        image = read_image(case.hrT2)
        found = [image.physical_to_index(c) for c in region.ears.cochleae]  # (z, y, x)
        k = int(np.clip(round(float(np.mean([f[0] for f in found]))), 0, image.shape[0] - 1))
        plane = image.array[k]
        lo, hi = np.percentile(plane, (1, 99.5))
        ax.imshow(plane, cmap="gray", vmin=lo, vmax=hi)
        (_, y0, x0), (_, ny, nx) = region.box.start, region.box.size
        ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), nx, ny, fill=False, color="yellow", linewidth=0.8))
        ax.plot([f[2] for f in found], [f[1] for f in found], "+", color="red", markersize=10, mew=1.5)
        if truth:
            points = [image.physical_to_index(t) for t in truth]
            ax.plot([t[2] for t in points], [t[1] for t in points], "x", color="lime", markersize=7, mew=1.2)
        ax.set_title(f"{case.case_id} z={k}", fontsize=8)
        ax.set_axis_off()
    fig.suptitle("ears found (red +), truth (green x), ear region (yellow)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _model_sections(plan) -> list[str]:
    """What the segmenter says about each predicted round's model (its optional ``describe``,
    e.g. nnU-Net's cross-validation and choice)."""
    describe = getattr(plan.segmenter, "describe", None)
    if describe is None:
        return []
    lines = []
    for round_index in sorted(prediction_rounds(plan)):
        text = describe(round_index)
        if text:
            lines += [f"## The segmenter of round {round_index}", "", text, ""]
    return lines


def pyplot():
    """matplotlib's pyplot for files (the Agg backend), in matplotlib's own style."""
    import matplotlib

    matplotlib.use("Agg")
    # nnU-Net's logger calls seaborn.set(font_scale=2.5) on import: draw with matplotlib's own style
    matplotlib.rcdefaults()
    import matplotlib.pyplot as plt

    return plt


DICE_PANELS = (("VS_dice", "VS"), ("cochlea_dice", "cochlea"))


def dice_boxplot(cases_by_model: dict[str, dict[str, dict[str, float]]], path: Path,
                 panels: Sequence[tuple[str, str]] = DICE_PANELS) -> Path:
    """Fig. 2: per-case Dice of VS and cochlea (``panels``: metric and title), one box per model."""
    plt = pyplot()
    width = 4 + 1.2 * len(cases_by_model) * len(panels) / 2
    fig, axes = plt.subplots(1, len(panels), figsize=(width, 3.6), sharey=True, squeeze=False)
    for ax, (metric, title) in zip(axes[0], panels):
        data = [[s[metric] for s in cases.values()] for cases in cases_by_model.values()]
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(data) + 1), list(cases_by_model), rotation=30, ha="right")
        rng = np.random.default_rng(0)
        for i, values in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.08, 0.08, len(values)), values, s=10, alpha=0.6, color="tab:blue")
        ax.set_title(f"{title} Dice")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _ear_window(volume, label, rule):
    """Slice index and in-plane window of the ear box holding most foreground."""
    best = None
    for box in ear_boxes(volume, rule):
        z0, y0, x0 = (max(v, 0) for v in box.start)
        z1, y1, x1 = (min(s + n, e) for s, n, e in zip(box.start, box.size, volume.shape))
        part = label[z0:z1, y0:y1, x0:x1] > 0 if label is not None else None
        score = int(part.sum()) if part is not None else 0
        k = z0 + (int(np.argmax(part.sum(axis=(1, 2)))) if part is not None and part.any() else (z1 - z0) // 2)
        if best is None or score > best[0]:
            best = (score, k, (slice(y0, y1), slice(x0, x1)))
    return best[1], best[2]


def translation_figure(plan, path: Path) -> Path:
    """Fig. 4: for two labelled cases, ceT1 and every translated view; a real hrT2 beside them."""
    from ..pool import Pool

    plt = pyplot()
    pool = Pool(plan.pool)
    views = pool.views()
    cases = pool.cases(views[0])[:2]
    targets = pool.targets()
    greyed = [bool(pool.provenance(v, cases[0]).get("translator_config", {}).get("grey_tumour")) for v in views]
    columns = (["ceT1"] + [f"{v} (of ceT1, VS greyed)" if g else v for v, g in zip(views, greyed)]
               + ["real hrT2 (other subject)"])
    fig, axes = plt.subplots(len(cases), len(columns), figsize=(2.7 * len(columns), 2.8 * len(cases)), squeeze=False)
    source_files = {c.case_id: c for c in plan.train.source}
    from ..crossmoda import read_image

    for r, case in enumerate(cases):
        label = pool.read_label(case)
        k, window = _ear_window(label, label.array, plan.ear_rule)
        ce = read_image(source_files[case].ceT1)
        images = [ce.array[k][window]] + [pool.read_image(v, case).array[k][window] for v in views]
        real = pool.read_target(targets[r % len(targets)])
        kr, window_r = _ear_window(real, None, plan.ear_rule)
        images.append(real.array[kr][window_r])
        for c, (image, title) in enumerate(zip(images, columns)):
            lo, hi = np.percentile(image, (1, 99.5))
            axes[r, c].imshow(image, cmap="gray", vmin=lo, vmax=hi)
            axes[r, c].set_axis_off()
            if r == 0:
                axes[r, c].set_title(title, fontsize=9)
            if 0 < c < len(columns) - 1 or c == 0:
                axes[r, c].contour(label.array[k][window] == VS, levels=[0.5], colors="red", linewidths=0.6)
                axes[r, c].contour(label.array[k][window] == COCHLEA, levels=[0.5], colors="cyan", linewidths=0.6)
        axes[r, 0].set_ylabel(case, fontsize=7)
    fig.suptitle("translated ceT1 views (ceT1 label: VS red, cochlea cyan)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def contour_figure(plan, path: Path, max_cases: int = 4) -> Path:
    """Predicted (solid) and true (dashed) contours on test hrT2 slices through the structures."""
    from ..crossmoda import load_case
    from ..volume import read_nifti

    plt = pyplot()
    cases = [c for c in plan.test.target if c.label is not None][:max_cases]
    fig, axes = plt.subplots(len(cases), 2, figsize=(6.4, 3.0 * len(cases)), squeeze=False)
    final = prediction_dirs(plan)[f"round {plan.options.rounds}"]
    for r, case in enumerate(cases):
        image, truth = load_case(case, "hrT2")
        prediction = read_nifti(final / f"{case.case_id}_Label.nii.gz").array
        for c, value in enumerate((VS, COCHLEA)):
            k, window = _ear_window(image, truth.array == value, plan.ear_rule)
            ax = axes[r, c]
            slab = image.array[k][window]
            lo, hi = np.percentile(slab, (1, 99.5))
            ax.imshow(slab, cmap="gray", vmin=lo, vmax=hi)
            ax.contour(truth.array[k][window] == value, levels=[0.5], colors="lime", linewidths=0.8, linestyles="dashed")
            if (prediction[k][window] == value).any():
                ax.contour(prediction[k][window] == value, levels=[0.5], colors="red", linewidths=0.8)
            ax.set_axis_off()
            ax.set_title(f"{case.case_id} {'VS' if value == VS else 'cochlea'} z={k}", fontsize=8)
    fig.suptitle("test hrT2: truth dashed green, prediction red", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
