"""The translator conformance checks and :func:`check_translator`, which runs them.

Every check is a function of a shared :class:`_Run` (the translator class, its tiny config,
the phantom data and what earlier checks produced) that raises :class:`_Failed` with a
message naming what was seen and the fix. The data is a tiny phantom (2 ceT1 + 2 hrT2
training cases at a quarter of the CrossMoDA resolution, written in well under a second),
so the whole kit runs in seconds for a network of a few channels.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..config import result_settings
from ..errors import CheckpointError, VstkError
from ..volume import Volume, read_nifti

log = logging.getLogger(__name__)

#: Settings the kit applies to every config field of these names (others are left alone):
#: 32 x 32 slices covering the whole head of the quarter-resolution phantom, 2 + 2 steps,
#: networks a few channels wide. ``overrides`` of :func:`check_translator` come on top.
TINY_SETTINGS: dict[str, Any] = {
    "size": 32, "crop": None, "spacing": (3.5, 3.5), "centre": "head",
    "steps": 2, "decay_steps": 2, "epochs": None, "decay_epochs": None, "batch_size": 1,
    "ngf": 4, "ndf": 4, "n_blocks": 1, "checkpoint_every": 2, "sample_every": 0,
    "num_patches": 16, "netf_nc": 8, "translate_batch": 4, "seed": 0,
}

#: Relative tolerance for "identical" outputs (of the output's peak magnitude): CPU float32
#: runs of the same weights on the same input agree to the last bit; this only absorbs
#: a different summation order in a library kernel.
IDENTICAL_RTOL = 1e-6

#: The final checkpoint's name in a translator's work folder: the pipeline looks for it to
#: skip a finished training (vstk.translation.trainer.FINAL, not imported: it imports torch).
FINAL_CHECKPOINT = "translator.pt"

#: What the kit checks on the class itself (the rest of vstk.Translator is per instance).
CLASS_MEMBERS = ("name", "config_class", "profile", "train", "load", "translate_volume")


class ConformanceError(AssertionError):
    """A translator failed one or more conformance checks (one line per failed check)."""


class _Failed(Exception):
    """Raised by a check; the message is the user-facing reason with a fix."""


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """Outcome of one check: ``status`` is "passed", "failed" or "skipped"."""

    name: str
    status: str
    message: str = ""
    seconds: float = 0.0


@dataclasses.dataclass(frozen=True)
class ConformanceReport:
    """All check results of one translator."""

    translator: str
    results: tuple[CheckResult, ...]

    @property
    def passed(self) -> bool:
        return all(r.status != "failed" for r in self.results)

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.results if r.status == "failed")

    def __str__(self) -> str:
        lines = [f"conformance of translator {self.translator!r}:"]
        for r in self.results:
            detail = f": {r.message}" if r.message else ""
            lines.append(f"  {r.name:<18} {r.status:<7} {r.seconds:6.2f} s{detail}")
        return "\n".join(lines)


@dataclasses.dataclass
class _Run:
    """What the checks share: the class under test, its config, data and results so far."""

    label: str
    cls: type
    name: str | None
    profile: str
    overrides: dict[str, Any]
    workdir: Path
    device: str
    config: Any = None
    source: list[Volume] = dataclasses.field(default_factory=list)
    target: list[Volume] = dataclasses.field(default_factory=list)
    probe: Volume | None = None
    checkpoint: Path | None = None
    trained_output: np.ndarray | None = None

    def new(self, config: Any = None) -> Any:
        """A fresh translator instance (the tiny config unless ``config`` is given)."""
        return self.cls(self.config if config is None else config, device=self.device)


# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------
def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _call(what: str, fix: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn``; any exception becomes a failure naming ``what`` went wrong and ``fix``."""
    try:
        return fn()
    except _Failed:
        raise
    except Exception as exc:  # the kit reports every error of the plugin as a check failure
        raise _Failed(f"{what} raised {_describe(exc)} (fix: {fix})") from exc


def _max_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    scale = max(1.0, float(np.max(np.abs(a))) if a.size else 1.0)
    return a.shape == b.shape and _max_difference(a, b) <= IDENTICAL_RTOL * scale


def _translate(translator: Any, volume: Volume, what: str) -> np.ndarray:
    fix = "translate_volume(volume) must return a vstk.Volume on the input's grid"
    out = _call(f"{what}: translate_volume()", fix, lambda: translator.translate_volume(volume))
    if not isinstance(out, Volume):
        raise _Failed(f"{what}: translate_volume() returned {type(out).__name__}, not a vstk.Volume (fix: {fix})")
    return np.asarray(out.array)


