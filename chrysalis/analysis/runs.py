"""Reading finished (or interrupted) run directories: config, metrics, results, and the model.

A run directory is what `chrysalis.search.run_search` writes (docs/SEARCH.md): `config.yaml`,
`metrics.jsonl`, `checkpoint.pt`, `results.json`. The functions here only *read* it. The model is
rebuilt from the config with the public pieces (`chrysalis.spaces.create_space`, seeded like the
search engine does) and filled from the checkpoint, loaded with `weights_only=True`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

METRICS_NAME = "metrics.jsonl"
CHECKPOINT_NAME = "checkpoint.pt"
RESULTS_NAME = "results.json"


class AnalysisError(ValueError):
    """A run, export or report input is missing or invalid; the message says which and why."""


# --------------------------------------------------------------------------- files
def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The resolved config (`config.yaml`) of a run directory, as a plain dict (read and validated
    by the search engine's own `load_run_config`)."""
    from ..search.runs import load_run_config

    return load_run_config(run_dir).to_dict()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of `metrics.jsonl` (empty if the run has none yet)."""
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        return []
    records = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise AnalysisError(f"{path}:{i} is not a JSON line") from None
    return records


def read_results(run_dir: str | Path) -> dict[str, Any] | None:
    """`results.json` of a run, or None if the run has not finished."""
    path = Path(run_dir) / RESULTS_NAME
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise AnalysisError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(results, dict):
        raise AnalysisError(f"{path} does not hold a JSON object")
    return results


def read_checkpoint_state(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(model state dict, {epoch, step}) from a run's checkpoint (safe load, on the CPU)."""
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file():
        raise AnalysisError(f"{run_dir} has no {CHECKPOINT_NAME} (has the run trained an epoch?)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, not a checkpoint, unsafe pickle...
        raise AnalysisError(f"cannot load {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise AnalysisError(f"{path} is not a chrysalis checkpoint (no model state)")
    return ckpt["model"], {"epoch": ckpt.get("epoch"), "step": ckpt.get("step")}


# --------------------------------------------------------------------------- the model
def build_args(config: dict[str, Any]) -> dict[str, Any]:
    """What `create_space` needs to rebuild a run's model: the search engine's own `model_spec`.

    The model is built right after seeding with the run's seed, so
    `build_model(build_args(cfg), info)` is the model at step 0.
    """
    from ..search.config import SearchConfig
    from ..search.engine import model_spec

    return model_spec(SearchConfig.from_dict(config))


def build_model(args: dict[str, Any], info: Any) -> nn.Module:
    """The model described by `build_args` for dataset `info`, with its step-0 parameters.

    Seeds torch with `args["seed"]` inside a forked RNG, so the caller's random state is untouched.
    """
    from ..spaces import create_space

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(args.get("seed", 0)))
        return create_space(args["space"], info, args["op"], space_options=dict(args.get("space_options") or {}),
                            **dict(args.get("kop_options") or {}))


def info_from_dict(d: dict[str, Any]) -> Any:
    """A dataset info object from `DatasetInfo.to_dict()` output (results.json "data")."""
    from ..data.base import DatasetInfo

    try:
        return DatasetInfo.from_dict(d)
    except (TypeError, KeyError):  # other keys: the duck-typed fields the spaces read are enough
        needed = ("kind", "input_shape", "num_classes")
        missing = [k for k in needed if k not in d]
        if missing:
            raise AnalysisError(f"dataset info lacks {', '.join(missing)}") from None
        return SimpleNamespace(**{**d, "input_shape": tuple(d["input_shape"])})


@dataclass
class LoadedRun:
    """A run directory read into memory: its files and its model (final and initial)."""

    path: Path
    config: dict[str, Any]
    info: Any
    metrics: list[dict[str, Any]]
    results: dict[str, Any] | None
    model: nn.Module | None = None  # from the checkpoint; None if there is none
    checkpoint: dict[str, Any] = field(default_factory=dict)  # {epoch, step} of the checkpoint

    @property
    def data_info(self) -> dict[str, Any]:
        """The dataset info as a JSON-able dict."""
        if hasattr(self.info, "to_dict"):
            return self.info.to_dict()
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self.info).items()}

    def initial_model(self) -> nn.Module:
        """The run's model at step 0 (rebuilt from the config and seed: no training)."""
        return build_model(build_args(self.config), self.info).eval()


def dataset_info(run_dir: Path, config: dict[str, Any], results: dict[str, Any] | None) -> Any:
    """The run's dataset info: from results.json if finished, otherwise from the dataset itself."""
    if results is not None and isinstance(results.get("data"), dict) and "input_shape" in results["data"]:
        return info_from_dict(results["data"])
    from ..data import get_dataset

    try:
        return get_dataset(config.get("data", "mnist5k"), "val", **(config.get("data_options") or {})).info
    except Exception as e:
        raise AnalysisError(f"cannot load the dataset info of {run_dir}: {e}") from None


def load_run(run_dir: str | Path, *, with_model: bool = True) -> LoadedRun:
    """Read a run directory; with `with_model`, rebuild its model and load the checkpoint into it."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    results = read_results(run_dir)
    info = dataset_info(run_dir, config, results)
    run = LoadedRun(path=run_dir, config=config, info=info, metrics=read_metrics(run_dir), results=results)
    if with_model and (run_dir / CHECKPOINT_NAME).is_file():
        state, meta = read_checkpoint_state(run_dir)
        try:
            model = build_model(build_args(config), info)
        except Exception as e:
            raise AnalysisError(f"cannot rebuild the model of {run_dir}: {e}") from None
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise AnalysisError(f"the checkpoint of {run_dir} does not fit its config: "
                                f"{str(e).splitlines()[0]}") from None
        run.model, run.checkpoint = model.eval(), meta
    return run


def finite(x: Any) -> bool:
    """True for a real, finite number (not None, not NaN)."""
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
