"""Turn a model's convolutions into K-operations, and split parameters into architecture/weights."""

from __future__ import annotations

import copy
import fnmatch
import warnings
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from .kmatrix import KMatrix
from .kop import KOp

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _matches(name: str, patterns: str | Sequence[str] | None) -> bool:
    if patterns is None:
        return False
    if isinstance(patterns, str):
        patterns = [patterns]
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def chrysalize(
    model: nn.Module,
    example_input: torch.Tensor | tuple,
    *,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    types: tuple[type[nn.Module], ...] = CONV_TYPES,
    overrides: dict[str, dict] | None = None,
    **options,
) -> nn.Module:
    """Return a copy of `model` with its convolutions replaced by equal K-operations.

    Each conv's input size is read from one forward pass of `example_input` (a tensor, or a
    tuple of positional arguments) through the copy, in eval mode and without gradients, so the
    original model — its parameters, buffers and BatchNorm statistics — is left untouched.

    Args:
        model: any nn.Module.
        example_input: an input of the size the model will be used with.
        include: fnmatch patterns of module names to convert (default: every conv).
        exclude: fnmatch patterns of module names to leave as they are.
        types: the conv classes to convert (default nn.Conv1d/2d/3d).
        overrides: {pattern: {option: value}} per-layer options, applied in order over `options`
            to every layer whose name matches (e.g. {"conv1": {"depth": 3}}).
        **options: `KOp` options for every converted layer: init, depth, search,
            max_kernel_size, fixed, strategy, generator.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"chrysalize expects an nn.Module, got {type(model).__name__}")
    new = copy.deepcopy(model)
    targets = {
        name: m
        for name, m in new.named_modules()
        if isinstance(m, types) and isinstance(m, CONV_TYPES)
        and (include is None or _matches(name, include)) and not _matches(name, exclude)
    }
    sizes: dict[str, tuple[int, ...]] = {}

    def hook(name):
        def record(module, args):
            size = tuple(args[0].shape[-(module.weight.dim() - 2):])
            if sizes.setdefault(name, size) != size:
                raise ValueError(
                    f"conv {name!r} is called with inputs of sizes {sizes[name]} and {size}; a K-op is "
                    "built for one input size: use a separate conv module per call"
                )
        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in targets.items()]
    was_training = {m: m.training for m in new.modules()}
    new.eval()
    try:
        with torch.no_grad():
            new(*example_input) if isinstance(example_input, tuple) else new(example_input)
    finally:
        for h in handles:
            h.remove()
        for m, t in was_training.items():
            m.training = t

    for name, conv in targets.items():
        if name not in sizes:
            warnings.warn(f"conv {name!r} was not called by the example input; left as a conv", stacklevel=2)
            continue
        layer_options = dict(options)
        for pattern, extra in (overrides or {}).items():
            if fnmatch.fnmatchcase(name, pattern):
                layer_options.update(extra)
        op = KOp.from_conv(conv, sizes[name], **layer_options)
        op.train(conv.training)
        _set_submodule(new, name, op)
    return new


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def arch_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """The architecture parameters: every K-matrix twiddle in `model` (frozen ones included)."""
    seen: set[int] = set()
    for m in model.modules():
        if isinstance(m, KMatrix):
            for p in m.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield p


def weight_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """The model weights: every parameter of `model` that is not an architecture parameter."""
    arch = {id(p) for p in arch_parameters(model)}
    return (p for p in model.parameters() if id(p) not in arch)


def kops(model: nn.Module) -> Iterator[tuple[str, KOp]]:
    """(name, KOp) for every K-operation in `model`."""
    return ((n, m) for n, m in model.named_modules() if isinstance(m, KOp))


@torch.no_grad()
def conv_gains(model: nn.Module, *, samples: int = 4, generator: torch.Generator | None = None) -> dict[str, float]:
    """{layer name: output std of each K-op / that of the conv with the same weights}.

    A searched architecture can amplify or damp (its butterflies need not stay unitary): on
    Gaussian inputs, the std of the op's output (bias left out) against the exact conv's (the
    fixed-FFT twin, same weights). 1 for a K-op at warm start. Fixed K-ops are skipped.
    """
    gains = {}
    for name, op in kops(model):
        if op.fixed:
            continue
        conv = KOp(
            op.in_channels, op.out_channels, op.kernel_size, op.input_size, stride=op.stride, padding=op.padding,
            dilation=op.dilation, groups=op.groups, bias=False, padding_mode=op.padding_mode,
            max_kernel_size=op.max_kernel_size, fixed=True, device=op.weight.device, dtype=op.weight.dtype,
        )
        conv.weight.copy_(op.weight)
        x = torch.randn(samples, op.in_channels, *op.input_size, generator=generator).to(op.weight)
        bias = 0.0 if op.bias is None else op.bias.view(1, -1, *([1] * len(op.input_size)))
        gains[name] = float((op(x) - bias).std() / conv(x).std().clamp_min(1e-30))
    return gains


@torch.no_grad()
def match_conv_gain_(
    model: nn.Module, *, samples: int = 4, generator: torch.Generator | None = None,
    gains: dict[str, float] | None = None,
) -> dict[str, float]:
    """Rescale each K-op's weights so that the op has the output scale of the conv with those weights.

    Freshly initialised weights sized for a convolution blow up or vanish through an operator that
    amplifies or damps (`conv_gains`), and a retrain can diverge. This is the variance-preserving
    init adapted to the found operator. `gains`: already measured by `conv_gains` (else measured
    here). Returns {layer name: factor applied} (1 / gain).
    """
    factors = {}
    modules = dict(kops(model))
    if gains is None:
        gains = conv_gains(model, samples=samples, generator=generator)
    for name, gain in gains.items():
        factor = 1.0 / max(gain, 1e-30)
        modules[name].weight.mul_(factor)
        factors[name] = factor
    return factors