def make_phantom_data(folder: Path) -> tuple[list[Volume], list[Volume], Volume]:
    """Write the kit's tiny phantom into ``folder``; return (ceT1 train, hrT2 train, paired ceT1)."""
    from ..phantom import PhantomConfig, generate_phantom

    generate_phantom(folder, PhantomConfig(cases=2, test_cases=2, paired_cases=2, resolution_scale=0.25, seed=0,
                                           geometry="slab"))
    source = [read_nifti(p) for p in sorted((folder / "train").glob("*_ceT1.nii.gz"))]
    target = [read_nifti(p) for p in sorted((folder / "train").glob("*_hrT2.nii.gz"))]
    probe = read_nifti(sorted((folder / "paired").glob("*_ceT1.nii.gz"))[0])
    return source, target, probe


def _regridded(volume: Volume) -> Volume:
    """The probe on an awkward grid: odd in-plane sizes, anisotropic spacing, rotated axes, moved origin."""
    array = np.ascontiguousarray(volume.array[:, 1:-2, 3:])
    spacing = (volume.spacing[0] * 1.1, volume.spacing[1] * 0.9, volume.spacing[2] * 1.3)
    origin = tuple(o + d for o, d in zip(volume.origin, (4.0, -7.5, 2.25)))
    return Volume(array, spacing, origin, (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))


# ----------------------------------------------------------------------------------------
# The checks
# ----------------------------------------------------------------------------------------
def _check_registered(run: _Run) -> str:
    if run.name is None:
        return _SKIPPED + "a class was given, not a registered name"
    from ..plugins import load_plugins

    host = load_plugins()
    registry = host.registry("translator")
    if run.name not in registry:
        failures = "; ".join(f"{plugin}: {reason}" for plugin, reason in host.failures()) or "none"
        raise _Failed(f"no translator named {run.name!r} is registered (known: {', '.join(registry.names())}; "
                      f"plugin failures: {failures}) (fix: pip install your plugin's distribution and list its "
                      f"module in the `vstk` entry-point group of its setup.cfg)")
    owner = registry.owner(run.name)
    return f"registered by plugin {owner!r}"


def _check_profiles(run: _Run) -> str:
    from ..protocols import Translator

    cls = run.cls
    for attribute in CLASS_MEMBERS:
        if not hasattr(cls, attribute):
            raise _Failed(f"class {cls.__qualname__} has no {attribute!r} (fix: implement the vstk.Translator "
                          f"protocol; subclassing vstk.translation.base.SliceTranslator gives all of it)")
    if run.name is not None and cls.name != run.name:
        raise _Failed(f"class attribute name={cls.name!r} differs from the registered name {run.name!r}")
    for profile in ("cpu", "paper"):
        config = _call(f"{cls.__qualname__}.profile({profile!r})", "define the 'cpu' and 'paper' profiles",
                       lambda: cls.profile(profile))
        if not isinstance(config, cls.config_class):
            raise _Failed(f"profile {profile!r} is a {type(config).__name__}, not a {cls.config_class.__name__} "
                          f"(fix: profiles must be instances of config_class)")
        if not dataclasses.is_dataclass(config):
            raise _Failed(f"config_class {cls.config_class.__name__} is not a dataclass (fix: use a frozen "
                          f"dataclass so `--set key=value` overrides work)")
        if not hasattr(config, "seed"):
            raise _Failed(f"config_class {cls.config_class.__name__} has no 'seed' field (fix: add one; the pool "
                          f"records it as provenance)")
        if not isinstance(config.seed, int) or isinstance(config.seed, bool):
            raise _Failed(f"profile {profile!r} has seed={config.seed!r}, not an int (fix: declare `seed: int = 0`; "
                          f"the pool records int(config.seed))")
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    settings = {k: v for k, v in TINY_SETTINGS.items() if k in fields} | dict(run.overrides)
    run.config = _call(f"profile({run.profile!r}) with the kit's tiny settings {settings}",
                       "pass valid `overrides` (only fields of the config class)",
                       lambda: cls.profile(run.profile, **settings))
    instance = _call(f"{cls.__qualname__}(config, device={run.device!r})", "accept (config, device)",
                     lambda: run.new())
    for attribute in ("config", "checkpoint"):
        if not hasattr(instance, attribute):
            raise _Failed(f"{cls.__qualname__} instances have no {attribute!r} attribute (fix: set self.{attribute} "
                          f"in __init__; the pipeline reads it)")
    if instance.config != run.config:
        raise _Failed(f"instance.config is not the config it was built with (fix: keep the config passed to "
                      f"__init__ as self.config; the pool records it as provenance)")
    if instance.checkpoint is not None:
        raise _Failed(f"a new instance has checkpoint={instance.checkpoint!r} (fix: None until train() or load() "
                      f"gives it weights; the pipeline reads it to know whether to load)")
    if not isinstance(instance, Translator):
        raise _Failed(f"{cls.__qualname__} instances do not satisfy vstk.Translator (fix: implement every "
                      f"protocol member)")
    return f"cpu and paper profiles; tiny config {settings}"


