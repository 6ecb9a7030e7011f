"""Search spaces: plain conv backbones, and the factory that turns their convs into K-ops.

    from chrysalis.spaces import create_space
    net = create_space("lenet", info, op="kop", init="conv", depth=3)

A *space* is a builder `builder(info, **space_options) -> nn.Module` that returns an ordinary
model with `nn.Conv{1,2,3}d` layers for a dataset's `info` (duck-typed: `kind`, `input_shape`,
`num_classes`, `vocab_size`). `create_space` builds it and, for op="kop"/"fft", passes it through
`chrysalis.chrysalize` with an example input made from `info.input_shape`. Register your own with
`@register_space("name")`, or name it by import path: `create_space("pkg.module:build", info)`.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .kimcnn import KimCNN, build_kimcnn
from .lenet import LeNet, build_lenet
from .resnet import CifarResNet, build_resnet20
from .spherical import SphericalCNN, build_spherical

Builder = Callable[..., nn.Module]
OPS = ("conv", "kop", "fft")

_BUILDERS: dict[str, Builder] = {}
_ALIASES: dict[str, str] = {}  # alias -> canonical name


def _key(name: str) -> str:
    return name.strip().lower()


def register_space(
    name: str, *, aliases: tuple[str, ...] = (), overwrite: bool = False
) -> Callable[[Builder], Builder]:
    """Decorator: register `builder(info, **space_options) -> nn.Module` under `name` (and `aliases`).

    Names are case-insensitive and may not contain ":" (reserved for import paths). Registering a
    taken name raises ValueError unless `overwrite=True`. Returns the builder unchanged.
    """
    names = [_key(name), *(_key(a) for a in aliases)]
    for n in names:
        if not n or ":" in n:
            raise ValueError(f"space names must be non-empty and contain no ':', got {n!r}")
        if not overwrite and (n in _BUILDERS or n in _ALIASES):
            raise ValueError(f"space {n!r} is already registered; pass overwrite=True to replace it")

    def decorator(builder: Builder) -> Builder:
        if not callable(builder):
            raise TypeError(f"register_space expects a callable builder, got {builder!r}")
        for n in names:  # a name reused with overwrite=True drops its old meaning
            _BUILDERS.pop(n, None)
            _ALIASES.pop(n, None)
        _BUILDERS[names[0]] = builder
        for a in names[1:]:
            _ALIASES[a] = names[0]
        return builder

    return decorator


def list_spaces(*, aliases: bool = False) -> list[str]:
    """The registered space names, sorted (with their aliases too if `aliases`)."""
    return sorted([*_BUILDERS, *(_ALIASES if aliases else ())])


def get_builder(name: str) -> Builder:
    """The builder for a registered name/alias or a "module.path:function" import path."""
    if not isinstance(name, str):
        raise TypeError(f"space name must be a str, got {type(name).__name__}")
    if ":" in name:
        return _import_builder(name)
    key = _ALIASES.get(_key(name), _key(name))
    if key not in _BUILDERS:
        known = list_spaces(aliases=True)
        close = difflib.get_close_matches(_key(name), known, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"unknown space {name!r}.{hint} Known spaces: {', '.join(known)}; or register one with "
            "@chrysalis.spaces.register_space, or give an import path 'package.module:builder'."
        )
    return _BUILDERS[key]


def _import_builder(path: str) -> Builder:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"an import path must look like 'package.module:builder', got {path!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import module {module_name!r} for space {path!r}: {e}") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module {module_name!r} has no attribute {attr!r} (space {path!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"space {path!r} is not callable")
    return obj


def example_input(info: Any, batch: int = 2) -> torch.Tensor:
    """An input batch shaped like `info.input_shape`: float zeros for images, int64 token ids for text.

    Text gets token id 1 everywhere (0 is padding), or 0 for a vocabulary of one.
    """
    shape = (batch, *(int(s) for s in info.input_shape))
    if getattr(info, "kind", "image") == "text":
        token = 1 if (getattr(info, "vocab_size", None) or 0) > 1 else 0
        return torch.full(shape, token, dtype=torch.long)
    return torch.zeros(shape)


def _kop_option_names() -> set[str]:
    """Every keyword `chrysalize` accepts (its own and KOp's construction options)."""
    from ..chrysalize import chrysalize
    from ..kop import KOp

    names = {p.name for p in inspect.signature(chrysalize).parameters.values() if p.kind is p.KEYWORD_ONLY}
    names |= {p.name for p in inspect.signature(KOp.__init__).parameters.values() if p.kind is p.KEYWORD_ONLY}
    conv_settings = {"stride", "padding", "dilation", "groups", "bias", "padding_mode"}  # from the conv
    return names - conv_settings


def create_space(
    name: str,
    info: Any,
    op: str = "conv",
    *,
    space_options: dict[str, Any] | None = None,
    **kop_options: Any,
) -> nn.Module:
    """Build the backbone `name` for dataset `info`, with its convs as convs, K-ops or FFT convs.

    Args:
        name: a registered space (`list_spaces()`: lenet/butterflenet, kimcnn, spherical,
            resnet20, and user ones) or an import path "package.module:builder".
        info: the dataset's info (a `chrysalis.data.DatasetInfo` or anything with `kind`,
            `input_shape`, `num_classes`, `vocab_size`).
        op: "conv" (the backbone as is), "kop" (every conv a K-op, via `chrysalis.chrysalize`)
            or "fft" (every conv the exact FFT convolution: K-op with fixed=True).
        space_options: keyword arguments for the builder (e.g. {"embed_dim": 128} for kimcnn,
            {"shortcut": "B"} for resnet20).
        **kop_options: options for `chrysalize`/`KOp` (include, exclude, overrides, init, depth,
            search, max_kernel_size, strategy, generator); only with op="kop"/"fft".

    Does not seed: call `torch.manual_seed` first for reproducible weights. With init="conv" the
    K-op model computes exactly what the conv model built from the same seed computes.
    """
    if op not in OPS:
        close = difflib.get_close_matches(str(op), OPS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"op must be one of {OPS}, got {op!r}{hint}")
    builder = get_builder(name)
    if op == "conv" and kop_options:
        raise ValueError(f"K-op options {sorted(kop_options)} need op='kop' or op='fft', not op='conv'")
    if "fixed" in kop_options:
        raise ValueError("pass op='fft' (or op='kop') instead of fixed=...")
    unknown = set(kop_options) - _kop_option_names()
    if unknown:
        raise ValueError(
            f"unknown K-op options {sorted(unknown)}; backbone options go in space_options={{...}}"
        )
    model = builder(info, **(space_options or {}))
    if not isinstance(model, nn.Module):
        raise TypeError(f"space {name!r} returned {type(model).__name__}, not an nn.Module")
    if op == "conv":
        return model
    from ..chrysalize import chrysalize

    if op == "fft":
        kop_options["fixed"] = True
    return chrysalize(model, example_input(info), **kop_options)


register_space("lenet", aliases=("butterflenet",))(build_lenet)
register_space("kimcnn")(build_kimcnn)
register_space("spherical")(build_spherical)
register_space("resnet20")(build_resnet20)

__all__ = [
    "OPS",
    "CifarResNet",
    "KimCNN",
    "LeNet",
    "SphericalCNN",
    "create_space",
    "example_input",
    "get_builder",
    "list_spaces",
    "register_space",
]
