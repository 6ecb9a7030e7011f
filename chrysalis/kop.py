"""The K-operation: a learnable linear operation that contains the convolution.

    K-op(w)(x) = Re( K_out . diag(L . w) . K_in . x )            (one spatial axis)

With K_in = L = F (DFT) and K_out = F^-1 this is a circular convolution; zero-padding the input
to a power of two n (enough that nothing wraps around where the output is read) and cropping
makes it exactly the linear `nn.ConvNd`. N-d: every spatial axis has its own three K-matrices
and the op is their tensor product, applied axis by axis. Channels: the same K-matrices serve
every channel pair; the diagonal becomes a small complex (C_in x C_out) product per frequency.

Every setting of a conv is a fixed linear map around the search space, never a special case in it:
- padding (zeros): the input sits in the first H of n positions, so K_in only needs its first H
  columns; other padding modes pad the input explicitly first (as nn.ConvNd does).
- kernel size / dilation: tap t of the filter sits at offset o_t = (t - c) * dilation; the filter
  vector handed to L has w[t] at position (-o_t) mod n (the "flip and roll" that turns PyTorch's
  cross-correlation into a circular convolution), so L only needs those columns.
- stride / cropping: the output of K_out is read at rows (i * stride - pad_left) mod n.
Three strategies compute the same thing: "dense" materialises each K-matrix (n x n) and applies
the sliced matrices as real matrix products (fast for small n; the GEMM machinery and its
hand-written backward live in `chrysalis/dense.py`), "butterfly" applies them factor by factor
(O(n log n), for large n), and `fixed=True` is the exact FFT convolution with no architecture.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import dense
from .dense import DenseChain, Relayout, gemm, realify, run_stage
from .kmatrix import KMatrix

PADDING_MODES = ("zeros", "circular", "reflect", "replicate")
KMATRIX_NAMES = ("K_in", "L", "K_out")
STRATEGIES = ("auto", "dense", "butterfly")
DENSE_MAX_N = 256  # "auto" materialises K-matrices up to this size (see docs/PERFORMANCE.md)
FIXED_GEMM_MAX_N = 64  # fixed=True: GEMM-DFT up to this transform size, torch.fft above


def _tuple(value, dims: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * dims
    try:
        out = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a sequence of {dims} ints, got {value!r}") from None
    if isinstance(value, str) or not all(isinstance(v, int) and not isinstance(v, bool) for v in out):
        raise TypeError(f"{name} must be an int or a sequence of {dims} ints, got {value!r}")
    if len(out) != dims:
        raise ValueError(f"{name} must have {dims} entries (one per spatial axis), got {value!r}")
    return out


def _next_pow2(x: int) -> int:
    return 1 << max(1, math.ceil(math.log2(max(x, 2))))


def _fixed_size(x: int) -> int:
    """Transform size of the fixed (exact FFT) op for a safe circular length x.

    No K-matrix needs a power of two there, so: x itself if the GEMM-DFT takes it (its cost is
    O(n^2) per axis, so a ResNet 3x3 layer on 32x32 pays for 33^2, not 64^2, frequencies), else
    the next 5-smooth length, on which pocketfft is fast.
    """
    if x <= FIXED_GEMM_MAX_N:
        return max(x, 2)
    n = x
    while True:
        m = n
        for f in (2, 3, 5):
            while m % f == 0:
                m //= f
        if m == 1:
            return n
        n += 1


@dataclass(frozen=True)
class AxisPlan:
    """Where a conv's data and filter sit along one spatial axis inside the length-n transform."""

    size: int  # input length after any explicit (non-zero) padding
    n: int  # transform size: a power of two (K-matrices); any safe size for the fixed op
    out: int  # output length, as nn.ConvNd returns it
    in_cols: tuple[int, ...]  # columns of K_in the input occupies: 0 .. size-1
    tap_cols: tuple[int, ...]  # columns of L holding filter taps: (-o_t) mod n
    out_rows: tuple[int, ...]  # rows of K_out that are read: (i*stride - pad_left) mod n

    @staticmethod
    def make(size: int, kernel: int, max_kernel: int, stride: int, dilation: int, pad: tuple[int, int],
             fixed: bool = False):
        left, right = pad
        span = dilation * (kernel - 1) + 1
        if size + left + right < span:
            raise ValueError(
                f"kernel (extent {span} with dilation {dilation}) is larger than the padded input "
                f"({size} + padding {left}+{right})"
            )
        out = (size + left + right - span) // stride + 1
        c = (max_kernel - kernel) // 2  # the conv's taps sit in the middle of the larger support
        offsets = [(t - c) * dilation for t in range(max_kernel)]
        # Input positions read: q = i*stride - left + o. Negative q must wrap into the zero region
        # (n + q >= size) and no q may wrap past n: that fixes the smallest safe transform size.
        q_min = -left + offsets[0]
        q_max = (out - 1) * stride - left + offsets[-1]
        safe = max(q_max + 1, size - min(q_min, 0), size)
        n = _fixed_size(safe) if fixed else _next_pow2(safe)
        return AxisPlan(
            size=size,
            n=n,
            out=out,
            in_cols=tuple(range(size)),
            tap_cols=tuple((-o) % n for o in offsets),
            out_rows=tuple((i * stride - left) % n for i in range(out)),
        )


