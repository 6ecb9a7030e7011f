"""Sweeps: many search runs (seeds x methods x inits x tasks ...) from one YAML file.

    from chrysalis.sweep import load_sweep, run_sweep
    spec = load_sweep("configs/sweeps/pmnist.yaml")
    records = run_sweep(spec, launcher="local", workers=2)    # one dict per trial (= trials.jsonl)

A sweep is a cartesian product of grid axes applied on top of a base `SearchConfig`; every point
(a *trial*) is one run directory `OUT/<trial name>` made by `run_search` (and, with `retrain: true`,
`OUT/<trial name>/retrain` made by `retrain`). Launchers: `local` (in this process, or a pool of
spawned processes) and `ray` (Ray Tune, on a local Ray instance or a cluster). Finished trials
(a results.json) are skipped, interrupted ones (a checkpoint) resumed, so re-running an
interrupted sweep finishes it. The schema and the launchers are documented in docs/SCALING.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import re
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .search.config import ConfigError, SearchConfig, read_yaml

SWEEP_KEYS = ("out", "base", "set", "grid", "retrain", "resources", "trial_name")
RESOURCE_KEYS = ("cpus", "gpus")
LAUNCHERS = ("local", "ray")
CONFIG_KEYS = tuple(f.name for f in dataclasses.fields(SearchConfig))
# Keys a sweep owns: every trial's directory is OUT/<trial name>.
RESERVED_KEYS = ("out",)
# Defaults for every trial unless the base config, `set` or the grid says otherwise.
TRIAL_DEFAULTS: dict[str, Any] = {"quiet": True}
RESULTS_FILE = "results.json"
CHECKPOINT_FILE = "checkpoint.pt"
TRIAL_LOG = "trial.log"
RAY_INSTALL_HINT = 'the ray launcher needs Ray Tune: pip install "chrysalis-nas[ray]"'
_SAFE = re.compile(r"[^A-Za-z0-9._+=-]+")


class SweepError(ConfigError):
    """A sweep file or a sweep option is invalid; the message says what is allowed."""


# ------------------------------------------------------------------------------------------ schema
@dataclass
class Trial:
    """One point of the grid: a run directory and the resolved SearchConfig that fills it.

    Attributes:
        name: the trial's path below the sweep's `out` (e.g. `joint-warm/seed1`).
        params: the grid coordinates, axis -> label (bundle name or value).
        config: the resolved SearchConfig as a dict (its `out` is the trial directory).
        retrain: whether `retrain` runs on the trial after its search (K-op searches only).
    """

    name: str
    params: dict[str, Any]
    config: dict[str, Any]
    retrain: bool = False

    @property
    def dir(self) -> Path:
        """The trial's run directory."""
        return Path(self.config["out"])

    def done(self) -> bool:
        """True when the search (and the retrain, if any) wrote results.json."""
        if not (self.dir / RESULTS_FILE).is_file():
            return False
        return not self.retrain or (self.dir / "retrain" / RESULTS_FILE).is_file()

    def action(self, resume: bool = True) -> str:
        """What running the trial will do: skip | resume | start | restart."""
        started = self.dir.is_dir() and any(self.dir.iterdir())
        if not resume:
            return "restart" if started else "start"
        if self.done():
            return "skip"
        if (self.dir / CHECKPOINT_FILE).is_file() or (self.dir / "retrain" / CHECKPOINT_FILE).is_file() \
                or (self.dir / RESULTS_FILE).is_file():
            return "resume"
        return "restart" if started else "start"

    def to_dict(self) -> dict[str, Any]:
        """A picklable/JSON-able dict (what a worker process or a Ray trial receives)."""
        return dataclasses.asdict(self)


