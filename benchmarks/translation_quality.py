"""Translation fidelity on the phantom's paired cases: PSNR and SSIM against the true hrT2.

    python benchmarks/translation_quality.py --phantom DATA --out OUT [--translators cyclegan,qsattn]
        [--steps N] [--set key=value ...]

Trains each translator (cpu profile unless ``--profile``) on ``DATA/train`` (unpaired ceT1 and
hrT2), translates every ``DATA/paired/*_ceT1`` and scores it against the same anatomy's
``_hrT2`` rendering on the same grid. Baseline: ceT1 histogram-matched to a real training
hrT2 (SimpleITK). Both images are normalised to [-1, 1] by robust percentiles (data range
2); scores cover the head voxels inside the translated field of view. Writes a Markdown
table (stdout and OUT/translation_quality.md), JSON, and OUT/translation_examples.png (slices
through each paired case's VS and cochlea in every view).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def histogram_match(source, reference):
    import SimpleITK as sitk

    matcher = sitk.HistogramMatchingImageFilter()
    matcher.SetNumberOfHistogramLevels(256)
    matcher.SetNumberOfMatchPoints(15)
    matcher.ThresholdAtMeanIntensityOn()
    out = matcher.Execute(sitk.Cast(source.to_sitk(), sitk.sitkFloat32), sitk.Cast(reference.to_sitk(), sitk.sitkFloat32))
    return source.with_array(sitk.GetArrayFromImage(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phantom", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--translators", default="cyclegan,qsattn")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--set", dest="settings", action="append", default=[])
    parser.add_argument("--work", type=Path, default=None,
                        help="translator work folder to reuse, e.g. a vstk run's OUT/translators [OUT/work]")
    args = parser.parse_args()

    from vstk.crossmoda import discover, read_image, read_label
    from vstk.evaluation.metrics import psnr, ssim
    from vstk.translation.cli import translator_from_options
    from vstk.translation.data import head_mask, robust_normalisation

    folder = discover(args.phantom / "train", require_source=True, require_target=True)
    sources = [read_image(c.ceT1) for c in folder.source]
    targets = [read_image(c.hrT2) for c in folder.target]
    paired = discover(args.phantom / "paired")
    pairs = [(c.case_id, read_image(c.ceT1), read_image(c.hrT2)) for c in paired.source]
    labels = {c.case_id: read_label(c.label).array for c in paired.source if c.label is not None}

    translated: dict[str, dict[str, np.ndarray]] = {"histmatch": {}}
    timing = {}
    for case, ce, t2 in pairs:
        translated["histmatch"][case] = histogram_match(ce, targets[0]).array
    coverage: dict[str, np.ndarray] = {}
    for name in args.translators.split(","):
        translator = translator_from_options(name, args.profile, tuple(args.settings), args.steps, None)
        started = time.perf_counter()
        workdir = (args.work or args.out / "work") / name
        reused = (workdir / "translator.pt").exists()
        if (workdir / "translator.pt").exists():
            translator.load(workdir / "translator.pt")  # trained already (e.g. by vstk run)
        else:
            translator.train(sources, targets, workdir)
        timing[name] = {"train_s": round(time.perf_counter() - started, 1) if not reused else "reused"}
        translated[name] = {}
        started = time.perf_counter()
        for case, ce, _ in pairs:
            out = translator.translate_volume(ce)
            translated[name][case] = out.array
            covered = out.array > 0
            coverage[case] = covered if case not in coverage else coverage[case] & covered
        timing[name]["translate_s_per_volume"] = round((time.perf_counter() - started) / len(pairs), 2)

    rows = []
    per_case = {}
    for method, volumes in translated.items():
        scores = {"psnr": [], "ssim": [], "vs_bias": [], "cochlea_bias": []}
        for case, ce, t2 in pairs:
            truth = robust_normalisation(t2).forward(t2.array)
            mask = head_mask(t2.array) & coverage.get(case, np.ones(t2.shape, bool))
            image = ce.with_array(volumes[case])
            pred = robust_normalisation(image).forward(image.array)
            scores["psnr"].append(psnr(pred, truth, 2.0, mask))
            scores["ssim"].append(ssim(pred, truth, 2.0, mask))
            per_case.setdefault(case, {})[method] = {"psnr": scores["psnr"][-1], "ssim": scores["ssim"][-1]}
            for value, key in ((1, "vs_bias"), (2, "cochlea_bias")):
                inside = (labels[case] == value) & mask if case in labels else None
                if inside is not None and inside.any():
                    scores[key].append(float(pred[inside].mean() - truth[inside].mean()))
                    per_case[case][method][key] = scores[key][-1]
        rows.append({"method": method, "psnr_mean": float(np.mean(scores["psnr"])),
                     "psnr_std": float(np.std(scores["psnr"])), "ssim_mean": float(np.mean(scores["ssim"])),
                     "ssim_std": float(np.std(scores["ssim"])), **timing.get(method, {}),
                     **{key: float(np.mean(scores[key])) for key in ("vs_bias", "cochlea_bias") if scores[key]}})
    table = ["| method | PSNR (dB) | SSIM | VS intensity bias | cochlea intensity bias | train s | translate s/volume |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['method']} | {r['psnr_mean']:.2f} +- {r['psnr_std']:.2f} | {r['ssim_mean']:.3f} +- "
                     f"{r['ssim_std']:.3f} | {r.get('vs_bias', float('nan')):+.2f} | "
                     f"{r.get('cochlea_bias', float('nan')):+.2f} | {r.get('train_s', '-')} | "
                     f"{r.get('translate_s_per_volume', '-')} |")
    text = "\n".join(table)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "translation_quality.md").write_text(text + "\n")
    (args.out / "translation_quality.json").write_text(json.dumps({"rows": rows, "per_case": per_case}, indent=2))
    save_examples(pairs, translated, coverage, args.out / "translation_examples.png", labels)


def save_examples(pairs, translated, coverage, path: Path, labels=None) -> None:
    """Fig. 4 style: per paired case, an axial slice through the VS and one through a cochlea
    (60 mm windows around them; the slice of widest coverage where a case has no label), in
    every view."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vstk.translation.data import robust_normalisation

    labels = labels or {}
    rows = []
    for case, ce, t2 in pairs:
        label = labels.get(case)
        for value, name in ((1, "VS"), (2, "cochlea")):
            if label is not None and (label == value).any():
                points = np.argwhere(label == value)
                k, y, x = points[len(points) // 2]
                half = int(round(30.0 / ce.spacing[0]))
                window = (slice(max(0, y - half), y + half), slice(max(0, x - half), x + half))
                rows.append((case, name, ce, t2, int(k), window))
        if label is None:
            cover = coverage.get(case)
            k = int(np.argmax(cover.sum(axis=(1, 2)))) if cover is not None else ce.shape[0] // 2
            rows.append((case, "", ce, t2, k, (slice(None), slice(None))))
    methods = list(translated)
    columns = ["ceT1"] + methods + ["true hrT2"]
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(2.4 * len(columns), 2.4 * len(rows)), squeeze=False)
    for r, (case, name, ce, t2, k, window) in enumerate(rows):
        images = [ce.array] + [translated[m][case] for m in methods] + [t2.array]
        for c, (image, title) in enumerate(zip(images, columns)):
            norm = robust_normalisation(ce.with_array(image)).forward(image[k][window][None])
            axes[r, c].imshow(norm[0], cmap="gray", vmin=-1, vmax=1)
            axes[r, c].set_axis_off()
            if r == 0:
                axes[r, c].set_title(title, fontsize=10)
        axes[r, 0].text(2, 10, f"{case} {name}", color="yellow", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