def _pad_axis(t: torch.Tensor, axis: int, n: int) -> torch.Tensor:
    """Zero-pad `t` at the end of `axis` to length n."""
    pad = [0, 0] * (t.dim() - 1 - axis) + [0, n - t.shape[axis]]
    return F.pad(t, pad)


class KOp(nn.Module):
    """A K-operation: a drop-in, searchable generalisation of `nn.Conv{1,2,3}d`.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
        padding_mode: as in `nn.ConvNd` (padding may be an int, a tuple, "same" or "valid").
        input_size: spatial size of the input (one int per axis); its length sets the dimension
            (1-D, 2-D, 3-D). The op is built for this size and refuses any other.
        init: "conv" (warm start: K_in = L = DFT, K_out = inverse DFT, so the op *is* the conv)
            or "random" (Haar-random unitary butterflies; L scaled by sqrt(n) per axis to keep
            the conv's output scale): the architecture, never the weights.
        depth: butterflies per K-matrix (>= 1); extra ones start as the identity under "conv".
        max_kernel_size: filter support per axis (>= kernel_size). The conv's kernel sits in the
            middle and the new taps start at zero, so the search can grow the kernel.
        fixed: no architecture at all: the exact FFT convolution (a baseline): a GEMM-DFT for
            transform sizes <= FIXED_GEMM_MAX_N, torch.fft above; its transform size is the
            smallest safe one, not a power of two (no K-matrix constrains it).
        search: which of "K_in", "L", "K_out" are searched; the others are frozen
            (requires_grad=False).
        strategy: "dense" (materialise K-matrices, matrix products), "butterfly" (factor by
            factor) or "auto" (dense for n <= DENSE_MAX_N). All compute the same op.
        generator: torch.Generator for the random architecture and weight init.
        device, dtype: as for nn.ConvNd (float64 builds exact float64 K-matrices).

    Parameters: `weight` (out, in/groups, *max_kernel_size), `bias` (out,) — the model weights;
    `K_in`, `L`, `K_out`: one KMatrix per spatial axis each (nn.ModuleList) — the architecture.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        input_size: int | Sequence[int],
        *,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        init: str = "conv",
        depth: int = 1,
        max_kernel_size: int | Sequence[int] | None = None,
        fixed: bool = False,
        search: Sequence[str] = KMATRIX_NAMES,
        strategy: str = "auto",
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if isinstance(input_size, str) or not isinstance(input_size, int | Sequence):
            raise TypeError(f"input_size must be an int or a sequence of ints, got {input_size!r}")
        input_size = (input_size,) if isinstance(input_size, int) else tuple(input_size)
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in input_size):
            raise TypeError(f"input_size must be an int or a sequence of ints, got {input_size!r}")
        dims = len(input_size)
        if dims not in (1, 2, 3):
            raise ValueError(f"input_size must have 1, 2 or 3 entries (spatial axes), got {input_size!r}")
        if any(s < 1 for s in input_size):
            raise ValueError(f"input_size must be positive, got {input_size!r}")
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
            raise ValueError(f"depth must be an int >= 1, got {depth!r}")
        for name, v in (("bias", bias), ("fixed", fixed)):
            if not isinstance(v, bool):
                raise TypeError(f"{name} must be True or False, got {v!r}")
        if isinstance(search, str):
            raise TypeError(f"search must be a sequence of K-matrix names such as ({search!r},), not a string")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible "
                f"by groups ({groups})"
            )
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        if init not in ("conv", "random"):
            raise ValueError(f"init must be 'conv' or 'random', got {init!r}")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        unknown = set(search) - set(KMATRIX_NAMES)
        if unknown:
            raise ValueError(f"search names unknown K-matrices {sorted(unknown)}; choose from {KMATRIX_NAMES}")
        kernel = _tuple(kernel_size, dims, "kernel_size")
        stride_t = _tuple(stride, dims, "stride")
        dilation_t = _tuple(dilation, dims, "dilation")
        max_kernel = kernel if max_kernel_size is None else _tuple(max_kernel_size, dims, "max_kernel_size")
        for name, t in (("kernel_size", kernel), ("stride", stride_t), ("dilation", dilation_t)):
            if any(v < 1 for v in t):
                raise ValueError(f"{name} must be >= 1, got {t}")
        if any(mk < k for mk, k in zip(max_kernel, kernel)):
            raise ValueError(f"max_kernel_size {max_kernel} must be >= kernel_size {kernel}")
        pads = self._resolve_padding(padding, kernel, stride_t, dilation_t, dims)
        if padding_mode == "reflect" and any(max(p) >= s for p, s in zip(pads, input_size)):
            raise ValueError(f"reflect padding {pads} must be smaller than the input size {input_size}")

        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.input_size, self.kernel_size, self.max_kernel_size = input_size, kernel, max_kernel
        self.stride, self.dilation, self.padding, self.padding_mode = stride_t, dilation_t, padding, padding_mode
        self.init, self.depth, self.fixed, self.strategy = init, depth, fixed, strategy
        self.search = tuple(n for n in KMATRIX_NAMES if n in search)
        # Non-zero padding modes pad explicitly (like nn.ConvNd); zero padding stays implicit.
        self._explicit_pad = padding_mode != "zeros"
        self._pads = pads
        axis_pads = [(0, 0)] * dims if self._explicit_pad else pads
        sizes = [s + (sum(p) if self._explicit_pad else 0) for s, p in zip(input_size, pads)]
        self.plans = [
            AxisPlan.make(sz, k, mk, st, dl, p, fixed)
            for sz, k, mk, st, dl, p in zip(sizes, kernel, max_kernel, stride_t, dilation_t, axis_pads)
        ]
        self.output_size = tuple(p.out for p in self.plans)

        factory = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *max_kernel, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self._reset_weights(generator)
        if fixed:
            self.K_in = self.L = self.K_out = None
        else:
            kinit = "random" if init == "random" else None
            kw = dict(generator=generator, **factory)
            self.K_in = nn.ModuleList(KMatrix(p.n, depth, kinit or "fft", **kw) for p in self.plans)
            self.L = nn.ModuleList(KMatrix(p.n, depth, kinit or "fft", gain=math.sqrt(p.n), **kw) for p in self.plans)
            self.K_out = nn.ModuleList(
                KMatrix(p.n, depth, kinit or "ifft", increasing=True, **kw) for p in self.plans
            )
            for name in KMATRIX_NAMES:
                getattr(self, name).requires_grad_(name in self.search)
        for a, p in enumerate(self.plans):  # index tensors follow .to(device); derived, not saved
            self.register_buffer(f"_in_cols{a}", torch.tensor(p.in_cols), persistent=False)
            self.register_buffer(f"_tap_cols{a}", torch.tensor(p.tap_cols), persistent=False)
            self.register_buffer(f"_out_rows{a}", torch.tensor(p.out_rows), persistent=False)

    # -- construction helpers ---------------------------------------------------------------
    @staticmethod
    def _resolve_padding(padding, kernel, stride, dilation, dims) -> list[tuple[int, int]]:
        if isinstance(padding, str):
            if padding == "valid":
                return [(0, 0)] * dims
            if padding != "same":
                raise ValueError(f"padding must be an int, a tuple, 'same' or 'valid', got {padding!r}")
            if any(s != 1 for s in stride):
                raise ValueError("padding='same' is not supported for strided convolutions (as in nn.ConvNd)")
            # As nn.ConvNd: total d*(k-1), the odd one out on the right.
            return [(d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(kernel, dilation)]
        pad = _tuple(padding, dims, "padding")
        if any(p < 0 for p in pad):
            raise ValueError(f"padding must be >= 0, got {pad}")
        return [(p, p) for p in pad]

    def _reset_weights(self, generator: torch.Generator | None) -> None:
        # nn.ConvNd's default init, on the conv's own kernel; taps beyond it start at zero.
        fan_in = (self.in_channels // self.groups) * math.prod(self.kernel_size)
        bound = 1 / math.sqrt(fan_in)  # = kaiming_uniform_(a=sqrt(5)) as in nn.ConvNd
        with torch.no_grad():
            self.weight.zero_()
            core = torch.rand(self.weight[self._core_slice()].shape, generator=generator) * 2 - 1
            self.weight[self._core_slice()] = core.to(self.weight) * bound
            if self.bias is not None:
                self.bias.copy_((torch.rand(self.out_channels, generator=generator) * 2 - 1) * bound)

    def _core_slice(self) -> tuple[slice, ...]:
        """Index of the conv's own kernel inside `weight` (the middle of max_kernel_size)."""
        return (slice(None), slice(None)) + tuple(
            slice((mk - k) // 2, (mk - k) // 2 + k) for k, mk in zip(self.kernel_size, self.max_kernel_size)
        )

    @classmethod
    def from_conv(cls, conv: nn.Module, input_size: int | Sequence[int], **options) -> KOp:
        """An exact copy of `conv` (an nn.Conv1d/2d/3d) as a K-op built for `input_size`."""
        if not isinstance(conv, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            raise TypeError(f"from_conv expects nn.Conv1d/2d/3d, got {type(conv).__name__}")
        dims = conv.weight.dim() - 2
        input_size = (input_size,) * dims if isinstance(input_size, int) else tuple(input_size)
        if len(input_size) != dims:
            raise ValueError(f"{type(conv).__name__} needs {dims} spatial sizes, got input_size={input_size}")
        op = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, input_size,
            stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
            bias=conv.bias is not None, padding_mode=conv.padding_mode,
            device=conv.weight.device, dtype=conv.weight.dtype, **options,
        )
        with torch.no_grad():
            op.weight.zero_()
            op.weight[op._core_slice()] = conv.weight
            if conv.bias is not None:
                op.bias.copy_(conv.bias)
        return op

    # -- the operation ------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        if not (x.is_floating_point() or x.is_complex()):
            raise TypeError(f"KOp expects a floating-point input, got dtype {x.dtype}")
        dims = len(self.input_size)
        if x.dim() == dims + 1:  # unbatched, as nn.ConvNd accepts
            return self._check_input(x.unsqueeze(0))
        if x.dim() != dims + 2:
            raise ValueError(
                f"KOp built for {dims}-D input expects (batch, channels, *{self.input_size}), "
                f"got a tensor of shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(f"KOp expects {self.in_channels} input channels, got {x.shape[1]}")
        if tuple(x.shape[2:]) != self.input_size:
            raise ValueError(
                f"KOp was built for input size {self.input_size}, got {tuple(x.shape[2:])}; "
                "build a new op (or chrysalize again) for this size"
            )
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"KOp expects a torch.Tensor, got {type(x).__name__}")
        unbatched = x.dim() == len(self.input_size) + 1
        x = self._check_input(x)
        if self._explicit_pad:
            # F.pad takes (last axis left, right, previous axis left, right, ...).
            x = F.pad(x, [p for lr in reversed(self._pads) for p in lr], mode=self.padding_mode)
        if self.fixed:
            use_gemm = max(p.n for p in self.plans) <= FIXED_GEMM_MAX_N and not x.is_complex()
            y = self._forward_dense(x, fixed=True) if use_gemm else self._forward_fft(x)
        else:
            y = self._forward_kop(x)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, *([1] * len(self.input_size)))
        return y.squeeze(0) if unbatched else y

    def _use_dense(self) -> bool:
        if self.strategy != "auto":
            return self.strategy == "dense"
        return max(p.n for p in self.plans) <= DENSE_MAX_N

    # Layout: inside the op, data are (*spatial, B, C) and filters (*spatial, C/g, O): every
    # per-axis transform is then one (batched) GEMM with no permute, and the frequencies come out
    # first, ready for the per-frequency channel mixing as a single batched matmul.
    def _forward_kop(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_dense():
            return self._forward_dense(x)
        d = len(self.plans)
        cdtype = self.K_in[0].blocks().dtype
        y = x.permute(*range(2, 2 + d), 0, 1).to(cdtype)  # (*size, B, C)
        w = self.weight.permute(*range(2, 2 + d), 1, 0).to(cdtype)  # (*taps, C/g, O)
        for a, p in enumerate(self.plans):  # zero-pad / place taps into length n, factor by factor
            y = self.K_in[a](_pad_axis(y, a, p.n), dim=a)
            w = self.L[a](self._scatter_taps(w, a), dim=a)
        z = self._mix(y, w)  # (*n, B, O)
        for a in range(d):
            z = self.K_out[a](z, dim=a).index_select(a, getattr(self, f"_out_rows{a}"))
        return z.real.permute(d, d + 1, *range(d))  # (B, O, *out)

    def _forward_dense(self, x: torch.Tensor, fixed: bool = False) -> torch.Tensor:
        """K-matrices materialised, sliced to the columns/rows that matter, applied as real GEMMs.

        No complex tensor is ever formed for the data. A complex tensor is carried as a real one
        whose re/im axis (size 2) sits right next to the spatial axis being transformed, so that
        (axis, re/im) is one contiguous index and a complex p x q matrix becomes one real
        2p x 2q matrix ([[Re, -Im], [Im, Re]], rows/columns ordered to match): every transform
        is a single (batched) real GEMM on a view, with no permute, no interleave and no
        conjugate copies in backward. Layout: data (*spatial, [2,] C, B), filters
        (*spatial, [2,] O, C/g); the real input needs only [Re; Im] rows (half a complex GEMM)
        and only the real part of the output is computed (half again).

        fixed=True: the same machinery with the exact DFT as constant matrices (the GEMM-DFT
        route of the fixed-FFT op), keeping only the n/2+1 non-redundant frequencies of the first
        axis (the spectrum of a real signal is Hermitian), as rfft does.
        """
        d = len(self.plans)
        g = self.groups
        form = dense.mix_form(self.out_channels // g, self.in_channels // g, x.shape[0])
        mats, wblk = self._dense_operands(fixed, form)
        k_in, k_out = mats[:d], mats[2 * d :]
        y = Relayout.apply(x.to(k_in[0].dtype), True)  # (*size, C, B), real
        # axis a (after a re/im axis if a > 0) -> (n_a, re/im); mixing -> (*n, 2, O, B); then
        # (n_a, re/im) -> (re/im, out_a), the last keeping Re only.
        plan = [("gemm", a, a, a + 1 + bool(a), (k_in[a].shape[0] // 2, 2)) for a in range(d)] + [("mix",)]
        plan += [
            ("gemm", 2 * d + a, a, a + 2, (2, k_out[a].shape[0] // 2) if a else (k_out[a].shape[0],))
            for a in range(d - 1, -1, -1)
        ]
        # DENSE_RECOMPUTE = 0: plain autograd. Otherwise the hand-written backward, recomputing
        # around the mixing only for few channels (for many, redoing the mixing costs 15-25 %).
        lean = self.in_channels // self.groups <= dense.LEAN_MAX_CHANNELS
        needs_grad = x.requires_grad or wblk.requires_grad or any(m.requires_grad for m in mats)
        if dense.DENSE_RECOMPUTE and torch.is_grad_enabled() and needs_grad:
            z = DenseChain.apply(y, wblk, (tuple(plan), lean), *mats)
        else:
            z = y
            for stage in plan:
                z = run_stage(stage, z, mats, wblk)
        return Relayout.apply(z, False)  # (*out, O, B) -> (B, O, *out), contiguous

    def _dense_operands(self, fixed: bool, form: str) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The real transform matrices and the filter's spectrum (in `form`), cached in eval.

        With autograd off (evaluation, `torch.no_grad`), both are reused across calls while the
        parameters they derive from are unchanged: the cache is keyed on each parameter's
        identity, storage, in-place `_version` counter, dtype and device, so an optimizer step,
        `load_state_dict` or `.to()` invalidates it.
        """
        params = [self.weight] if fixed else [self.weight] + [km.twiddle for km in self._all_kmatrices()]
        cache = None if torch.is_grad_enabled() else self.__dict__.setdefault("_eval_cache", {})
        key = tuple((id(p), p._version, p.data_ptr(), p.dtype, p.device) for p in params) + (fixed, form)
        if cache is not None and cache.get("key") == key:
            return cache["value"]
        d = len(self.plans)
        if fixed:
            mats = self._fixed_real_mats(self.weight.dtype, self.weight.device)
        else:
            cm = self._dense_mats()
            mats = [realify(cm[a], "first" if a else None, "last") for a in range(d)]
            mats += [realify(cm[d + a], "first" if a else None, "last") for a in range(d)]
            mats += [realify(cm[2 * d + a], "last", "first" if a else None) for a in range(d)]
        value = (mats, self._weight_blocks(mats[d : 2 * d], form))
        if cache is not None:
            cache.clear()  # holds at most one entry: the current parameters
            cache.update(key=key, value=value)
        return value

    def _all_kmatrices(self) -> list[KMatrix]:
        return [*self.K_in, *self.L, *self.K_out]

    def _weight_blocks(self, k_l: list[torch.Tensor], form: str = "block") -> torch.Tensor:
        """The filter's spectrum per frequency, as `dense._mix` takes it.

        form "block": real block matrices [[Wr, -Wi], [Wi, Wr]], (F, g, 2O/g, 2C/g);
        "stacked": [Wr; Wi], (F, g, 2O/g, C/g) — for g = 1 a view of L's output, no copy.
        """
        d = len(self.plans)
        w = self.weight.permute(*range(2, 2 + d), 0, 1).to(k_l[0].dtype)  # (*taps, O, C/g)
        for a in range(d):
            w = gemm(k_l[a], w, a, a + 1 + bool(a), (k_l[a].shape[0] // 2, 2))
        freq = w.shape[:-3]
        o, cg = w.shape[-2:]
        g = self.groups
        nf = math.prod(freq)
        w = w.reshape(nf, 2, g, o // g, cg)
        if form == "stacked":
            return w.transpose(1, 2).reshape(nf, g, 2 * (o // g), cg)
        wr, wi = w[:, 0], w[:, 1]  # (F, g, O/g, C/g)
        return torch.cat([torch.cat([wr, -wi], -1), torch.cat([wi, wr], -1)], -2)  # (F, g, 2O/g, 2C/g)

    def _dense_mats(self) -> list[torch.Tensor]:
        """[K_in per axis (n x size), L per axis (n x taps), K_out per axis (out x n)], complex.

        All materialised together in one batched pass per transform size (`KMatrix.dense_many`).
        """
        d = len(self.plans)
        sel = [("cols", getattr(self, f"_in_cols{a}")) for a in range(d)]
        sel += [("cols", getattr(self, f"_tap_cols{a}")) for a in range(d)]
        sel += [("rows", getattr(self, f"_out_rows{a}")) for a in range(d)]
        return KMatrix.dense_many(self._all_kmatrices(), sel)

    def _fixed_real_mats(self, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
        """Constant real GEMM-DFT matrices for the fixed op (built in float64 once, then cast).

        Axis 0 keeps frequencies 0..n/2 only; the inverse on that axis weights frequencies
        1..n/2-1 by 2 and takes the real part (exact for a Hermitian spectrum).
        """
        cache = self.__dict__.setdefault("_fixed_cache", {})
        key = (dtype, device)
        if key not in cache:
            with torch.inference_mode(False), torch.no_grad():
                mats: list[torch.Tensor] = [None] * (3 * len(self.plans))  # type: ignore[list-item]
                for a, p in enumerate(self.plans):
                    k = torch.arange(p.n, dtype=torch.float64)
                    f = torch.polar(torch.ones(p.n, p.n, dtype=torch.float64), -2 * math.pi * torch.outer(k, k) / p.n)
                    finv = f.conj() / p.n
                    if a == 0:
                        h = p.n // 2 + 1
                        f = f[:h]
                        c = torch.full((h,), 2.0, dtype=torch.float64)
                        c[0] = 1.0
                        if p.n % 2 == 0:
                            c[-1] = 1.0
                        finv = finv[:, :h] * c
                    rin = "first" if a else None
                    mats[a] = realify(f[:, list(p.in_cols)], rin, "last")
                    mats[len(self.plans) + a] = realify(f[:, list(p.tap_cols)], rin, "last")
                    mats[2 * len(self.plans) + a] = realify(finv[list(p.out_rows)], "last", "first" if a else None)
                cache.clear()
                cache[key] = [m.to(device=device, dtype=dtype).contiguous() for m in mats]
        return cache[key]

    def _forward_fft(self, x: torch.Tensor) -> torch.Tensor:
        """Exact FFT convolution: real FFTs of the zero-padded input and of the placed filter.

        The spectra are mixed per frequency as one real batched GEMM on an interleaved re/im
        layout (complex bmm on CPU loops over the batch with a copy per matrix). The spectrum is
        moved frequencies-first once, as (*freq, B, C, re/im): the cheapest transpose (8-byte
        units), and a valid (B x 2C) matrix per frequency.
        """
        d = len(self.plans)
        ns = [p.n for p in self.plans]
        spatial = tuple(range(2, 2 + d))
        yf = torch.fft.rfftn(x, s=ns, dim=spatial)  # (B, C, *freq) complex
        y = torch.view_as_real(yf).permute(*range(2, 2 + d), 0, 1, 2 + d).contiguous()  # (*f, B, C, 2)
        w = self.weight.permute(*spatial, 0, 1)  # (*taps, O, C/g)
        for a in range(d):
            w = self._scatter_taps(w, a)
        w = torch.view_as_real(torch.fft.rfftn(w, dim=tuple(range(d))))  # (*freq, O, C/g, 2)
        z = self._mix_interleaved(y, w)  # (*freq, B, O, 2)
        z = torch.view_as_complex(z.permute(d, d + 1, *range(d), d + 2).contiguous())  # (B, O, *freq)
        z = torch.fft.irfftn(z, s=ns, dim=spatial)
        for a in range(d):
            z = z.index_select(2 + a, getattr(self, f"_out_rows{a}"))
        return z

    def _mix_interleaved(self, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Per-frequency complex mixing: y (*f, B, C, 2), w (*f, O, C/g, 2) -> (*f, B, O, 2)."""
        freq = y.shape[:-3]
        b, c = y.shape[-3:-1]
        o, cg = w.shape[-3:-1]
        g = self.groups
        nf = math.prod(freq)
        w = w.reshape(nf, g, o // g, cg, 2)
        wr, wi = w[..., 0], w[..., 1]
        t = torch.stack([torch.stack([wr, -wi]), torch.stack([wi, wr])])  # (r_out, r_in, F, g, O/g, C/g)
        wt = t.permute(2, 3, 5, 1, 4, 0).reshape(nf, g, 2 * cg, 2 * (o // g))  # rows (c, r_in), cols (o, r_out)
        if g == 1:
            return torch.bmm(y.reshape(nf, b, 2 * c), wt[:, 0]).reshape(*freq, b, o, 2)
        yg = y.reshape(nf, b, g, 2 * cg).transpose(1, 2)  # (F, g, B, 2C/g)
        out = torch.matmul(yg, wt)  # (F, g, B, 2O/g)
        return out.transpose(1, 2).reshape(*freq, b, o, 2)

    def _scatter_taps(self, w: torch.Tensor, axis: int) -> torch.Tensor:
        """Place the filter taps along `axis` at their (flipped, rolled) positions in length n."""
        shape = list(w.shape)
        shape[axis] = self.plans[axis].n
        return w.new_zeros(shape).index_copy(axis, getattr(self, f"_tap_cols{axis}"), w)

    def _mix(self, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Per-frequency channel mixing: (*f, B, C) x (*f, C/g, O) -> (*f, B, O)."""
        *freq, b, c = y.shape
        cg, o = w.shape[-2:]
        g = self.groups
        nf = math.prod(freq)
        if g == 1:
            return torch.bmm(y.reshape(nf, b, c), w.reshape(nf, c, o)).reshape(*freq, b, o)
        wg = w.reshape(nf, cg, g, o // g)
        if cg == 1:  # depthwise: an elementwise product per frequency, channel and multiplier
            return (y.reshape(nf, b, g, 1) * wg).reshape(*freq, b, o)
        yg = y.reshape(nf, b, g, cg).transpose(1, 2)  # (f, g, B, C/g)
        return torch.matmul(yg, wg.permute(0, 2, 1, 3)).transpose(1, 2).reshape(*freq, b, o)

    # -- introspection ---------------------------------------------------------------------------
    def kmatrices(self) -> dict[str, nn.ModuleList]:
        """The architecture: {"K_in": [per axis], "L": [...], "K_out": [...]} (empty if fixed)."""
        return {} if self.fixed else {n: getattr(self, n) for n in KMATRIX_NAMES}

    @torch.no_grad()
    def conv_distance(self) -> float:
        """How far the op is from every convolution: 0 for a conv, at most 1.

        Per axis and filter tap t, the operator M_t = K_out diag(L e_t) K_in (on the transform
        size) is compared with its projection onto circulant matrices (circular convolutions),
        i.e. the average of each wrapped diagonal. Returns the mean of ||M - circ(M)|| / ||M||.
        """
        if self.fixed:
            return 0.0
        dists = []
        for a, p in enumerate(self.plans):
            k_in, l_mat, k_out = self.K_in[a].dense(), self.L[a].dense(), self.K_out[a].dense()
            idx = torch.arange(p.n, device=k_in.device)
            diag_of = (idx.view(-1, 1) - idx.view(1, -1)) % p.n  # which wrapped diagonal (i, j) is on
            for col in p.tap_cols:
                m = k_out @ (l_mat[:, col].unsqueeze(1) * k_in)
                means = torch.zeros(p.n, dtype=m.dtype, device=m.device).index_add_(0, diag_of.flatten(), m.flatten())
                circ = (means / p.n)[diag_of]
                dists.append(((m - circ).norm() / m.norm().clamp_min(1e-12)).item())
        return float(sum(dists) / len(dists))

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"input_size={self.input_size}, stride={self.stride}, padding={self.padding}"
        )
        if any(d != 1 for d in self.dilation):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        if self.max_kernel_size != self.kernel_size:
            s += f", max_kernel_size={self.max_kernel_size}"
        if self.fixed:
            return s + f", fixed=True, n={tuple(p.n for p in self.plans)}"
        return s + (
            f", init={self.init!r}, depth={self.depth}, search={self.search}, "
            f"n={tuple(p.n for p in self.plans)}"
        )
