"""From parsed files to the three split tensors: held-out test, validation, limit, transforms,
normalisation (images) or vocabulary and ids (text).

The result of :func:`build` is cached per (dataset, root, options), so asking for train, val and
test of one configuration does the work once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import sphere, transforms
from .base import DatasetInfo, stratified_holdout
from .images import RawImages
from .text import RawText, build_vocab, encode, tokenize_all

# Seed of the held-out test carved from sets without an official test split. It is a constant,
# independent of ``split_seed``, so no choice made during a search can move an item into test.
HELDOUT_SEED = 20140825


@dataclass(frozen=True)
class Built:
    """The cached result: tensors per split, the info, per-dataset extras, and for each split the
    positions of its items in the part of the source files they come from."""

    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    info: DatasetInfo
    extras: dict[str, Any]
    indices: dict[str, torch.Tensor]


@dataclass(frozen=True)
class Pools:
    """Index arrays into a source array for each split, plus which source each split reads."""

    source: dict[str, int]  # split -> 0 (the file's train part) or 1 (its official test part)
    index: dict[str, np.ndarray]


def make_pools(
    train_y: np.ndarray,
    test_y: np.ndarray | None,
    heldout: int | float,
    val_fraction: float,
    split_seed: int,
    limit: int | None,
    val_y: np.ndarray | None = None,
) -> Pools:
    """Decide which items go to train / val / test.

    * test: the official test part if there is one, else ``heldout`` items (an int, or a fraction
      of the data) carved from the train part, stratified, with :data:`HELDOUT_SEED`;
    * val: the official dev part if given (``val_y``), else ``round(val_fraction * n)`` of the
      remaining training items, stratified, seeded with ``split_seed``;
    * ``limit``: each split is cut to at most ``limit`` items by a stratified, seeded choice.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(train_y)
    if test_y is None:
        n_test = heldout if isinstance(heldout, int) else round(heldout * n)
        pool, test_idx = stratified_holdout(train_y, n_test, HELDOUT_SEED)
        source = {"train": 0, "val": 0, "test": 0}
    else:
        pool, test_idx = np.arange(n), np.arange(len(test_y))
        source = {"train": 0, "val": 0, "test": 1}
    if val_y is not None:
        train_idx, val_idx = pool, np.arange(len(val_y))
        source["val"] = 2
    else:
        keep, held = stratified_holdout(train_y[pool], round(val_fraction * len(pool)), split_seed)
        train_idx, val_idx = pool[keep], pool[held]
    index = {"train": train_idx, "val": val_idx, "test": test_idx}
    if limit is not None:
        labels = {0: train_y, 1: test_y, 2: val_y}
        for split, idx in index.items():
            if len(idx) > limit:
                _, chosen = stratified_holdout(labels[source[split]][idx], limit, split_seed)
                index[split] = idx[chosen]
    return Pools(source, index)


def _indices(pools: Pools) -> dict[str, torch.Tensor]:
    return {s: torch.from_numpy(np.asarray(i, dtype=np.int64)) for s, i in pools.index.items()}


# ----------------------------------------------------------------------------------- images