def _check_train(run: _Run) -> str:
    run.source, run.target, run.probe = make_phantom_data(run.workdir / "phantom")
    translator = run.new()
    workdir = run.workdir / "train"
    calls: list[tuple[Any, ...]] = []

    def progress(done: Any, total: Any, message: Any = "") -> None:
        calls.append((done, total, message))

    path = _call("train(source, target, workdir, progress=..., distributed=None) on tiny phantom volumes",
                 "train must accept lists of vstk.Volume, a work folder and the keywords progress and distributed",
                 lambda: translator.train(run.source, run.target, workdir, progress=progress, distributed=None))
    if path is None or not Path(path).is_file():
        raise _Failed(f"train() returned {path!r}, not the path of an existing checkpoint file "
                      f"(fix: return the final checkpoint, WORK/{FINAL_CHECKPOINT})")
    if Path(path).resolve() != (workdir / FINAL_CHECKPOINT).resolve():
        raise _Failed(f"train() returned {path}, but the pipeline looks for the final checkpoint at "
                      f"WORK/{FINAL_CHECKPOINT} (fix: write it there)")
    if translator.checkpoint is None or Path(translator.checkpoint).resolve() != Path(path).resolve():
        raise _Failed(f"after train(), checkpoint is {translator.checkpoint!r}, not the checkpoint train() returned "
                      f"(fix: hold the trained weights and set self.checkpoint to that file)")
    bad = [c for c in calls if not all(isinstance(v, t) for v, t in zip(c, (int, int, str)))]
    if not calls or bad:
        seen = f"a call {bad[0]!r}" if bad else "no call"
        raise _Failed(f"train() made {seen} of progress (fix: call progress(done_steps, total_steps, message) "
                      f"with two ints and a str as training advances)")
    run.checkpoint = Path(path)
    output = _translate(translator, run.probe, "right after train()")
    if output.shape != run.probe.shape:
        raise _Failed(f"translated shape {output.shape} differs from the input {run.probe.shape}")
    if not np.all(np.isfinite(output)):
        raise _Failed(f"the translation holds {int(np.sum(~np.isfinite(output)))} NaN/Inf voxels after training "
                      f"(fix: check the losses for NaN; the kit trains {run.config} )")
    run.trained_output = output
    return f"checkpoint {run.checkpoint.name}, {run.checkpoint.stat().st_size} bytes"


def _check_round_trip(run: _Run) -> str:
    assert run.checkpoint is not None and run.probe is not None and run.trained_output is not None
    same_config = run.new()
    _call(f"load({run.checkpoint.name}) into a translator with the training config",
          "load() must read what train() wrote", lambda: same_config.load(run.checkpoint))
    if same_config.checkpoint is None or Path(same_config.checkpoint).resolve() != run.checkpoint.resolve():
        raise _Failed(f"after load({run.checkpoint.name}), checkpoint is {same_config.checkpoint!r} (fix: set "
                      f"self.checkpoint to the loaded file)")
    loaded = _translate(same_config, run.probe, "after load()")
    if not _same(run.trained_output, loaded):
        raise _Failed(f"outputs after save/load differ from the trained translator's by up to "
                      f"{_max_difference(run.trained_output, loaded):.3g} (fix: save every weight and buffer the "
                      f"inference network uses, and put it in eval mode after loading)")
    default = _call(f"{run.cls.__qualname__}(profile {run.profile!r})", "the default profile must build",
                    lambda: run.new(run.cls.profile(run.profile)))
    _call(f"load({run.checkpoint.name}) into a translator built from the default {run.profile!r} profile",
          "load() must restore the architecture from the checkpoint (vstk translate apply builds from a profile)",
          lambda: default.load(run.checkpoint))
    trained, restored = result_settings(run.config), result_settings(default.config)
    changed = sorted(k for k in set(trained) | set(restored) if trained.get(k) != restored.get(k))
    if changed:
        shown = "; ".join([f"{k}: {restored.get(k)!r} instead of {trained.get(k)!r}" for k in changed[:4]]
                          + ([f"{len(changed) - 4} more"] if len(changed) > 4 else []))
        raise _Failed(f"after load() into the {run.profile!r} profile, config holds other settings than the "
                      f"training ({shown}) (fix: store the training config in the checkpoint and set self.config "
                      f"from it in load(); vstk run compares these settings before reusing a checkpoint)")
    from_profile = _translate(default, run.probe, f"after load() into the {run.profile!r} profile")
    if not _same(run.trained_output, from_profile):
        raise _Failed(f"a translator built from profile {run.profile!r} translates differently after load() "
                      f"(max difference {_max_difference(run.trained_output, from_profile):.3g}) (fix: store the "
                      f"training config in the checkpoint and restore it in load())")
    return "identical outputs and settings after load(), also into the default profile"