@dataclass
class SweepSpec:
    """A validated sweep file.

    Attributes:
        out: the sweep directory; trial `t` runs in `out/t.name`.
        base: where the base SearchConfig came from (a path, "inline" or None for the defaults).
        base_config: the base config's values (a mapping of SearchConfig keys).
        set: overrides applied to every trial (after the base, before the grid).
        grid: axis -> list of values; an axis named after a SearchConfig key sweeps that key, any
            other name is a bundle axis whose values are mappings of keys (with an optional `name`).
        retrain: also `retrain` every K-op search trial (method joint/bilevel) after its search.
        resources: per trial, {"cpus": c, "gpus": g}; cpus also sets the trial's torch threads.
        trial_name: an optional format string for the trial directory, e.g. "{variant}/seed{seed}".
    """

    out: str
    base: str | None = None
    base_config: dict[str, Any] = field(default_factory=dict)
    set: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    retrain: bool = False
    resources: dict[str, float] = field(default_factory=lambda: {"cpus": 1, "gpus": 0})
    trial_name: str | None = None

    @classmethod
    def from_dict(cls, values: Any, *, root: str | Path | None = None, out: str | Path | None = None) -> SweepSpec:
        """Validate a sweep mapping; `root` is the sweep file's folder (base paths are tried there first).

        `out` overrides the file's `out`. Raises SweepError on anything invalid, naming the key.
        """
        if not isinstance(values, dict):
            raise SweepError(f"a sweep must be a mapping of keys to values, got {type(values).__name__}")
        unknown = sorted(set(values) - set(SWEEP_KEYS))
        if unknown:
            raise SweepError(f"unknown sweep key(s) {', '.join(map(str, unknown))}; "
                             f"valid keys: {', '.join(SWEEP_KEYS)}")
        out = out if out is not None else values.get("out")
        if not out or not isinstance(out, str | Path):
            raise SweepError("the sweep needs `out` (the sweep directory): in the file or with --out")
        base, base_config = _load_base(values.get("base"), root)
        sets = values.get("set") or {}
        if not isinstance(sets, dict):
            raise SweepError(f"`set` must be a mapping of config keys, got {type(sets).__name__}")
        _check_config_keys(sets, "set")
        grid = values.get("grid") or {}
        if not isinstance(grid, dict):
            raise SweepError(f"`grid` must be a mapping of axis -> list of values, got {type(grid).__name__}")
        for axis, points in grid.items():
            _check_axis(str(axis), points)
        retrain = values.get("retrain", False)
        if not isinstance(retrain, bool):
            raise SweepError(f"`retrain` must be true or false, got {retrain!r}")
        resources = _check_resources(values.get("resources"))
        trial_name = values.get("trial_name")
        if trial_name is not None and not isinstance(trial_name, str):
            raise SweepError(f"`trial_name` must be a format string such as '{{variant}}/seed{{seed}}', "
                             f"got {trial_name!r}")
        spec = cls(out=str(out), base=base, base_config=base_config, set=dict(sets),
                   grid={str(k): list(v) for k, v in grid.items()}, retrain=retrain, resources=resources,
                   trial_name=trial_name)
        spec.trials()  # validates every point (config values, name collisions) before anything runs
        return spec

    def to_dict(self) -> dict[str, Any]:
        """The resolved sweep (what `OUT/sweep.yaml` holds, without the trial list)."""
        return dataclasses.asdict(self)

    def trials(self) -> list[Trial]:
        """Every point of the grid, in grid order (the last axis varies fastest)."""
        axes = list(self.grid.items())
        trials: list[Trial] = []
        seen: dict[str, dict[str, Any]] = {}
        for point in itertools.product(*(values for _, values in axes)):
            values: dict[str, Any] = {**TRIAL_DEFAULTS, "threads": max(1, int(self.resources["cpus"])),
                                      **self.base_config, **self.set}
            params: dict[str, Any] = {}
            labels: dict[str, str] = {}
            setters: dict[str, str] = {}
            for (axis, _), value in zip(axes, point):
                if axis in CONFIG_KEYS:
                    keys = {axis: value}
                    params[axis] = value
                else:
                    keys = {k: v for k, v in value.items() if k != "name"}
                    params[axis] = _bundle_name(value)
                labels[axis] = _label(axis, value)
                for k in keys:
                    if k in setters:
                        raise SweepError(f"grid axes {setters[k]!r} and {axis!r} both set {k!r}; one key, one axis")
                    setters[k] = axis
                values.update(keys)
            name = self._name(labels, params)
            if name in seen:
                raise SweepError(f"two grid points get the same trial directory {name!r} ({seen[name]} and "
                                 f"{params}); give the bundles distinct names or set `trial_name`")
            seen[name] = params
            values["out"] = str(Path(self.out) / name)
            try:
                config = SearchConfig.from_dict(values).to_dict()
            except ConfigError as e:
                raise SweepError(f"trial {name}: {e}") from None
            retrain = self.retrain and config["op"] == "kop" and config["method"] != "fixed"
            trials.append(Trial(name=name, params=params, config=config, retrain=retrain))
        return trials

    def _name(self, labels: dict[str, str], params: dict[str, Any]) -> str:
        """The trial directory below `out`: the template, or the axis labels with `seed` last."""
        if self.trial_name is not None:
            fields = {axis: (labels[axis] if axis not in CONFIG_KEYS else params[axis]) for axis in labels}
            try:
                name = self.trial_name.format(**fields)
            except (KeyError, IndexError, ValueError) as e:
                raise SweepError(f"trial_name {self.trial_name!r}: unknown field {e}; fields are the grid axes: "
                                 f"{', '.join(labels) or '(none)'}") from None
        else:
            order = [a for a in labels if a != "seed"] + [a for a in labels if a == "seed"]
            name = "/".join(labels[a] for a in order) or "trial"
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if not parts or ".." in parts or name.startswith("/"):
            raise SweepError(f"trial directory {name!r} must be a relative path inside `out`")
        return "/".join(_SAFE.sub("_", p) for p in parts)


