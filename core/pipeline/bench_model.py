"""The benchmark's data model: its rows (methods), segmenter trainings (replicates),
options and resolved plan, shared by the runner (:mod:`vstk.pipeline.bench`) and the report
(:mod:`vstk.pipeline.bench_report`)."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import ConfigError
from .plan import JobOptions, Plan

NONE = "none"
SUPERVISED = "supervised"
STRUCTURE_METRICS = ("VS_dice", "VS_assd", "cochlea_dice", "cochlea_assd", "mean_dice", "mean_assd")
TEST_METRICS = ("VS_dice", "cochlea_dice", "mean_dice")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclasses.dataclass(frozen=True)
class Method:
    """One row of the benchmark: what its segmenter trains on.

    Attributes:
        name: row name (``none``, a translator, ``a+b`` for a combination, ``supervised``).
        views: the pool views it trains on (empty for ``none`` and ``supervised``).
    """

    name: str
    views: tuple[str, ...] = ()

    @property
    def training_data(self) -> str:
        if self.name == NONE:
            return "ceT1 as is"
        if self.name == SUPERVISED:
            return "labelled hrT2"
        return " + ".join(self.views) + (" views" if len(self.views) > 1 else " view")


@dataclasses.dataclass(frozen=True)
class Replicate:
    """One segmenter training of a row: the method, and the segmenter seed given by ``--seeds``
    (None without ``--seeds``: the segmenter config's own seed, in the row's own folder)."""

    method: Method
    seed: int | None = None

    @property
    def key(self) -> str:
        """The name of its stages and worker: the method's, with ``-s{seed}`` under ``--seeds``."""
        return self.method.name if self.seed is None else f"{self.method.name}-s{self.seed}"


@dataclasses.dataclass(frozen=True)
class BenchOptions(JobOptions):
    """Everything ``vstk bench`` needs; see ``vstk bench --help`` for the meaning of each."""

    combos: tuple[tuple[str, ...], ...] = ()
    target_labels: Path | None = None
    paired: Path | None = None
    rounds: int = 0  # the benchmark compares round-0 segmenters unless asked
    jobs: int = 1
    seeds: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise ConfigError(f"--jobs {self.jobs} must be 1 or more")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"--seeds {','.join(str(s) for s in self.seeds)}: a seed is named twice")
        if any(seed < 0 for seed in self.seeds):
            raise ConfigError(f"--seeds {','.join(str(s) for s in self.seeds)}: seeds are 0 or more")
        super().__post_init__()
        for name in self.translators:
            if name in (NONE, SUPERVISED):
                raise ConfigError(f"--translators: {name!r} is the name of a reference row of the benchmark",
                                  fix=f"drop it: the {NONE} and {SUPERVISED} rows are always part of the table")
            if not NAME_PATTERN.match(name):
                raise ConfigError(f"--translators: {name!r} is not a translator name",
                                  fix="separate translators with ',' and combinations with '+' (--combos)")
        seen = set()
        for combo in self.combos:
            label = "+".join(combo)
            if len(combo) < 2 or len(set(combo)) != len(combo):
                raise ConfigError(f"--combos {label}: a combination joins two or more different translators",
                                  fix="e.g. --combos cyclegan+qsattn")
            outside = [name for name in combo if name not in self.translators]
            if outside:
                raise ConfigError(f"--combos {label}: {outside[0]!r} is not in --translators "
                                  f"{','.join(self.translators)}",
                                  fix=f"add {outside[0]} to --translators or drop it from the combination")
            if frozenset(combo) in seen:
                raise ConfigError(f"--combos {label}: the same combination is named twice")
            seen.add(frozenset(combo))
        if self.data is not None and (self.test is None or self.test_labels is None):
            raise ConfigError("vstk bench scores every method on labelled test hrT2: --data needs --test and "
                              "--test-labels", fix="pass both, or leave out --data to use the built-in phantom")
        if self.data is None and any(p is not None for p in (self.test, self.target_labels, self.paired)):
            raise ConfigError("--test, --test-labels, --target-labels and --paired go with --data",
                              fix="pass --data too, or none of them to use the built-in phantom")

    def methods(self) -> tuple[Method, ...]:
        """Every row in table order: the floor, translators, combinations, the ceiling."""
        rows = [Method(NONE)] + [Method(name, (name,)) for name in self.translators]
        rows += [Method("+".join(combo), tuple(combo)) for combo in self.combos]
        return tuple(rows + [Method(SUPERVISED)])

    def replicates(self, methods: Sequence[Method]) -> tuple[Replicate, ...]:
        """Every segmenter training, row by row: one per method, or one per method and seed."""
        seeds: Sequence[int | None] = self.seeds or (None,)
        return tuple(Replicate(method, seed) for method in methods for seed in seeds)


@dataclasses.dataclass
class BenchPlan:
    """The resolved benchmark, checked before any training."""

    options: BenchOptions
    run: Plan
    methods: tuple[Method, ...]
    replicates: tuple[Replicate, ...]
    segmenters: dict[str, Any]  # by replicate key
    test_labels: Path
    labelled_targets: tuple[Any, ...]
    paired: tuple[Any, ...]
    notes: list[str]

    @property
    def out(self) -> Path:
        return self.options.out

    def method_dir(self, replicate: Replicate) -> Path:
        folder = self.out / "methods" / replicate.method.name
        return folder if replicate.seed is None else folder / f"seed{replicate.seed}"

    def replicates_of(self, method: Method) -> list[Replicate]:
        return [r for r in self.replicates if r.method == method]

    def rounds_of(self, method: Method) -> int:
        """Self-training rounds of a method (the supervised ceiling has no unlabelled hrT2 left)."""
        return 0 if method.name == SUPERVISED else self.options.rounds


def parse_combos(values: str | Iterable[str]) -> tuple[tuple[str, ...], ...]:
    """``"a+b,a+c"`` (or several such strings) -> ``(("a", "b"), ("a", "c"))``."""
    items = [values] if isinstance(values, str) else list(values)
    combos = []
    for item in items:
        for part in item.split(","):
            if part.strip():
                combos.append(tuple(name.strip() for name in part.split("+") if name.strip()))
    return tuple(combos)


def finite(value: Any) -> Any:
    """NaN and infinities as None (JSON has neither), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value
