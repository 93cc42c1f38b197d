"""Small deterministic pool inputs shared by the pool tests and the SIGKILL build driver."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vstk.pool import PoolBuilder
from vstk.pool.schema import ATTR_SHARD
from vstk.pool.shard import ShardPlan, ShardSpec
from vstk.volume import Volume

SPACING = (0.41, 0.41, 1.5)
VIEWS = ("cyclegan", "qsattn")
CASES = ("crossmoda2022_ldn_1", "crossmoda2022_etz_2", "crossmoda2022_ldn_3")
TARGETS = ("crossmoda2022_ldn_40", "crossmoda2022_etz_41")


def seed_of(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


def mr_image(shape=(8, 40, 48), seed: int = 0, spacing=SPACING, origin=(-10.0, 5.0, 3.0)) -> Volume:
    """A smooth MR-like float32 volume [z, y, x]: a few bright blobs, a bias field and Rician noise."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    clean = 200.0 * ((x / 0.9) ** 2 + (y / 0.9) ** 2 < 1)
    for _ in range(4):
        c, r = rng.uniform(-0.5, 0.5, 3), rng.uniform(0.1, 0.3)
        blob = np.exp(-((x - c[2]) ** 2 + (y - c[1]) ** 2 + (z - c[0]) ** 2) / (2 * r * r))
        clean = clean + rng.uniform(100, 400) * blob
    clean = clean * np.exp(0.15 * x * y)
    noisy = np.hypot(clean + rng.normal(0, 8, shape), rng.normal(0, 8, shape))
    return Volume(noisy.astype(np.float32), spacing, origin)


def label_for(image: Volume, seed: int = 0) -> Volume:
    """A label on ``image``'s grid: a VS blob (1) and two small cochleae (2)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(image.shape)
    nz, ny, nx = image.shape
    cy, cx = rng.uniform(0.35, 0.65) * ny, rng.uniform(0.35, 0.65) * nx
    label = np.zeros(image.shape, dtype=np.uint8)
    label[((x - cx) ** 2 + (y - cy) ** 2 < 16) & (np.abs(z - nz // 2) <= 2)] = 1
    label[(np.abs(x - 4) <= 1) & (np.abs(y - 4) <= 1) & (np.abs(z - nz // 2) <= 1)] = 2
    label[(np.abs(x - nx + 5) <= 1) & (np.abs(y - 4) <= 1) & (np.abs(z - nz // 2) <= 1)] = 2
    return image.with_array(label)


def provenance(view: str, **extra: Any) -> dict[str, Any]:
    """A complete provenance dict for a view (checkpoint hash of the view name)."""
    return {"translator": view, "plugin_distribution": f"vstk-{view}", "plugin_version": "0.1.0",
            "checkpoint_sha256": hashlib.sha256(f"ckpt-{view}".encode()).hexdigest(),
            "translator_config": {"ngf": 16, "n_blocks": 3, "lr": 2e-4}, "seed": 7, **extra}


def case_image(case: str, shape=(8, 40, 48)) -> Volume:
    return mr_image(shape, seed_of("ceT1", case))


def view_image(view: str, case: str, shape=(8, 40, 48)) -> Volume:
    """What translator ``view`` 'made' of ``case``: on the case's grid, view-specific values."""
    base = case_image(case, shape)
    rng = np.random.default_rng(seed_of(view, case))
    return base.with_array((base.array * rng.uniform(0.5, 1.5) + rng.normal(0, 5, shape)).astype(np.float32))


def target_image(case: str, shape=(6, 36, 40)) -> Volume:
    return mr_image(shape, seed_of("hrT2", case), spacing=(0.5, 0.5, 1.0), origin=(1.0, 2.0, 3.0))


def build_pool(path: str | Path, *, views=VIEWS, cases=CASES, targets=TARGETS, shape=(8, 40, 48),
               step: Callable[[str], None] | None = None, pseudo: bool = True, shard: ShardSpec | None = None,
               **builder_kwargs: Any) -> Path:
    """Build the standard test pool the way ``vstk pool build`` does (skipping staged entries).

    ``step(name)`` is called after every entry and at every finalize step (fault injection).
    ``pseudo`` adds round-1 pseudo labels of the targets; ``shard`` builds only that shard's
    share of the views and targets (as ``vstk pool build --shard I/N``).
    """
    step = step or (lambda name: None)
    progress = lambda done, total, message: step(f"finalize:{done}/{total}")  # noqa: E731
    units = None
    if shard is not None:
        plan = ShardPlan.of(views, cases, targets)
        share = plan.share(shard)
        units, cases, targets = set(share.views), share.labels, share.targets
        builder_kwargs["root_attrs"] = {ATTR_SHARD: plan.attribute(shard)}
    with PoolBuilder(path, progress=progress, **builder_kwargs) as builder:
        for case in cases:
            if not builder.has_label(case):
                builder.add_label(case, label_for(case_image(case, shape), seed_of("label", case)))
                step(f"label:{case}")
            for view in views:
                if units is not None and (view, case) not in units:
                    continue
                if not builder.has(view, case):
                    builder.add_view(view, case, view_image(view, case, shape), provenance(view))
                    step(f"view:{view}:{case}")
        for case in targets:
            if not builder.has_target(case):
                builder.add_target(case, target_image(case))
                step(f"target:{case}")
            if pseudo and not builder.has_pseudo_label(1, case):
                image = target_image(case)
                confidence = 0.5 + (0.1 * len(case)) % 0.5
                builder.add_pseudo_label(1, case, label_for(image, seed_of("pseudo", case)), confidence)
                step(f"pseudo:{case}")
        return builder.finalize()
