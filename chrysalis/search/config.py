"""The search configuration: one dataclass, loaded from YAML and overridden by the command line.

Precedence: dataclass defaults < YAML file < explicit overrides (CLI flags). Unknown keys are an
error that lists the valid ones, so a typo in a YAML file never silently does nothing.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

METHODS = ("fixed", "joint", "bilevel")
OPS = ("conv", "kop", "fft")
INITS = ("conv", "random")
ARCH_OPTIMIZERS = ("adam", "sgd")
DIST_BACKENDS = ("auto", "gloo", "nccl")  # torchrun: auto = nccl on CUDA, gloo on CPU
ON_NONFINITE = ("stop", "rollback")
# Keys that may differ between an interrupted run and its resumption.
# (bookkeeping, not the result)
RESUMABLE_KEYS = ("epochs", "out", "quiet", "threads", "device", "tensorboard", "dist_backend")


class ConfigError(ValueError):
    """A configuration value or file is invalid; the message says what is allowed."""


@dataclass
class SearchConfig:
    """Everything that defines one search (or training) run; saved as `config.yaml` in the run."""

    # what: data, backbone, operation, method
    data: str = "mnist5k"
    data_options: dict[str, Any] = field(default_factory=dict)
    space: str = "lenet"
    space_options: dict[str, Any] = field(default_factory=dict)
    op: str = "kop"  # conv | kop | fft
    method: str = "joint"  # fixed | joint | bilevel
    init: str = "conv"  # conv (warm start) | random (from scratch); K-op only
    depth: int = 1  # butterflies per K-matrix
    kop_options: dict[str, Any] = field(default_factory=dict)  # extra chrysalize/KOp options
    arch_from: str | None = None  # a run dir whose architecture is loaded and frozen (retrain)
    match_gain: bool = False  # with arch_from: rescale fresh K-op weights to the conv's output scale
    # with arch_from: rescale anyway when a found K-op amplifies or damps by more than this factor
    # at init, where plain retrains diverged (docs/RESULTS.md); 0 = never
    max_init_gain: float = 4.0
    # how long, and the weight optimizer (SGD)
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    # the architecture optimizer (no weight decay by default: it destroys the K-matrix structure)
    arch_lr: float = 1e-4
    arch_optimizer: str = "adam"  # adam | sgd
    arch_weight_decay: float = 0.0
    # one schedule for both optimizers: lr multiplied by lr_gammas[i] once progress >= lr_milestones[i]
    lr_milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    lr_gammas: list[float] = field(default_factory=lambda: [0.5, 0.1])
    warmup_epochs: int = 0  # first epochs with the architecture frozen
    grad_clip: float = 0.0  # max gradient norm (weights and architecture separately); 0 = off
    second_order: bool = False  # bilevel: unrolled (DARTS second-order) architecture gradient
    seed: int = 0
    # bookkeeping
    checkpoint_every: int = 0  # also checkpoint every N steps; 0 = at the end of each epoch only
    # a non-finite loss or parameter: "stop" (the last good checkpoint is kept) or "rollback" to
    # that checkpoint with both learning rates multiplied by rollback_lr_factor (at most 3 times)
    on_nonfinite: str = "stop"
    rollback_lr_factor: float = 0.1
    limit_train: int | None = None  # use only the first N training examples (smoke tests)
    limit_val: int | None = None
    eval_batch_size: int = 512
    out: str | None = None
    device: str = "cpu"  # cpu | cuda | cuda:N | auto
    threads: int | None = None
    dist_backend: str = "auto"  # under torchrun: auto (nccl on CUDA, gloo on CPU) | gloo | nccl
    tensorboard: bool = True
    quiet: bool = False

    def validate(self) -> SearchConfig:
        """Raise ConfigError on an invalid value; return self."""
        _choice("method", self.method, METHODS)
        _choice("op", self.op, OPS)
        _choice("init", self.init, INITS)
        _choice("arch_optimizer", self.arch_optimizer, ARCH_OPTIMIZERS)
        _choice("dist_backend", self.dist_backend, DIST_BACKENDS)
        _choice("on_nonfinite", self.on_nonfinite, ON_NONFINITE)
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{f.name} must be a finite number, got {v!r}")
        if not 0 < self.rollback_lr_factor < 1:
            raise ConfigError(f"rollback_lr_factor must be in (0, 1), got {self.rollback_lr_factor}")
        if self.method in ("joint", "bilevel") and self.op != "kop":
            raise ConfigError(
                f"method {self.method!r} searches K-op architectures and needs op 'kop' "
                f"(op {self.op!r} has no architecture); use method 'fixed' for a fixed backbone"
            )
        for name in ("epochs", "batch_size", "depth", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_init_gain and self.max_init_gain < 1:
            raise ConfigError(f"max_init_gain must be >= 1 (or 0 = never), got {self.max_init_gain}")
        for name in ("lr", "arch_lr", "weight_decay", "arch_weight_decay", "momentum", "grad_clip",
                     "warmup_epochs", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("limit_train", "limit_val", "threads"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"{name} must be >= 1 (or unset), got {v}")
        if len(self.lr_milestones) != len(self.lr_gammas):
            raise ConfigError("lr_milestones and lr_gammas must have the same length")
        if any(not 0 <= m <= 1 for m in self.lr_milestones):
            raise ConfigError(f"lr_milestones are fractions of the run in [0, 1], got {self.lr_milestones}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """A plain (YAML/JSON-serialisable) dict of every field."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> SearchConfig:
        """A validated copy with `changes` applied (same checks as `from_dict`)."""
        return SearchConfig.from_dict({**self.to_dict(), **changes})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SearchConfig:
        """Build and validate a config; unknown keys and ill-typed values raise ConfigError."""
        if not isinstance(values, dict):
            raise ConfigError(f"a config must be a mapping of keys to values, got {type(values).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names), key=str)
        if unknown:
            close = [c for k in unknown for c in difflib.get_close_matches(str(k), names, n=1, cutoff=0.6)]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"unknown config key(s) {', '.join(map(str, unknown))}{hint}; "
                              f"valid keys: {', '.join(names)}")
        hints = typing.get_type_hints(cls)
        return cls(**{k: _coerce(k, v, hints[k]) for k, v in values.items()}).validate()

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> SearchConfig:
        """Load a YAML file, apply `overrides` (None values are ignored), validate."""
        return cls.from_dict({**read_yaml(path), **{k: v for k, v in overrides.items() if v is not None}})

    def save(self, path: str | Path) -> None:
        """Write the config as YAML."""
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from `path` (an empty file is an empty mapping)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML ({what})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text file ({e.reason})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(values).__name__}")
    return values


def config_differences(
    a: SearchConfig, b: SearchConfig, ignore: tuple[str, ...] = RESUMABLE_KEYS
) -> list[str]:
    """Names of the fields that differ between two configs, except `ignore`."""
    da, db = a.to_dict(), b.to_dict()
    return [k for k in da if k not in ignore and da[k] != db[k]]


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(str(value), allowed, n=2, cutoff=0.5)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}{hint}")


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Convert YAML/CLI values to the field's type (YAML reads `1e-4` as a string, for instance)."""
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0]
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name} may not be empty")
    origin = typing.get_origin(hint) or hint
    try:
        if origin is bool:
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
                return value.lower() in ("true", "yes", "1")
            if not isinstance(value, bool):
                raise ValueError
            return value
        if origin is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if origin is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if origin is str:
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise ValueError
            return str(value)
        if origin is dict:
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
        if origin is list:
            if not isinstance(value, list | tuple):
                raise ValueError
            (item,) = typing.get_args(hint)
            return [_coerce(name, v, item) for v in value]
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise ConfigError(f"{name} must be {getattr(hint, '__name__', hint)}, got {value!r}")
