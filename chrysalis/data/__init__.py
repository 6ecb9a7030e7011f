"""Datasets for chrysalis: one registry, in-memory tensors, deterministic splits.

>>> from chrysalis.data import get_dataset
>>> ds = get_dataset("permuted-mnist5k", "train", permute_seed=0, pad_to=32)
>>> ds.inputs.shape, ds.info.num_classes          # doctest: +SKIP
(torch.Size([3600, 1, 32, 32]), 10)

See docs/DATA.md for every dataset, its source, sizes, splits and options.
"""

from __future__ import annotations

import difflib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import images, pipeline, text
from .base import (
    ArrayDataset,
    CorruptDataError,
    DataNotFoundError,
    DatasetInfo,
    UnsafePickleError,
    check_split,
    file_stamp,
)
from .images import default_root

__all__ = [
    "ArrayDataset",
    "CorruptDataError",
    "DataNotFoundError",
    "DatasetInfo",
    "UnsafePickleError",
    "clear_cache",
    "default_root",
    "get_dataset",
    "list_datasets",
]


@dataclass(frozen=True)
class _Spec:
    """A base dataset: how to find and read it, and its dataset-specific default options.

    ``locate(root, download) -> path`` finds the data (None for data shipped in a package) and
    ``read(path, stamp, options)`` parses it; ``heldout`` is the size (int) or fraction of the test
    split carved when the data have no official one.
    """

    kind: str
    locate: Callable[[Path, bool], Path | None]
    read: Callable[[Path | None, tuple, dict[str, Any]], Any]
    heldout: int | float = 0.1
    defaults: dict[str, Any] = field(default_factory=dict)


def _shipped(_root: Path, _download: bool) -> None:
    return None


def _idx(name: str) -> _Spec:
    return _Spec(
        "image",
        lambda root, dl: images.locate_idx(name, root, dl),
        lambda path, stamp, o: images.load_idx_dataset(name, path, stamp),
    )


def _cifar(name: str, **defaults: Any) -> _Spec:
    return _Spec(
        "image",
        lambda root, dl: images.locate_cifar(name, root, dl),
        lambda path, stamp, o: images.load_cifar(name, path, o.get("label_mode", "fine"), stamp),
        defaults=defaults,
    )


def _sentences(name: str) -> _Spec:
    return _Spec(
        "text",
        lambda root, dl: text.locate_sentences(name, root),
        lambda path, stamp, o: text.load_sentences(name, path, stamp),
        heldout=0.1,
        defaults={"max_len": 64},
    )


_IMAGE_DEFAULTS: dict[str, Any] = {"pad_to": None}
_TEXT_DEFAULTS: dict[str, Any] = {"max_vocab": None, "min_freq": 1}
_COMMON_DEFAULTS: dict[str, Any] = {"val_fraction": 0.1, "split_seed": 0, "limit": None}
_VARIANT_DEFAULTS: dict[str, dict[str, Any]] = {
    "permuted": {"permute_seed": 0},
    "shuffled": {"permute_seed": 0},
    "spherical": {"grid": 60, "rotation": "NR/NR", "rotation_seed": 0, "train_rotations": 1},
}
ROTATIONS = ("NR/NR", "NR/R", "R/R")

_REGISTRY: dict[str, _Spec] = {
    "mnist5k": _Spec("image", _shipped, lambda p, s, o: images.load_mnist5k(), heldout=1000),
    "digits": _Spec("image", _shipped, lambda p, s, o: images.load_digits8(), heldout=360),
    "mnist": _idx("mnist"),
    "fashion-mnist": _idx("fashion-mnist"),
    "cifar10": _cifar("cifar10"),
    "cifar100": _cifar("cifar100", label_mode="fine"),
    "bbc-news": _Spec(
        "text", _shipped, lambda p, s, o: text.load_bbc_news(), heldout=445, defaults={"max_len": 400}
    ),
    **{name: _sentences(name) for name in text.SENTENCE_SETS},
}
IMAGE_SETS = tuple(n for n, s in _REGISTRY.items() if s.kind == "image")


def list_datasets() -> list[str]:
    """Every name :func:`get_dataset` accepts: the base sets and the image variants."""
    variants = [f"{v}-{n}" for v in _VARIANT_DEFAULTS for n in IMAGE_SETS]
    return sorted(_REGISTRY) + variants


