"""The segmenter's supervised ceiling and its speed: nnU-Net trained on LABELLED phantom hrT2.

    python benchmarks/segmenter_ceiling.py --phantom DIR --out WORK [--profile cpu|paper]
        [--set key=value ...] [--device cpu|cuda] [--json FILE]

No translation is involved: the segmenter trains on the ear crops of the phantom's training
hrT2 with their true labels (``vstk phantom DIR --target-labels`` writes them), then
segments the test hrT2 and is scored on them, exactly as ``vstk run`` scores its runs. This
is the best any translated pool can hope for with the same segmenter budget, so it tells
whether a missed Dice target is the translators' fault or the segmenter's. It also times the
training (seconds per iteration from the per-epoch progress), which is how the `paper`
profile's cost is measured on a GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from vstk.crossmoda import discover, read_image, read_label
from vstk.evaluation.metrics import dice
from vstk.pipeline.stages import ear_crops, predict_full
from vstk.plugins import load_plugins
from vstk.protocols import TrainingCase
from vstk.roi import EarRule


def labelled_crops(phantom: Path, rule: EarRule) -> list[TrainingCase]:
    labels = phantom / "train_hrT2_labels"
    if not labels.is_dir():
        sys.exit(f"{labels} is missing: write the phantom with `vstk phantom {phantom} --target-labels`")
    cases = []
    for path in sorted((phantom / "train").glob("*_hrT2.nii.gz")):
        case_id = path.name[: -len("_hrT2.nii.gz")]
        image, label = read_image(path), read_label(labels / f"{case_id}_Label.nii.gz")
        cases += [TrainingCase(cid, crop_image, crop_label)
                  for cid, _, crop_image, crop_label in ear_crops(image, label, rule, case_id)]
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phantom", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="segmenter work folder (must be new or empty)")
    parser.add_argument("--profile", default="cpu", choices=["cpu", "paper"])
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    overrides = dict(item.split("=", 1) for item in args.settings)
    if args.device:
        overrides["device"] = args.device
    rule = EarRule()
    cases = labelled_crops(args.phantom, rule)
    segmenter_class = load_plugins().get("segmenter", "nnunet")
    config = segmenter_class.profile(args.profile, **overrides)
    segmenter = segmenter_class(config, args.out)

    stamps: list[float] = []
    start = time.perf_counter()
    segmenter.train(cases, progress=lambda done, total, message: stamps.append(time.perf_counter()))
    train_s = time.perf_counter() - start
    epochs = np.diff([start, *stamps])
    per_iteration = statistics.median(epochs[1:] if len(epochs) > 1 else epochs) / config.iterations_per_epoch

    test = discover(args.phantom / "test", labels=args.phantom / "test_labels", require_target=True)
    images = {c.case_id: read_image(c.hrT2) for c in test.target}
    truth = {c.case_id: read_label(c.label).array for c in test.target}
    start = time.perf_counter()
    predictions = predict_full(segmenter, images, rule, round_index=0)
    predict_s = time.perf_counter() - start
    scores = {p.case_id: {"vs": dice(p.label.array == 1, truth[p.case_id] == 1),
                          "cochlea": dice(p.label.array == 2, truth[p.case_id] == 2)} for p in predictions}
    result = {
        "profile": args.profile, "overrides": overrides, "configuration": config.configuration,
        "training_crops": len(cases), "iterations": config.num_epochs * config.iterations_per_epoch,
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
