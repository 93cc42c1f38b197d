"""Fold ``all`` against five folds of the same nnU-Net at the same total iterations.

    python benchmarks/cross_validation.py --seeds 31 32 33 --out WORK [--profile cpu]
        [--scale 1.0] [--set key=value ...] [--device cpu|cuda] [--epochs-per-fold N]

For each phantom seed S, ``WORK/phantom_seed{S}`` is written (``vstk phantom --target-labels
--seed S`` with the default slab geometry, unless it is already there) and the segmenter is
trained SUPERVISED on the ear crops of its labelled training hrT2, as in
``segmenter_ceiling.py`` (no translators: the comparison isolates the segmenter), twice:

    A  folds=all, the profile's num_epochs x iterations_per_epoch;
    B  folds=0,1,2,3,4, num_epochs / 5 epochs per fold (same iterations_per_epoch): the same
       iterations in total, then nnU-Net's validation of each fold and its
       find_best_configuration, which decides the postprocessing on the cross-validation.
       ``--epochs-per-fold N`` trains each fold longer instead (N x 5 epochs in all).

Both segment the test hrT2 and are scored per case against ``test_labels`` (VS and cochlea
Dice on the whole image). Each is scored with and without postprocessing: B without is the
argmax of the five folds' mean softmax, B with is what ``predict`` returns (the chosen
postprocessing); A without is what ``predict`` returns, and since A has no cross-validation
to choose with, "A + B's postprocessing" applies B's chosen steps to A's labels. The
postprocessing acts on each ear crop, as ``predict`` applies it (both cochleae lie in one
image, so on the whole image "largest cochlea component" would drop one).

The segmenter seed follows the phantom seed (``seed=S``). Training seconds include B's
validations and model choice; prediction seconds are one ``predict_full`` of the test set.
Writes ``WORK/seed{S}.json`` per seed (a seed whose JSON exists is not run again) and prints
a Markdown table of all seeds.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from vstk.crossmoda import discover, read_image, read_label
from vstk.evaluation.metrics import dice
from vstk.phantom import PhantomConfig, generate_phantom
from vstk.pipeline.stages import predict_full
from vstk.plugins import load_plugins
from vstk.protocols import Prediction
from vstk.roi import EarRule

from segmenter_ceiling import labelled_crops

FOLDS = 5
VARIANTS = {"A": "folds=all", "B": "folds=0,1,2,3,4"}
Relabel = Callable[[Prediction], np.ndarray]


class Recording:
    """A segmenter whose per-crop predictions are kept, so they can be relabelled later."""

    def __init__(self, segmenter: Any) -> None:
        self.segmenter = segmenter
        self.crops: list[Prediction] = []

    def predict(self, images: Mapping[str, Any], *, round_index: int, progress: Any = None) -> list[Prediction]:
        self.crops = self.segmenter.predict(images, round_index=round_index, progress=progress)
        return self.crops


class Replay:
    """Recorded per-crop predictions with their labels replaced by ``relabel(prediction)``."""

    def __init__(self, crops: list[Prediction], relabel: Relabel) -> None:
        self.crops = {p.case_id: p for p in crops}
        self.relabel = relabel

    def predict(self, images: Mapping[str, Any], *, round_index: int, progress: Any = None) -> list[Prediction]:
        return [Prediction(key, self.crops[key].label.with_array(self.relabel(self.crops[key])),
                           self.crops[key].probabilities) for key in images]


def argmax(prediction: Prediction) -> np.ndarray:
    """The label without postprocessing: the argmax of the (mean) softmax."""
    return prediction.probabilities.argmax(axis=0).astype(np.uint8)


def postprocessed(steps: list[tuple[int, ...]]) -> Relabel:
    from vstk_nnunet.selection import postprocess

    return lambda prediction: postprocess(argmax(prediction), steps)


def differing_voxels(crops: list[Prediction], relabel: Relabel) -> int:
    """Voxels where ``predict``'s label differs from ``relabel`` of the same crop (a check: 0)."""
    return int(sum((p.label.array != relabel(p)).sum() for p in crops))