def _parse_name(name: str) -> tuple[str, str | None]:
    if name in _REGISTRY:
        return name, None
    for variant in _VARIANT_DEFAULTS:
        base = name.removeprefix(variant + "-")
        if base != name and base in IMAGE_SETS:
            return base, variant
    close = difflib.get_close_matches(name, list_datasets(), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(f"unknown dataset {name!r}.{hint} Known datasets: {', '.join(list_datasets())}")


def _resolve_options(name: str, spec: _Spec, variant: str | None, given: dict[str, Any]) -> dict[str, Any]:
    options = dict(_COMMON_DEFAULTS)
    options.update(_IMAGE_DEFAULTS if spec.kind == "image" else _TEXT_DEFAULTS)
    options.update(spec.defaults)
    if variant is not None:
        options.update(_VARIANT_DEFAULTS[variant])
    unknown = sorted(set(given) - set(options))
    if unknown:
        raise TypeError(f"{name}: unknown option(s) {unknown}; valid options: {sorted(options)}")
    options.update(given)
    if variant == "spherical":
        options.pop("pad_to")  # the grid defines the size
        if options["rotation"] not in ROTATIONS:
            raise ValueError(f"rotation must be one of {ROTATIONS}, got {options['rotation']!r}")
        copies = options["train_rotations"]
        if not isinstance(copies, int) or isinstance(copies, bool) or copies < 1:
            raise ValueError(f"train_rotations must be an int >= 1, got {copies!r}")
        if copies > 1 and options["rotation"] != "R/R":
            raise ValueError(
                f"train_rotations={copies} rotates the training images, which rotation "
                f"{options['rotation']!r} keeps unrotated; use rotation='R/R' or train_rotations=1"
            )
    for key in ("split_seed", "permute_seed", "rotation_seed", "grid", "max_len", "min_freq"):
        if key in options and not isinstance(options[key], int):
            raise TypeError(f"{name}: option {key} must be an int, got {options[key]!r}")
    if options.get("limit") is not None and options["limit"] < 1:
        raise ValueError(f"limit must be a positive int or None, got {options['limit']}")
    if options.get("label_mode", "fine") not in ("fine", "coarse"):
        raise ValueError(f"label_mode must be 'fine' or 'coarse', got {options['label_mode']!r}")
    return options


# (name, data path, file stamp, options) -> pipeline.Built. A small LRU: a spherical Fashion-MNIST
# is ~1 GB, so only a few configurations are kept.
_CACHE: OrderedDict[tuple, pipeline.Built] = OrderedDict()
_CACHE_SIZE = 6


def clear_cache() -> None:
    """Forget every parsed file and built dataset held in memory."""
    _CACHE.clear()
    for fn in (
        images.load_idx_dataset,
        images.load_cifar,
        images.load_mnist5k,
        images.load_digits8,
        text.load_bbc_news,
        text.load_sentences,
        text.tokenize_all,
    ):
        fn.cache_clear()


def get_dataset(
    name: str, split: str, root: str | Path | None = None, download: bool = False, **options: Any
) -> ArrayDataset:
    """Load ``split`` ("train" | "val" | "test") of dataset ``name`` as in-memory tensors.

    ``root`` is the folder searched for data files (default :func:`default_root`); with
    ``download=True`` missing files are fetched there and checksummed (where a source exists).
    ``options`` (all recorded in ``ds.info.options``):

    * every set: ``val_fraction`` (0.1; validation carved from train, stratified), ``split_seed``
      (0; seeds the val carve, never the test split), ``limit`` (None; at most this many items
      per split, a stratified seeded choice - for quick experiments and tests);
    * images: ``pad_to`` (None; centred zero padding to a square, e.g. 32 for LeNet);
      ``permuted-*``/``shuffled-*``: ``permute_seed`` (0); ``spherical-*``: ``grid`` (60),
      ``rotation`` ("NR/NR" | "NR/R" | "R/R", train/test), ``rotation_seed`` (0),
      ``train_rotations`` (1; with "R/R", k independently rotated copies of each training image);
      ``cifar100``: ``label_mode`` ("fine" | "coarse");
    * text: ``max_len`` (64 for sentences, 400 for bbc-news), ``max_vocab`` (None), ``min_freq`` (1).

    Raises :class:`DataNotFoundError` when files are missing (the message says how to get them),
    :class:`CorruptDataError` (a ``ValueError``) for damaged files, ``ValueError`` for an unknown
    name or split, ``TypeError`` for an unknown option.
    """
    check_split(split)
    base, variant = _parse_name(name)
    spec = _REGISTRY[base]
    resolved = _resolve_options(name, spec, variant, options)
    root_path = Path(root).expanduser().resolve() if root is not None else default_root()
    path = spec.locate(root_path, download)
    stamp = file_stamp(path) if path is not None else ()
    key = (name, str(path), stamp, tuple(sorted((k, repr(v)) for k, v in resolved.items())))
    built = _CACHE.get(key)
    if built is None:
        raw = spec.read(path, stamp, resolved)
        if spec.kind == "image":
            built = pipeline.build_images(name, raw, spec.heldout, variant, resolved)
        else:
            built = pipeline.build_text(name, raw, spec.heldout, resolved)
        _CACHE[key] = built
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(key)
    inputs, targets = built.tensors[split]
    return ArrayDataset(inputs, targets, built.info, split, indices=built.indices[split], **built.extras)
