"""The segmenter's supervised ceiling and its speed: nnU-Net trained on LABELLED phantom hrT2.

    python benchmarks/segmenter_ceiling.py --phantom DIR --out WORK [--profile cpu|paper]
        [--run RUN] [--set key=value ...] [--device cpu|cuda] [--json FILE]

No translation is involved: the segmenter trains on the ear crops of the phantom's training
hrT2 with their true labels (``vstk phantom DIR --target-labels`` writes them; augmented as
the profile augments real hrT2, i.e. as its pseudo-labelled cases), then
segments the test hrT2 and is scored on them, exactly as ``vstk run`` scores its runs. This
is the best any translated pool can hope for with the same segmenter budget, so it tells
whether a missed Dice target is the translators' fault or the segmenter's. It also times the
training (seconds per iteration from the per-epoch progress), which is how the `paper`
profile's cost is measured on a GPU.

``--run RUN`` names a ``vstk run --ears found`` folder made on the same phantom (crossmoda
geometry): every training and test hrT2 is then cut to the ear region that run found in it
(``RUN/ears``; images it did not locate are located against its reference), as that run's
segmenter saw them, and the predictions are put back on each test image's grid before
scoring. Without it the ear boxes of the fixed rule are used (slab geometry).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from vstk.crossmoda import discover, read_image, read_label
from vstk.evaluation.metrics import dice
from vstk.pipeline.regions import EARS_DIR, Region, crop_labelled, crop_to_region, found_centres, locate_regions, restore
from vstk.pipeline.stages import ear_crops, predict_full
from vstk.plugins import load_plugins
from vstk.protocols import TrainingCase
from vstk.roi import EarRule


def found_regions(paths: list[Path], run: Path | None) -> dict[str, Region] | None:
    """The ear region of every image in ``paths`` found by the run ``run`` (None without one)."""
    if run is None:
        return None
    return locate_regions({str(path): (path, read_image(path)) for path in paths}, run / EARS_DIR)


def labelled_crops(phantom: Path, rule: EarRule, regions: dict[str, Region] | None) -> list[TrainingCase]:
    labels = phantom / "train_hrT2_labels"
    cases = []
    for path in sorted((phantom / "train").glob("*_hrT2.nii.gz")):
        case_id = path.name[: -len("_hrT2.nii.gz")]
        label_path = labels / f"{case_id}_Label.nii.gz"
        image, label = read_image(path), read_label(label_path)
        if regions is not None:
            image, label = crop_labelled(image, label, regions[str(path)].box, label_path)
        cases += [TrainingCase(cid, crop_image, crop_label, truth_target=True)
                  for cid, _, crop_image, crop_label in ear_crops(image, label, rule, case_id)]
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phantom", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="segmenter work folder (must be new or empty)")
    parser.add_argument("--profile", default="cpu", choices=["cpu", "paper"])
    parser.add_argument("--run", type=Path, default=None,
                        help="a `vstk run --ears found` folder on this phantom: use the ear regions it found")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    overrides = dict(item.split("=", 1) for item in args.settings)
    if args.device:
        overrides["device"] = args.device
    if not (args.phantom / "train_hrT2_labels").is_dir():
        sys.exit(f"{args.phantom / 'train_hrT2_labels'} is missing: write the phantom with "
                 f"`vstk phantom {args.phantom} --target-labels`")
    test = discover(args.phantom / "test", labels=args.phantom / "test_labels", require_target=True)
    regions = found_regions(sorted((args.phantom / "train").glob("*_hrT2.nii.gz"))
                            + [c.hrT2 for c in test.target], args.run)
    rule = EarRule() if regions is None else EarRule(found=found_centres(regions))
    cases = labelled_crops(args.phantom, rule, regions)
    segmenter_class = load_plugins().get("segmenter", "nnunet")
    config = segmenter_class.profile(args.profile, **overrides)
    segmenter = segmenter_class(config, args.out)

    stamps: list[float] = []
    totals: list[int] = []  # the epochs the trainer runs (bf16_epoch_scale may lengthen num_epochs)

    def progress(done: int, total: int, message: str) -> None:
        stamps.append(time.perf_counter())
        totals.append(total)

    start = time.perf_counter()
    segmenter.train(cases, progress=progress)
    train_s = time.perf_counter() - start
    epochs = np.diff([start, *stamps])
    per_iteration = statistics.median(epochs[1:] if len(epochs) > 1 else epochs) / config.iterations_per_epoch

    originals = {c.case_id: read_image(c.hrT2) for c in test.target}
    truth = {c.case_id: read_label(c.label).array for c in test.target}
    cut = {c.case_id: regions[str(c.hrT2)] for c in test.target} if regions is not None else {}
    images = {case: crop_to_region(image, cut[case]) if case in cut else image for case, image in originals.items()}
    start = time.perf_counter()
    predictions = predict_full(segmenter, images, rule, round_index=0)
    predict_s = time.perf_counter() - start
    predictions = [dataclasses.replace(p, label=restore(p.label, cut[p.case_id], originals[p.case_id]))
                   if p.case_id in cut else p for p in predictions]
    scores = {p.case_id: {"vs": dice(p.label.array == 1, truth[p.case_id] == 1),
                          "cochlea": dice(p.label.array == 2, truth[p.case_id] == 2)} for p in predictions}
    result = {
        "profile": args.profile, "overrides": overrides, "run": None if args.run is None else str(args.run),
        "configuration": config.configuration,
        "training_crops": len(cases), "iterations": totals[-1] * config.iterations_per_epoch,
        "train_s": round(train_s, 1), "s_per_iteration": round(per_iteration, 4), "predict_s": round(predict_s, 1),
        "vs_dice": float(np.mean([s["vs"] for s in scores.values()])),
        "cochlea_dice": float(np.mean([s["cochlea"] for s in scores.values()])),
        "per_case": scores,
    }
    print(f"{args.profile} {config.configuration} {overrides}: {result['iterations']} iterations in "
          f"{train_s:.0f} s ({per_iteration:.3f} s/iteration, median epoch), predict {predict_s:.0f} s; "
          f"VS Dice {result['vs_dice']:.3f}, cochlea Dice {result['cochlea_dice']:.3f} "
          f"(per case VS {[round(s['vs'], 2) for s in scores.values()]}, "
          f"cochlea {[round(s['cochlea'], 2) for s in scores.values()]})", flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
