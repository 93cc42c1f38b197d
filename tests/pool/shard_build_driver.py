"""One worker of the sharded build test: builds shard I/N of the standard test pool.

    python shard_build_driver.py SHARD.h5 I/N [--shape Z,Y,X]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import pool_helpers  # noqa: E402
from vstk.pool.shard import ShardSpec  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("pool", type=Path)
    parser.add_argument("shard")
    parser.add_argument("--shape", default="8,40,48")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    pool_helpers.build_pool(args.pool, shape=shape, pseudo=False, shard=ShardSpec.parse(args.shard), threads=1)
    print(f"built {args.pool}", flush=True)


if __name__ == "__main__":
    main()