def _check_volume_geometry(run: _Run) -> str:
    assert run.checkpoint is not None and run.probe is not None
    translator = run.new()
    volume = _regridded(run.probe)
    try:
        translator.translate_volume(volume)
    except CheckpointError:
        pass
    except Exception as exc:  # anything else is what the check is about
        raise _Failed(f"translate_volume() without weights raised {_describe(exc)} (fix: raise "
                      f"vstk.CheckpointError saying to train or load first)") from exc
    else:
        raise _Failed("translate_volume() translated before train() or load() gave the translator weights "
                      "(fix: raise vstk.CheckpointError while checkpoint is None)")
    _call("load()", "load() must read what train() wrote", lambda: translator.load(run.checkpoint))
    before = volume.array.copy()
    out = _call("translate_volume() on a rotated, anisotropic, odd-sized grid",
                "translate slices in the input's own frame and merge them back onto its grid",
                lambda: translator.translate_volume(volume))
    if not isinstance(out, Volume):
        raise _Failed(f"translate_volume() returned {type(out).__name__}, not a vstk.Volume")
    mismatch = out.grid_mismatch(volume)
    if mismatch is not None:
        raise _Failed(f"the translated volume is not on the input grid: {mismatch} (fix: return "
                      f"volume.with_array(translated), so the ceT1 label still fits voxel for voxel)")
    if not np.array_equal(volume.array, before):
        raise _Failed("translate_volume() modified the input volume's voxels (fix: work on a copy)")
    array = np.asarray(out.array)
    if not np.issubdtype(array.dtype, np.floating) or not np.all(np.isfinite(array)):
        raise _Failed(f"translated voxels must be finite floats, got dtype {array.dtype} with "
                      f"{int(np.sum(~np.isfinite(array))) if np.issubdtype(array.dtype, np.floating) else 0} NaN/Inf")
    if float(array.max()) == float(array.min()):
        raise _Failed(f"every translated voxel is {float(array.min())} (fix: translate the image, not a constant)")
    return f"shape {out.shape}, spacing, origin and direction kept; no translation without weights"


def _check_seed(run: _Run) -> str:
    assert run.probe is not None and run.trained_output is not None
    again = run.new()
    _call("a second train() with the same config and seed", "train must be repeatable",
          lambda: again.train(run.source, run.target, run.workdir / "train_again"))
    output = _translate(again, run.probe, "after the second train()")
    if not _same(run.trained_output, output):
        raise _Failed(f"two CPU trainings with seed {getattr(run.config, 'seed', '?')} give outputs that differ by "
                      f"up to {_max_difference(run.trained_output, output):.3g} (fix: seed torch and every random "
                      f"source (image pools, patch sampling, flips) from config.seed, e.g. through "
                      f"vstk.translation.trainer.train)")
    return f"seed {getattr(run.config, 'seed', '?')} reproduces the same output"


