"""The structure contrast table of a finished run (its report's section), for runs written
before the report had it, or with another ring or other labelled hrT2.

    python benchmarks/structure_contrast.py --run OUT [--test DIR --test-labels DIR] [--ring-mm 2]

Reads ``OUT/pool.h5``, the ceT1 the views were translated from (``OUT/ears/train`` when the
run found the ears, else ``--data``) and labelled real hrT2 (``OUT/phantom/test`` and
``test_labels`` when the run made a phantom); see :mod:`vstk.evaluation.contrast`. Prints the
Markdown table and writes ``OUT/structure_contrast.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="a finished vstk run's OUT folder")
    parser.add_argument("--data", type=Path, default=None, help="the run's training folder [OUT/ears/train]")
    parser.add_argument("--test", type=Path, default=None, help="test hrT2 folder [OUT/phantom/test]")
    parser.add_argument("--test-labels", type=Path, default=None, help="their labels [OUT/phantom/test_labels]")
    parser.add_argument("--ring-mm", type=float, default=2.0)
    args = parser.parse_args()

    from vstk.crossmoda import discover
    from vstk.evaluation.contrast import contrast_summary, contrast_table, pool_contrasts

    data = args.data or args.run / "ears" / "train"
    sources = {c.case_id: c.ceT1 for c in discover(data, require_source=True).source}
    test = args.test or args.run / "phantom" / "test"
    labels = args.test_labels or args.run / "phantom" / "test_labels"
    real = [(c.hrT2, labels / f"{c.case_id}_Label.nii.gz") for c in discover(test).target] if test.is_dir() else []
    summary = contrast_summary(pool_contrasts(args.run / "pool.h5", sources, real, args.ring_mm))
    (args.run / "structure_contrast.json").write_text(json.dumps({"ring_mm": args.ring_mm, "summary": summary},
                                                                 indent=2))
    print(contrast_table(summary))


if __name__ == "__main__":
    main()