def load_sweep(
    path: str | Path, *, out: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> SweepSpec:
    """Read and validate a sweep YAML file (`out` and `overrides` of `set` keys take precedence)."""
    path = Path(path)
    try:
        values = read_yaml(path)
    except ConfigError as e:
        raise SweepError(str(e).replace("config file", "sweep file")) from None
    if overrides:
        values = {**values, "set": {**(values.get("set") or {}), **overrides}}
    return SweepSpec.from_dict(values, root=path.parent, out=out)


def _load_base(base: Any, root: str | Path | None) -> tuple[str | None, dict[str, Any]]:
    """The base config: a YAML path (relative to the sweep file's folder, then the cwd) or a mapping."""
    if base is None:
        return None, {}
    if isinstance(base, dict):
        _check_config_keys(base, "base", allow_reserved=True)
        return "inline", dict(base)
    if not isinstance(base, str):
        raise SweepError(f"`base` must be a SearchConfig YAML path or a mapping, got {type(base).__name__}")
    candidates = ([Path(root) / base] if root is not None and not Path(base).is_absolute() else []) + [Path(base)]
    for candidate in candidates:
        if candidate.is_file():
            values = read_yaml(candidate)
            _check_config_keys(values, f"base {candidate}", allow_reserved=True)
            return str(candidate), values
    tried = " or ".join(str(c) for c in dict.fromkeys(candidates))
    raise SweepError(f"base config not found: {tried}")


def _check_config_keys(values: dict[str, Any], where: str, allow_reserved: bool = False) -> None:
    unknown = sorted(set(map(str, values)) - set(CONFIG_KEYS))
    if unknown:
        raise SweepError(f"{where}: unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(CONFIG_KEYS)}")
    reserved = [k for k in RESERVED_KEYS if k in values and not allow_reserved]
    if reserved:
        raise SweepError(f"{where}: {', '.join(reserved)} is set by the sweep (trial directories are OUT/<trial>)")


def _check_axis(axis: str, points: Any) -> None:
    if not isinstance(points, list) or not points:
        raise SweepError(f"grid.{axis} must be a non-empty list of values, got {points!r}")
    if axis in RESERVED_KEYS:
        raise SweepError(f"grid.{axis}: {axis} is set by the sweep (trial directories are OUT/<trial>)")
    if axis in CONFIG_KEYS:
        return
    for i, value in enumerate(points):
        if not isinstance(value, dict):
            raise SweepError(f"grid.{axis}[{i}]: {axis!r} is not a config key, so it is a bundle axis whose "
                             f"values are mappings of config keys (with an optional name); got {value!r}. "
                             f"Config keys: {', '.join(CONFIG_KEYS)}")
        _check_config_keys({k: v for k, v in value.items() if k != "name"}, f"grid.{axis}[{i}]")
        if "name" in value and (not isinstance(value["name"], str | int) or not str(value["name"]).strip()):
            raise SweepError(f"grid.{axis}[{i}]: name must be a non-empty string, got {value['name']!r}")


def _check_resources(resources: Any) -> dict[str, float]:
    if resources is None:
        return {"cpus": 1, "gpus": 0}
    if not isinstance(resources, dict):
        raise SweepError(f"`resources` must be a mapping like {{cpus: 1, gpus: 0}}, got {resources!r}")
    unknown = sorted(set(map(str, resources)) - set(RESOURCE_KEYS))
    if unknown:
        raise SweepError(f"unknown resources key(s) {', '.join(unknown)}; valid keys: {', '.join(RESOURCE_KEYS)}")
    out: dict[str, float] = {"cpus": 1, "gpus": 0}
    for key, value in resources.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SweepError(f"resources.{key} must be a number, got {value!r}")
        if value < 0 or (key == "cpus" and value <= 0):
            raise SweepError(f"resources.{key} must be {'> 0' if key == 'cpus' else '>= 0'}, got {value}")
        out[key] = int(value) if float(value).is_integer() else float(value)
    return out


def _bundle_name(bundle: dict[str, Any]) -> str:
    if "name" in bundle:
        return str(bundle["name"])
    return "-".join(_value_label(v) for k, v in bundle.items()) or "default"


def _value_label(value: Any) -> str:
    if isinstance(value, dict):
        return "_".join(f"{k}{_value_label(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return "_".join(_value_label(v) for v in value)
    return str(value)


def _label(axis: str, value: Any) -> str:
    """A readable directory part: bundles by name, strings as is, `seed3`, `lr0.01`, `tensorboard`/`no-...`."""
    if axis not in CONFIG_KEYS:
        return _bundle_name(value)
    if isinstance(value, bool):
        return axis if value else f"no-{axis}"
    if isinstance(value, str):
        return value
    return f"{axis}{_value_label(value)}"


# ----------------------------------------------------------------------------------- one trial
def run_trial(trial: dict[str, Any], resume: bool = True, threads: int | None = None) -> dict[str, Any]:
    """Run one trial (the search, then the retrain if asked); never raises: failures are records.

    Runs in the calling process, a spawned worker, or a Ray worker. The trial's stdout goes to
    `<trial dir>/trial.log`. Finished phases (a results.json) are skipped, interrupted ones
    (a checkpoint) resumed, others started afresh (clearing half-written files).
    """
    import torch

    from .search import retrain as retrain_run
    from .search import run_search

    if threads:
        torch.set_num_threads(threads)
    t = Trial(**trial)
    record = _record(t, status="running", action=t.action(resume))
    t0 = time.perf_counter()
    t.dir.mkdir(parents=True, exist_ok=True)
    try:
        with open(t.dir / TRIAL_LOG, "a") as log, contextlib.redirect_stdout(log):
            print(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {record['action']} {t.name}", flush=True)
            results = _phase(t.dir, resume, lambda r, o: run_search(SearchConfig.from_dict(t.config), resume=r,
                                                                   overwrite=o))
            record.update(_final(results))
            if t.retrain:
                results = _phase(t.dir / "retrain", resume,
                                 lambda r, o: retrain_run(t.dir, out=t.dir / "retrain", resume=r, overwrite=o))
                record["retrain_test_acc"] = results["final"]["test_acc"]
        record["status"] = "done" if record["action"] != "skip" else "skipped"
    except Exception as e:  # noqa: BLE001 - a failed trial must not stop the sweep
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        record.update(status="failed", error=f"{type(e).__name__}: {msg}")
        with contextlib.suppress(OSError), open(t.dir / TRIAL_LOG, "a") as log:
            log.write(traceback.format_exc())
    record["seconds"] = round(time.perf_counter() - t0, 3)
    return record


def _phase(run_dir: Path, resume: bool, run: Callable[[bool, bool], dict[str, Any]]) -> dict[str, Any]:
    """One run directory: read its results (done), resume its checkpoint, or (re)start it."""
    if resume and (run_dir / RESULTS_FILE).is_file():
        return json.loads((run_dir / RESULTS_FILE).read_text())
    if resume and (run_dir / CHECKPOINT_FILE).is_file():
        return run(True, False)
    return run(False, True)  # overwrite: clear what an interrupted first epoch may have left


def _record(trial: Trial, **fields: Any) -> dict[str, Any]:
    return {"trial": trial.name, "dir": str(trial.dir), "params": trial.params, "status": "pending",
            "action": None, "seconds": None, "val_acc": None, "test_acc": None,
            "retrain_test_acc": None, "error": None, **fields}


def _final(results: dict[str, Any]) -> dict[str, Any]:
    final = results.get("final", {})
    return {"val_acc": final.get("val_acc"), "test_acc": final.get("test_acc")}


# ------------------------------------------------------------------------------------- the sweep
def plan(spec: SweepSpec, resume: bool = True) -> list[tuple[Trial, str]]:
    """Every trial with what running the sweep would do to it (skip | resume | start | restart)."""
    return [(t, t.action(resume)) for t in spec.trials()]


def run_sweep(
    spec: SweepSpec,
    *,
    launcher: str = "local",
    workers: int = 1,
    resume: bool = True,
    address: str | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run every trial of `spec` that is not finished; returns one record per trial (as trials.jsonl).

    Args:
        launcher: `local` (this process with workers=1, else a pool of `workers` spawned processes)
            or `ray` (Ray Tune; `address` or RAY_ADDRESS picks a cluster, else a local Ray instance).
        workers: local processes running trials at the same time (local launcher only).
        resume: skip finished trials and resume interrupted ones; False re-runs every trial from scratch.
        log: where progress lines go.
    """
    if launcher not in LAUNCHERS:
        raise SweepError(f"launcher must be one of {', '.join(LAUNCHERS)}; got {launcher!r}")
    if workers < 1:
        raise SweepError(f"workers must be >= 1, got {workers}")
    if launcher == "ray":
        _import_ray()  # fail before writing anything
    trials = spec.trials()
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    write_resolved(spec, trials)
    records = {t.name: _record(t, action=t.action(resume)) for t in trials}
    todo = []
    for t in trials:
        if records[t.name]["action"] == "skip":
            records[t.name].update(status="skipped", **_final(json.loads((t.dir / RESULTS_FILE).read_text())))
            if t.retrain:
                retrained = json.loads((t.dir / "retrain" / RESULTS_FILE).read_text())
                records[t.name]["retrain_test_acc"] = retrained["final"]["test_acc"]
        else:
            todo.append(t)
    write_records(out, records.values())
    log(f"sweep {out}: {len(trials)} trials, {len(trials) - len(todo)} finished already, {len(todo)} to run "
        f"({launcher}{f', {workers} worker' + 's' * (workers > 1) if launcher == 'local' else ''})")
    threads = max(1, int(spec.resources["cpus"]))
    done, t0 = 0, time.perf_counter()

    def finished(record: dict[str, Any]) -> None:
        nonlocal done
        done += 1
        records[record["trial"]] = record
        write_records(out, records.values())
        if record["status"] == "failed":
            log(f"[{done}/{len(todo)}] FAILED {record['trial']}: {record['error']} (log: {record['dir']}/{TRIAL_LOG})")
        else:
            acc = "" if record["test_acc"] is None else f" test_acc {record['test_acc']:.4f}"
            if record["retrain_test_acc"] is not None:
                acc += f" retrain {record['retrain_test_acc']:.4f}"
            log(f"[{done}/{len(todo)}] {record['action']:>7} {record['trial']}{acc} ({record['seconds']:.1f}s)")

    if launcher == "ray":
        _run_ray(spec, todo, resume, address, finished)
    elif workers == 1 or len(todo) <= 1:
        for t in todo:
            finished(run_trial(t.to_dict(), resume, threads))
    else:
        _run_pool(todo, resume, threads, workers, finished)
    failed = sum(r["status"] == "failed" for r in records.values())
    log(f"sweep {out}: {len(todo) - failed} of {len(todo)} trials ran in {time.perf_counter() - t0:.1f}s"
        + (f", {failed} failed" if failed else ""))
    return [records[t.name] for t in trials]


def _run_pool(todo: list[Trial], resume: bool, threads: int, workers: int,
              finished: Callable[[dict[str, Any]], None]) -> None:
    """Local processes (spawned: a fresh interpreter each, no forked torch state)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx,
                             initializer=_init_worker, initargs=(threads,)) as pool:
        futures = {pool.submit(run_trial, t.to_dict(), resume, threads): t for t in todo}
        try:
            for future in as_completed(futures):
                try:
                    finished(future.result())
                except Exception as e:  # noqa: BLE001 - a crashed worker (e.g. killed) fails its trial
                    t = futures[future]
                    finished(_record(t, action=t.action(resume), status="failed",
                                     error=f"{type(e).__name__}: {e}", seconds=0.0))
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _import_ray() -> Any:
    try:
        import ray
        from ray import tune  # noqa: F401
    except ImportError:
        raise SweepError(RAY_INSTALL_HINT) from None
    return ray


def _ray_trainable(config: dict[str, Any]) -> None:
    """The Ray Tune function trainable: one trial's search (+ retrain), then its final metrics."""
    from ray import tune

    cwd = config.get("cwd")
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)  # relative data roots in the configs resolve as on the submitting machine
    record = run_trial(config["trial"], config["resume"], config["threads"])
    if record["status"] == "failed":
        raise RuntimeError(f"trial {record['trial']} failed: {record['error']}")
    tune.report({k: v for k, v in record.items() if k not in ("params", "error") and v is not None})


def _run_ray(spec: SweepSpec, todo: list[Trial], resume: bool, address: str | None,
             finished: Callable[[dict[str, Any]], None]) -> None:
    """Ray Tune: one Tune trial per sweep trial, resources per trial, storage under OUT/ray."""
    ray = _import_ray()
    from ray import tune

    if not todo:
        return
    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or None, include_dashboard=False,
                 log_to_driver=False)
    cwd = os.getcwd()
    trials = []
    for t in todo:  # absolute paths: Ray workers may run in another working directory
        d = t.to_dict()
        d["config"] = {**d["config"], "out": str(Path(d["config"]["out"]).resolve())}
        trials.append(d)
    resources = {"cpu": spec.resources["cpus"], "gpu": spec.resources["gpus"]}
    param_space = {"trial": tune.grid_search(trials), "resume": resume,
                   "threads": max(1, int(spec.resources["cpus"])), "cwd": cwd}
    tuner = tune.Tuner(
        tune.with_resources(_ray_trainable, resources),
        param_space=param_space,
        tune_config=tune.TuneConfig(trial_dirname_creator=_ray_dirname, max_concurrent_trials=None),
        run_config=tune.RunConfig(storage_path=str(Path(spec.out).resolve()), name="ray", verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )
    grid = tuner.fit()
    by_name = {t.name: t for t in todo}
    for result in grid:
        name = result.config["trial"]["name"]
        t = by_name.pop(name, None)
        if t is None:
            continue
        if result.error is not None:
            msg = str(result.error).strip().splitlines()
            error = next((line for line in msg if "failed:" in line), msg[0] if msg else "error")
            finished(_record(t, action=t.action(resume), status="failed", error=error.strip(),
                             seconds=(result.metrics or {}).get("time_total_s")))
        else:
            metrics = result.metrics or {}
            finished(_record(t, **{k: metrics.get(k) for k in ("action", "status", "seconds", "val_acc",
                                                                "test_acc", "retrain_test_acc")}))
    for t in by_name.values():
        finished(_record(t, action=t.action(resume), status="failed", error="Ray returned no result"))


def _ray_dirname(trial: Any) -> str:
    """Tune's per-trial folder under OUT/ray: the sweep trial's name, flattened."""
    return _SAFE.sub("_", str(trial.config["trial"]["name"]).replace("/", "__"))[:120]


# ------------------------------------------------------------------------------------ bookkeeping
def write_resolved(spec: SweepSpec, trials: list[Trial]) -> Path:
    """Write OUT/sweep.yaml: the resolved sweep and its trial list (name, grid coordinates)."""
    data = {**spec.to_dict(), "trials": [{"name": t.name, "params": t.params, "retrain": t.retrain}
                                         for t in trials]}
    path = Path(spec.out) / "sweep.yaml"
    _write_atomic(path, yaml.safe_dump(data, sort_keys=False))
    return path


def write_records(out: str | Path, records: Any) -> Path:
    """Write OUT/trials.jsonl (one JSON object per trial; rewritten atomically on every update)."""
    path = Path(out) / "trials.jsonl"
    _write_atomic(path, "".join(json.dumps(r) + "\n" for r in records))
    return path


def read_records(out: str | Path) -> list[dict[str, Any]]:
    """The records of OUT/trials.jsonl."""
    path = Path(out) / "trials.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def format_plan(items: list[tuple[Trial, str]]) -> str:
    """A dry-run listing: action, trial directory and the keys the grid sets."""
    lines = []
    for t, action in items:
        params = " ".join(f"{k}={v}" for k, v in t.params.items())
        lines.append(f"{action:>7}  {t.dir}  {params}{'  +retrain' if t.retrain else ''}")
    return "\n".join(lines)


__all__ = [
    "LAUNCHERS", "SWEEP_KEYS", "SweepError", "SweepSpec", "Trial", "format_plan", "load_sweep", "plan",
    "read_records", "run_sweep", "run_trial", "write_records", "write_resolved",
]
