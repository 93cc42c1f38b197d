"""Train the nnU-Net segmenter in its own process, so a test can SIGKILL it mid-training.

    python nnunet_train_driver.py WORKDIR [key=value ...]

Trains round 0 of WORKDIR on ``training_cases(range(4))`` with the ``cpu`` profile and the
given overrides. The entry code sits under a ``__main__`` guard, as nnU-Net's spawned worker
processes require.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nnunet_cases import training_cases  # noqa: E402
from vstk_nnunet import NnUNetSegmenter  # noqa: E402

DRIVER_SEEDS = range(4)


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    workdir = Path(argv[0])
    overrides = dict(item.split("=", 1) for item in argv[1:])
    segmenter = NnUNetSegmenter(NnUNetSegmenter.profile("cpu", **overrides), workdir)
    segmenter.train(training_cases(DRIVER_SEEDS))


if __name__ == "__main__":
    main(sys.argv[1:])