def scores(predictions: list[Prediction], truth: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """VS, cochlea and their mean Dice per test case, and each averaged over the cases."""
    per_case = {}
    for p in predictions:
        vs = dice(p.label.array == 1, truth[p.case_id] == 1)
        cochlea = dice(p.label.array == 2, truth[p.case_id] == 2)
        per_case[p.case_id] = {"vs": vs, "cochlea": cochlea, "mean": (vs + cochlea) / 2}
    means = {key: float(np.mean([s[key] for s in per_case.values()])) for key in ("vs", "cochlea", "mean")}
    return {**means, "per_case": per_case}


def train_and_predict(segmenter: Any, cases: list, images: Mapping[str, Any], rule: EarRule) -> dict[str, Any]:
    """Train, then predict the test images through a :class:`Recording`; the seconds of each."""
    stamps: list[float] = []
    start = time.perf_counter()
    segmenter.train(cases, progress=lambda done, total, message: stamps.append(time.perf_counter()))
    train_s = time.perf_counter() - start
    epochs = np.diff([start, *stamps])
    recording = Recording(segmenter)
    start = time.perf_counter()
    predict_full(recording, images, rule, round_index=0)
    predict_s = time.perf_counter() - start
    return {"train_s": train_s, "predict_s": predict_s, "epochs": len(stamps),
            "median_epoch_s": statistics.median(epochs[1:] if len(epochs) > 1 else epochs) if len(epochs) else None,
            "crops": recording.crops}


def run_seed(seed: int, args: argparse.Namespace, overrides: dict[str, str]) -> dict[str, Any]:
    phantom = args.out / f"phantom_seed{seed}"
    if not (phantom / "phantom.json").is_file():
        generate_phantom(phantom, PhantomConfig(seed=seed, target_labels=True, resolution_scale=args.scale,
                                                geometry="slab"))
    rule = EarRule()
    cases = labelled_crops(phantom, rule)
    test = discover(phantom / "test", labels=phantom / "test_labels", require_target=True)
    images = {c.case_id: read_image(c.hrT2) for c in test.target}
    truth = {c.case_id: read_label(c.label).array for c in test.target}

    segmenter_class = load_plugins().get("segmenter", "nnunet")
    common = {**overrides, "seed": str(seed)}
    base = segmenter_class.profile(args.profile, **common)
    epochs_per_fold = args.epochs_per_fold or base.num_epochs // FOLDS
    if not args.epochs_per_fold and base.num_epochs % FOLDS:
        raise SystemExit(f"num_epochs={base.num_epochs} does not split into {FOLDS} folds of equal length: "
                         f"use a multiple of {FOLDS}")
    configs = {"A": segmenter_class.profile(args.profile, **{**common, "folds": "all"}),
               "B": segmenter_class.profile(args.profile, **{**common, "folds": "0,1,2,3,4",
                                                             "num_epochs": str(epochs_per_fold)})}
    runs = {}
    for variant in ("B", "A"):  # B first: A's second row needs B's chosen postprocessing
        segmenter = segmenter_class(configs[variant], args.out / f"seed{seed}_{variant}")
        print(f"seed {seed}: training {variant} ({VARIANTS[variant]}, {configs[variant].num_epochs} epochs x "
              f"{configs[variant].iterations_per_epoch} iterations per fold) on {len(cases)} crops", flush=True)
        runs[variant] = {**train_and_predict(segmenter, cases, images, rule), "segmenter": segmenter}

    from vstk_nnunet.layout import round_layout
    from vstk_nnunet.selection import chosen_model, read_selection

    record = read_selection(round_layout(runs["B"]["segmenter"].workdir, configs["B"], 0))
    steps = list(chosen_model(record).postprocessing)
    relabel = {"A": {"no postprocessing": lambda p: p.label.array, "B's postprocessing": postprocessed(steps)},
               "B": {"no postprocessing": argmax, "chosen postprocessing": lambda p: p.label.array}}
    rows = []
    for variant in ("A", "B"):
        run = runs[variant]
        for name, function in relabel[variant].items():
            predictions = predict_full(Replay(run["crops"], function), images, rule, round_index=0)
            rows.append({"variant": variant, "folds": VARIANTS[variant], "postprocessing": name,
                         "train_s": round(run["train_s"], 1), "predict_s": round(run["predict_s"], 1),
                         **scores(predictions, truth)})
    config_b = configs["B"]
    return {
        "seed": seed, "profile": args.profile, "overrides": overrides, "scale": args.scale,
        "training_crops": len(cases), "test_cases": len(images),
        "iterations": {v: c.num_epochs * c.iterations_per_epoch * len(c.folds) for v, c in configs.items()},
        "epochs_per_fold": {v: c.num_epochs for v, c in configs.items()},
        "median_epoch_s": {v: runs[v]["median_epoch_s"] for v in runs},
        "chosen": {"model": record["chosen"]["model"], "postprocessing": record["postprocessing"],
                   "cross_validation_dice": record["chosen"]["dice"],
                   "cross_validation_dice_after_postprocessing": record["chosen"]["dice_after_postprocessing"],
                   "cross_validation_dice_per_label_after_postprocessing":
                       record["chosen"]["dice_per_label_after_postprocessing"]},
        # checks: predict's labels are the argmax (A) and the argmax after the chosen steps (B)
        "differing_voxels": {"A": differing_voxels(runs["A"]["crops"], argmax),
                             "B": differing_voxels(runs["B"]["crops"], postprocessed(steps))},
        "folds_of_B": list(config_b.folds),
        "rows": rows,
    }


def describe_postprocessing(result: dict[str, Any]) -> str:
    return "; ".join(step["description"] for step in result["chosen"]["postprocessing"]) or "none"


def variant_label(result: dict[str, Any], row: dict[str, Any]) -> str:
    epochs = result["epochs_per_fold"][row["variant"]]
    return f"{row['variant']}: {row['folds']}, {epochs} epochs" + ("" if row["variant"] == "A" else " per fold")


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| seed | variant | postprocessing | VS Dice | cochlea Dice | mean Dice | train s | predict s |",
             "|---|---|---|---|---|---|---|---|"]
    for result in results:
        for row in result["rows"]:
            lines.append(f"| {result['seed']} | {variant_label(result, row)} | {row['postprocessing']} | "
                         f"{row['vs']:.3f} | {row['cochlea']:.3f} | {row['mean']:.3f} | {row['train_s']:.0f} | "
                         f"{row['predict_s']:.0f} |")
    if len(results) > 1:
        for index, row in enumerate(results[0]["rows"]):
            same = [r["rows"][index] for r in results]
            cells = [f"{statistics.mean(r[k] for r in same):.3f} ± {statistics.stdev(r[k] for r in same):.3f}"
                     for k in ("vs", "cochlea", "mean")]
            times = [f"{statistics.mean(r[k] for r in same):.0f}" for k in ("train_s", "predict_s")]
            lines.append(f"| mean ± sd over {len(results)} seeds | {variant_label(results[0], row)} | "
                         f"{row['postprocessing']} | {' | '.join(cells)} | {' | '.join(times)} |")
    lines += ["", "| seed | B's chosen postprocessing | B's cross-validation Dice (before -> after) |",
              "|---|---|---|"]
    for result in results:
        chosen = result["chosen"]
        lines.append(f"| {result['seed']} | {describe_postprocessing(result)} | "
                     f"{chosen['cross_validation_dice']:.3f} -> "
                     f"{chosen['cross_validation_dice_after_postprocessing']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="phantom (and segmenter) seeds")
    parser.add_argument("--out", type=Path, required=True, help="work folder: phantoms, segmenters, JSON per seed")
    parser.add_argument("--profile", default="cpu", choices=["cpu", "paper"])
    parser.add_argument("--scale", type=float, default=1.0, help="phantom resolution scale (1.0: the default)")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default=None)
    parser.add_argument("--epochs-per-fold", type=int, default=None,
                        help="B's epochs per fold (default num_epochs / 5: A's iterations in total)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    overrides = dict(item.split("=", 1) for item in args.settings)
    for key in ("seed", "folds"):
        if key in overrides:
            raise SystemExit(f"--set {key}=... is set by this benchmark (the phantom seed; A and B's folds)")
    if args.device:
        overrides["device"] = args.device
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds:
        path = args.out / f"seed{seed}.json"
        if not path.is_file():
            path.write_text(json.dumps(run_seed(seed, args, overrides), indent=2))
        results.append(json.loads(path.read_text()))
        print(table(results[-1:]), flush=True)
    print(table(results))


if __name__ == "__main__":
    main()
