"""Working with finished runs: retrain the found architecture, evaluate a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .checkpoint import CHECKPOINT_NAME, load_checkpoint
from .config import ConfigError, SearchConfig, read_yaml
from .engine import build_model, evaluate, load_split, resolve_device, run_search

RETRAIN_SEED_OFFSET = 1000  # default retrain seed = search seed + this: fresh weights


def load_run_config(run_dir: str | Path) -> SearchConfig:
    """The resolved config saved in a run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run directory not found: {run_dir}")
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml)")
    return SearchConfig.from_dict(read_yaml(run_dir / "config.yaml"))


def retrain(
    run_dir: str | Path,
    *,
    out: str | Path | None = None,
    seed: int | None = None,
    epochs: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """The standard NAS evaluation: fresh weights, the architecture found in `run_dir` frozen.

    Trains with method `fixed` (same recipe as the search unless overridden) in `out`
    (default `run_dir/retrain`); the weights are re-initialised from `seed` (default: the search
    seed + 1000) and the architecture parameters are loaded from `run_dir`'s checkpoint.
    results.json gets `"retrain_of": run_dir`. Override `match_gain=True` to rescale the fresh K-op
    weights to the conv's output scale (`chrysalis.match_conv_gain_`) before training.
    """
    run_dir = Path(run_dir)
    base = load_run_config(run_dir)
    if not (run_dir / CHECKPOINT_NAME).is_file():
        raise ConfigError(f"{run_dir} has no {CHECKPOINT_NAME} to take the architecture from")
    changes: dict[str, Any] = {
        "method": "fixed",
        "arch_from": str(run_dir),
        "seed": base.seed + RETRAIN_SEED_OFFSET if seed is None else seed,
        "out": str(out if out is not None else run_dir / "retrain"),
        "warmup_epochs": 0,
        "second_order": False,
    }
    if epochs is not None:
        changes["epochs"] = epochs
    changes.update({k: v for k, v in overrides.items() if v is not None})
    return run_search(base.replace(**changes), resume=resume, overwrite=overwrite)


def evaluate_run(run_dir: str | Path, split: str = "test", device: str | None = None) -> dict[str, float]:
    """Loss and accuracy of a run's checkpoint on `split` (test by default)."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    if device is not None:
        config = config.replace(device=device)
    dev = resolve_device(config.device)
    ckpt = load_checkpoint(run_dir / CHECKPOINT_NAME, map_location=dev)
    data = load_split(config, split, None, dev)
    model = build_model(config, data.info).to(dev)
    model.load_state_dict(ckpt["model"])
    loss, acc = evaluate(model, data, config.eval_batch_size)
    return {f"{split}_acc": acc, f"{split}_loss": loss, "epoch": ckpt["epoch"], "examples": len(data)}