def _check_corrupt_checkpoint(run: _Run) -> str:
    assert run.checkpoint is not None
    folder = run.workdir / "corrupt"
    folder.mkdir(parents=True, exist_ok=True)
    data = run.checkpoint.read_bytes()
    cases = {
        "truncated": data[: len(data) // 2],
        "garbage": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "empty": b"",
    }
    problems = []
    paths = {}
    for case, content in cases.items():
        paths[case] = folder / f"{case}.pt"
        paths[case].write_bytes(content)
    paths["missing"] = folder / "missing.pt"
    for case, path in paths.items():
        translator = run.new()
        try:
            translator.load(path)
        except CheckpointError as exc:
            if path.name not in str(exc):
                problems.append(f"{case} file: the CheckpointError does not name the file ({str(exc)[:120]!r})")
        except Exception as exc:  # anything else is what the check is about
            problems.append(f"{case} file: load() raised {_describe(exc)}")
        else:
            problems.append(f"{case} file: load() raised nothing")
    if problems:
        raise _Failed("; ".join(problems) + " (fix: read checkpoints with vstk.translation.checkpoint.load_checkpoint "
                      "or raise vstk.CheckpointError(problem, path=path, fix=...))")
    return "truncated, garbage, empty and missing files raise CheckpointError naming the file"


_CHECK_FUNCTIONS: dict[str, Callable[[_Run], str]] = {
    "registered": _check_registered,
    "profiles": _check_profiles,
    "train": _check_train,
    "round_trip": _check_round_trip,
    "volume_geometry": _check_volume_geometry,
    "seed": _check_seed,
    "corrupt_checkpoint": _check_corrupt_checkpoint,
}
#: Check names in the order they run; later ones need "profiles" and "train".
CHECKS: tuple[str, ...] = tuple(_CHECK_FUNCTIONS)
_SKIPPED = "skipped: "  # a check returning a message with this prefix did not apply
_NEEDS = {"train": ("profiles",), "round_trip": ("train",), "volume_geometry": ("train",), "seed": ("train",),
          "corrupt_checkpoint": ("train",)}


def _resolve(translator: str | type) -> tuple[type, str | None]:
    if isinstance(translator, type):
        return translator, None
    from ..plugins import load_plugins

    host = load_plugins()
    if translator not in host.registry("translator"):
        return type("_Unregistered", (), {"name": translator}), translator
    return host.get("translator", translator), translator


def check_translator(translator: str | type, overrides: Mapping[str, Any] | None = None, *,
                     workdir: str | Path | None = None, profile: str = "cpu", checks: tuple[str, ...] | None = None,
                     device: str = "cpu") -> ConformanceReport:
    """Run the conformance checks on a translator and raise if any fails.

    Args:
        translator: a registered translator name (checked through the installed plugins,
            as ``vstk run`` finds it) or a translator class.
        overrides: config settings on top of ``profile`` and :data:`TINY_SETTINGS`, e.g. the
            widths of the plugin's own networks; only fields of its config class.
        workdir: folder for the phantom, checkpoints and logs (a temporary folder, removed
            afterwards, when None).
        profile: the profile the tiny config starts from.
        checks: names from :data:`CHECKS` to run (all by default); "profiles" and "train"
            run whenever a later check needs them.
        device: where to train and translate (reproducibility is checked on "cpu").

    Returns:
        The :class:`ConformanceReport` when every check passed.

    Raises:
        ConformanceError: one line per failed check (checks that need a failed one are skipped).
    """
    wanted = set(CHECKS if checks is None else checks)
    unknown = wanted - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown conformance checks {sorted(unknown)}; known: {', '.join(CHECKS)}")
    for name in list(wanted):
        wanted.update(_NEEDS.get(name, ()))
        for need in _NEEDS.get(name, ()):
            wanted.update(_NEEDS.get(need, ()))
    cls, name = _resolve(translator)
    label = name or getattr(cls, "name", cls.__qualname__)
    temporary = workdir is None
    root = Path(tempfile.mkdtemp(prefix="vstk-conformance-")) if temporary else Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    run = _Run(label, cls, name, profile, dict(overrides or {}), root, device)
    results: list[CheckResult] = []
    failed: set[str] = set()
    try:
        for check in CHECKS:
            if check not in wanted:
                continue
            blocked = [n for n in _NEEDS.get(check, ()) if n in failed]
            if blocked or (check != "registered" and "registered" in failed):
                failed.add(check)
                reason = blocked[0] if blocked else "registered"
                results.append(CheckResult(check, "skipped", f"needs {reason!r}, which failed"))
                continue
            started = time.perf_counter()
            try:
                message = _CHECK_FUNCTIONS[check](run)
                status = "passed"
                if message.startswith(_SKIPPED):
                    message, status = message[len(_SKIPPED):], "skipped"
            except _Failed as exc:
                message, status = str(exc), "failed"
                failed.add(check)
            except VstkError as exc:  # a vstk error outside a plugin call still names its fix
                message, status = exc.one_line(), "failed"
                failed.add(check)
            results.append(CheckResult(check, status, message, round(time.perf_counter() - started, 3)))
            log.info("conformance %s %s: %s", label, check, status)
    finally:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)
    report = ConformanceReport(label, tuple(results))
    if not report.passed:
        lines = [f"translator {label!r} failed {len(report.failures)} conformance check(s):"]
        lines += [f"- {r.name}: {r.message}" for r in report.failures]
        raise ConformanceError("\n".join(lines))
    return report