def channel_stats(x: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (population) std of ``(N, C, H, W)`` images, in float64, chunked so
    no full-size copy is made.

    For integer images the sums are exact int64 sums, which do not depend on the order of the
    pixels: a permuted dataset gets exactly the same statistics (to the last bit) as the
    original, so undoing the permutation recovers the original normalised images exactly.
    """
    c = x.shape[1]
    exact = not x.dtype.is_floating_point
    acc = torch.int64 if exact else torch.float64
    s1, s2 = torch.zeros(c, dtype=acc), torch.zeros(c, dtype=acc)
    for start in range(0, x.shape[0], chunk):
        block = x[start : start + chunk].to(acc)
        s1 += block.sum(dim=(0, 2, 3))
        s2 += (block * block).sum(dim=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    if count == 0:
        return torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)
    mean = s1.double() / count
    std = (s2.double() / count - mean**2).clamp_min(0).sqrt()
    return mean, std


def _rotations(rotation_seed: int, source: int, copy: int, count: int) -> torch.Tensor:
    """The random rotations of every item of a source part, ``(count, 3, 3)``.

    Drawn for every item of the source array (then indexed by the caller): the rotation of an
    image depends only on ``rotation_seed``, its source part, its index there and, for the extra
    training copies of ``train_rotations``, the copy number. Copy 0 is the dataset's one rotation.
    """
    seed = 2 * rotation_seed + source
    if copy:  # an independent stream per extra copy, never one of copy 0's seeds
        seed = int(np.random.SeedSequence([rotation_seed, source, copy]).generate_state(1)[0]) | (1 << 40)
    return sphere.random_rotations(count, generator=torch.Generator().manual_seed(seed))


def build_images(
    name: str,
    raw: RawImages,
    heldout: int | float,
    variant: str | None,
    options: dict[str, Any],
) -> Built:
    """Split, pad, apply the variant and normalise an image set.

    Order: uint8 pixels -> ``pad_to`` (zeros, i.e. background) -> permutation/shuffle (still
    uint8, exact) or spherical projection (of pixels scaled to [0, 1]) -> per-channel
    normalisation with the mean/std of the *train* split (after the val carve) of that final
    representation. ``train_rotations`` (spherical R/R only) = k puts k independently rotated
    copies of each training image into the train split (rotation augmentation, done once).
    """
    pools = make_pools(
        raw.train_y, raw.test_y, heldout, options["val_fraction"], options["split_seed"], options.get("limit")
    )
    xs = {0: raw.train_x, 1: raw.test_x}
    ys = {0: raw.train_y, 1: raw.test_y}
    splits = {}
    for split, idx in pools.index.items():
        src = pools.source[split]
        splits[split] = (torch.from_numpy(xs[src][idx]), torch.from_numpy(ys[src][idx]))

    if variant == "spherical":
        rotate = {"NR/NR": (), "NR/R": ("test",), "R/R": ("train", "val", "test")}[options["rotation"]]
        copies = options.get("train_rotations", 1)
        for split, (x, y) in splits.items():
            planar = x.to(torch.float32) / raw.max_value
            if split not in rotate:
                splits[split] = (sphere.project(planar, options["grid"]), y)
                continue
            src, idx = pools.source[split], torch.from_numpy(pools.index[split])
            views = []
            for copy in range(copies if split == "train" else 1):
                rotations = _rotations(options["rotation_seed"], src, copy, len(ys[src]))[idx]
                views.append(sphere.project(planar, options["grid"], rotations))
            splits[split] = (torch.cat(views), y.repeat(len(views)))
        if copies > 1:  # item k * N + i is copy k of training image i
            pools.index["train"] = np.tile(pools.index["train"], copies)
        mean, std = channel_stats(splits["train"][0])  # in units of the [0, 1] planar pixels
    else:
        if options.get("pad_to") is not None:
            splits = {s: (transforms.pad_to(x, options["pad_to"]), y) for s, (x, y) in splits.items()}
        h, w = splits["train"][0].shape[-2:]
        if variant == "permuted":
            rows, cols = transforms.axis_permutations(h, w, options["permute_seed"])
            splits = {s: (transforms.permute_axes(x, rows, cols), y) for s, (x, y) in splits.items()}
        elif variant == "shuffled":
            perm = transforms.pixel_permutation(h, w, options["permute_seed"])
            splits = {s: (transforms.shuffle_pixels(x, perm), y) for s, (x, y) in splits.items()}
        mean, std = channel_stats(splits["train"][0])  # exact, in raw pixel units
        mean, std = mean / raw.max_value, std / raw.max_value
        splits = {s: (x.to(torch.float32).div_(raw.max_value), y) for s, (x, y) in splits.items()}

    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant channel stays at 0
    m32 = mean.to(torch.float32).view(1, -1, 1, 1)
    s32 = std.to(torch.float32).view(1, -1, 1, 1)
    # In place: every tensor here is a fresh float32 copy (a projection or a dtype conversion).
    tensors = {s: (x.sub_(m32).div_(s32).contiguous(), y.to(torch.int64)) for s, (x, y) in splits.items()}
    info = DatasetInfo(
        name=name,
        kind="image",
        input_shape=tuple(tensors["train"][0].shape[1:]),
        num_classes=len(raw.class_names),
        vocab_size=None,
        class_names=raw.class_names,
        options=dict(options),
    )
    normalization = {"mean": mean.tolist(), "std": std.tolist(), "scale": raw.max_value}
    return Built(tensors, info, {"normalization": normalization}, _indices(pools))


# ------------------------------------------------------------------------------------- text


def build_text(name: str, raw: RawText, heldout: int | float, options: dict[str, Any]) -> Built:
    """Split, tokenise, build the vocabulary on the train split only, and encode every split."""
    pools = make_pools(
        raw.train_y,
        raw.test_y,
        heldout,
        options["val_fraction"],
        options["split_seed"],
        options.get("limit"),
        val_y=raw.val_y,
    )
    texts = {0: raw.train_texts, 1: raw.test_texts, 2: raw.val_texts}
    ys = {0: raw.train_y, 1: raw.test_y, 2: raw.val_y}
    tokens, labels = {}, {}
    for split, idx in pools.index.items():
        src = pools.source[split]
        corpus = tokenize_all(texts[src])
        tokens[split] = [corpus[i] for i in idx]
        labels[split] = torch.from_numpy(ys[src][idx])
    vocab = build_vocab(tokens["train"], options["max_vocab"], options["min_freq"])
    tensors = {s: (torch.from_numpy(encode(tokens[s], vocab, options["max_len"])), labels[s]) for s in tokens}
    info = DatasetInfo(
        name=name,
        kind="text",
        input_shape=(options["max_len"],),
        num_classes=len(raw.class_names),
        vocab_size=len(vocab),
        class_names=raw.class_names,
        options=dict(options),
    )
    return Built(tensors, info, {"vocab": vocab}, _indices(pools))
