"""Stand-ins for the search tests: tiny 1x8x8 data whose pixel (0, 0) names its split, a tiny conv net."""

from __future__ import annotations

import json
import types

import torch
from torch import nn

import chrysalis
from chrysalis.search import SearchConfig

TAGS = {"train": 10.0, "val": 20.0, "test": 30.0}  # pixel (0, 0) of every image names its split
SIZES = {"train": 64, "val": 32, "test": 32}


def tiny_dataset(name: str, split: str, **options) -> types.SimpleNamespace:
    g = torch.Generator().manual_seed(list(TAGS).index(split))
    x = torch.randn(SIZES[split], 1, 8, 8, generator=g)
    y = (x[:, 0, 2:6, 2:6].sum((1, 2)) > 0).long() + (x[:, 0, 0, 4] > 1).long()
    x[:, 0, 0, 0] = TAGS[split]
    info = types.SimpleNamespace(name=name, kind="image", input_shape=(1, 8, 8), num_classes=3,
                                 to_dict=lambda: {"name": name, "options": options})
    return types.SimpleNamespace(inputs=x, targets=y, info=info)


SEEN: list[float] = []  # tags of every batch a model saw (forward pre-hook)


def tiny_space(name: str, info, op: str, *, space_options: dict, **kop_options) -> nn.Module:
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Dropout(0.2), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, info.num_classes))
    if op == "kop":
        model = chrysalis.chrysalize(model, torch.zeros(1, 1, 8, 8), **kop_options)
    elif op == "fft":
        model = chrysalis.chrysalize(model, torch.zeros(1, 1, 8, 8), fixed=True, **kop_options)
    model.register_forward_pre_hook(lambda m, args: SEEN.extend(args[0][:, 0, 0, 0].unique().tolist()))
    return model


def cfg(tmp_path, name="run", **kw) -> SearchConfig:
    base = dict(method="joint", op="kop", epochs=2, batch_size=16, out=str(tmp_path / name), quiet=True,
                tensorboard=False, arch_lr=1e-2)
    return SearchConfig(**{**base, **kw}).validate()


def metrics(path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
