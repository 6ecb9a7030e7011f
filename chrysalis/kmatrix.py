"""Butterfly and kaleidoscope (K-) matrices.

A butterfly matrix of size n = 2^m is a product of m sparse factors. The factor with stride s
mixes entries i and i + s (for every i whose bit s is 0) through a learnable complex 2x2 block:
n/2 blocks per factor. A K-matrix of depth d is a product of d butterfly matrices whose stride
order alternates (decreasing, increasing, decreasing, ... or the reverse), as in Dao et al. 2020.

Orderings (the only subtle point). With `init="fft"` the K-matrix is the decimation-in-frequency
Cooley-Tukey FFT: input in natural order, output in *bit-reversed* order,
    KMatrix(n, init="fft").dense()  == P @ F
and with `init="ifft"` it is the decimation-in-time inverse FFT: input in bit-reversed order,
    KMatrix(n, init="ifft").dense() == F^-1 @ P
where F is the unnormalised DFT (torch.fft.fft) and P the bit-reversal permutation (P = P^T = P^-1).
In a K-operation `K_out diag(L w) K_in` the two P's cancel, so no permutation is ever applied.

Twiddles are stored as real tensors with a trailing (re, im) axis and viewed as complex in
forward: `Module.double()` / `.to(dtype)` then convert them correctly (float64 -> complex128),
optimizers and DDP see ordinary real tensors, and weight decay can be switched off per group.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

INITS = ("fft", "ifft", "identity", "random")
DENSE_APPLY_MAX_N = 256  # forward() applies K as one GEMM up to this size (docs/PERFORMANCE.md)
PRODUCT_MAX_N = 64  # dense_many multiplies dense factor matrices up to this size (ibid.)


def bit_reversal_permutation(n: int) -> torch.Tensor:
    """Indices `p` with `x[p]` = x in bit-reversed order (an involution)."""
    m = _log2(n)
    idx = torch.arange(n)
    rev = torch.zeros_like(idx)
    for b in range(m):
        rev |= ((idx >> b) & 1) << (m - 1 - b)
    return rev


def _log2(n: int) -> int:
    if not isinstance(n, int) or n < 2 or n & (n - 1):
        raise ValueError(f"K-matrix size must be a power of two >= 2, got n={n!r}")
    return n.bit_length() - 1


def _fft_twiddles(n: int, inverse: bool) -> torch.Tensor:
    """The m factors of the radix-2 FFT as 2x2 blocks, in the order they are applied.

    Returns complex128 (m, n/2, 2, 2). Block b of the factor with stride s acts on the pair
    (i, i + s) with i = (b // s) * 2s + b % s; the within-subproblem index is b % s.
    - forward (DIF, strides n/2 ... 1): [u, v] -> [u + v, (u - v) w^j],  w = exp(-2 pi i / 2s)
    - inverse (DIT, strides 1 ... n/2): [u, v] -> [u + w^j v, u - w^j v] / 2,  w = exp(+2 pi i / 2s)
    """
    m = _log2(n)
    strides = [1 << k for k in range(m)]
    if not inverse:
        strides = strides[::-1]
    factors = []
    for s in strides:
        j = torch.arange(n // 2, dtype=torch.float64) % s
        sign = 1.0 if inverse else -1.0
        w = torch.polar(torch.ones_like(j), sign * math.pi * j / s)  # exp(±2πi j / 2s)
        one = torch.ones_like(w)
        if inverse:
            block = torch.stack([torch.stack([one, w], -1), torch.stack([one, -w], -1)], -2) / 2
        else:
            block = torch.stack([torch.stack([one, one], -1), torch.stack([w, -w], -1)], -2)
        factors.append(block)
    return torch.stack(factors)


def _haar_unitary_2x2(shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    """Haar-random unitary 2x2 blocks (QR of a complex Gaussian, phases fixed), complex128."""
    z = torch.randn(*shape, 2, 2, 2, dtype=torch.float64, generator=generator)
    q, r = torch.linalg.qr(torch.view_as_complex(z.contiguous()))
    d = torch.diagonal(r, dim1=-2, dim2=-1)
    return q * (d / d.abs()).unsqueeze(-2)


def _apply_factors(x: torch.Tensor, blocks: torch.Tensor, strides: list[int], batched: bool = False) -> torch.Tensor:
    """Apply butterfly factors along the last axis of x, as broadcast multiply-adds.

    blocks: complex (F, n/2, 2, 2) (or (G, F, n/2, 2, 2) with `batched`, x then (G, ..., n)),
    factor f with stride strides[f]. x viewed as (..., groups, 2 (in), s): out[.., g, i, s] =
    t[g, s, i, 0] x[.., g, 0, s] + t[g, s, i, 1] x[.., g, 1, s] (no einsum: its bmm of 2x2
    blocks needs permuted copies).
    """
    n = x.shape[-1]
    lead = x.shape[:-1]
    pre = (blocks.shape[0],) if batched else ()
    mid = (1,) * (len(lead) - len(pre))  # broadcast the twiddles over x's vector axes
    for f, s in enumerate(strides):
        blk = blocks[:, f] if batched else blocks[f]
        q = len(pre)
        t = blk.reshape(*pre, n // (2 * s), s, 2, 2).permute(*range(q), q, q + 3, q + 2, q + 1).contiguous()
        t = t.view(*pre, *mid, n // (2 * s), 2, 2, s)  # (..., g, in, out, s)
        xv = x.reshape(*lead, n // (2 * s), 2, 1, s)  # (..., g, in, 1, s)
        x = (t[..., 0, :, :] * xv[..., 0, :, :] + t[..., 1, :, :] * xv[..., 1, :, :]).reshape(*lead, n)
    return x


_BASIS_CACHE: dict[tuple, torch.Tensor] = {}
_FACTOR_INDEX_CACHE: dict[tuple, torch.Tensor] = {}


def _factor_index(n: int, strides: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """(F, 2n) positions (row * n + col) of the 2x2 blocks' entries in each n x n factor."""
    key = (n, strides, device)
    idx = _FACTOR_INDEX_CACHE.get(key)
    if idx is None:
        b = torch.arange(n // 2)
        per_factor = []
        for s in strides:
            pos = torch.stack([(b // s) * 2 * s + b % s, (b // s) * 2 * s + b % s + s], -1)  # (n/2, 2)
            rows, cols = pos.view(-1, 2, 1).expand(-1, 2, 2), pos.view(-1, 1, 2).expand(-1, 2, 2)
            per_factor.append((rows * n + cols).reshape(-1))  # block [b, out, in] -> (pos[out], pos[in])
        idx = torch.stack(per_factor).to(device)
        if len(_FACTOR_INDEX_CACHE) > 256:
            _FACTOR_INDEX_CACHE.clear()
        _FACTOR_INDEX_CACHE[key] = idx
    return idx


class _PairedFactors(torch.autograd.Function):
    """Dense factors D_1..D_F from their 2x2 blocks, neighbours multiplied: (D_2 D_1), (D_4 D_3), ...

    blocks (G, F, 2n) complex, idx (G, F, 2n) their positions in the n x n factors (row * n + col).
    Returns (G, ceil(F/2), n, n); an odd last factor is passed through. Backward rebuilds the
    factors from the blocks instead of saving them (they are mostly zeros, and as large as all
    the partial products of the tree together).
    """

    @staticmethod
    def forward(ctx, blocks, idx, n):
        ctx.save_for_backward(blocks, idx)
        ctx.n = n
        d = _PairedFactors._dense(blocks, idx, n)
        k = d.shape[1] - d.shape[1] % 2
        pairs = torch.matmul(d[:, 1:k:2], d[:, 0:k:2])
        return torch.cat([pairs, d[:, k:]], 1) if k < d.shape[1] else pairs

    @staticmethod
    def _dense(blocks, idx, n):
        g, f = blocks.shape[:2]
        return blocks.new_zeros(g, f, n * n).scatter(2, idx, blocks).view(g, f, n, n)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        blocks, idx = ctx.saved_tensors
        d = _PairedFactors._dense(blocks, idx, ctx.n)
        k = d.shape[1] - d.shape[1] % 2
        gd = torch.empty_like(d)
        gp = grad[:, : k // 2]
        gd[:, 1:k:2] = torch.matmul(gp, d[:, 0:k:2].mH)  # C = A B: dA = dC B^H, dB = A^H dC
        gd[:, 0:k:2] = torch.matmul(d[:, 1:k:2].mH, gp)
        if k < d.shape[1]:
            gd[:, k] = grad[:, -1]
        return gd.view(*blocks.shape[:2], -1).gather(2, idx), None, None


def _tree_product(idx: torch.Tensor, n: int, blocks: torch.Tensor) -> torch.Tensor:
    """(G, n, n) products D_F ... D_1 of the factors given by (G, F, 2n) blocks at idx."""
    mats = _PairedFactors.apply(blocks, idx, n)
    while mats.shape[1] > 1:  # pair (D_2 D_1), (D_4 D_3), ...; an odd last factor waits
        k = mats.shape[1]
        pairs = torch.matmul(mats[:, 1 : k - k % 2 : 2], mats[:, 0 : k - k % 2 : 2])
        mats = torch.cat([pairs, mats[:, k - 1 :]], 1) if k % 2 else pairs
    return mats[:, 0]


def _dense_many_by_products(kmats, select) -> list[torch.Tensor]:
    """`KMatrix.dense_many` for small n: every factor as a dense n x n matrix, multiplied in a tree.

    All factors of all K-matrices of one size and factor count are scattered into dense matrices
    in one op, then multiplied pairwise in log2(factors) batched matmuls (K = D_F ... D_2 D_1),
    instead of depth * log n broadcast multiply-adds and their backward: 1.5-3.6x faster for
    n <= 64 (docs/PERFORMANCE.md); O(n^3) per product, so only for small n.
    """
    out: list[torch.Tensor | None] = [None] * len(kmats)
    groups: dict[tuple, list[int]] = {}
    for i, km in enumerate(kmats):
        blocks = km.blocks()
        groups.setdefault((km.n, km.depth * km.m, blocks.dtype, blocks.device), []).append(i)
    for (n, f, _, device), members in groups.items():
        idx = torch.stack([_factor_index(n, tuple(s for st in kmats[i].strides() for s in st), device)
                           for i in members])  # (G, F, 2n)
        blocks = torch.stack([kmats[i].blocks().reshape(f, 2 * n) for i in members])  # (G, F, 2n)
        mats = _tree_product(idx, n, blocks)
        for g, i in enumerate(members):
            sel, m = select[i], mats[g]
            if sel is None:
                out[i] = m
            else:
                ix = torch.as_tensor(sel[1], device=device)
                out[i] = m.index_select(0, ix) if sel[0] == "rows" else m.index_select(1, ix)
    return out


def _basis(n: int, idx: tuple[tuple[int, ...], ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Constant (G, r, n) stack of unit rows e_idx[g][k] (zero rows pad to r): built once."""
    key = (n, idx, dtype, device)
    b = _BASIS_CACHE.get(key)
    if b is None:
        r = max(len(i) for i in idx)
        with torch.inference_mode(False), torch.no_grad():  # a normal tensor, usable by autograd later
            b = torch.zeros(len(idx), r, n, dtype=dtype, device=device)
            for g, i in enumerate(idx):
                b[g, torch.arange(len(i)), torch.tensor(i, dtype=torch.long)] = 1
        if len(_BASIS_CACHE) > 256:
            _BASIS_CACHE.clear()
        _BASIS_CACHE[key] = b
    return b


class KMatrix(nn.Module):
    """A learnable kaleidoscope matrix: a product of `depth` complex butterfly matrices.

    Args:
        n: size, a power of two (>= 2).
        depth: number of butterfly matrices (>= 1). Deeper K-matrices can express more (e.g. any
            permutation needs two); the extra ones start as the identity under `fft`/`ifft`.
        init: "fft" (DIF DFT, bit-reversed output), "ifft" (DIT inverse DFT, bit-reversed input),
            "identity", or "random" (Haar-random unitary 2x2 blocks: the matrix is unitary, so
            perfectly conditioned, and carries no trace of the Fourier structure).
        increasing: stride order of the first butterfly applied (the others alternate). Default:
            increasing for "ifft" (DIT), decreasing otherwise (DIF).
        gain: multiplies the "random" init so that the matrix has spectral norm `gain`
            (e.g. sqrt(n) to match the unnormalised DFT's scale).
        generator: torch.Generator for the "random" init.
        device, dtype: where and in which real dtype (float32 -> complex64 arithmetic) to build.

    Parameters: `twiddle`, real (depth, m, n/2, 2, 2, 2): butterfly, factor (in application
    order), block, 2x2 entries, (re, im).
    """

    def __init__(
        self,
        n: int,
        depth: int = 1,
        init: str = "fft",
        *,
        increasing: bool | None = None,
        gain: float = 1.0,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        m = _log2(n)
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"K-matrix depth must be an integer >= 1, got depth={depth!r}")
        if init not in INITS:
            raise ValueError(f"unknown K-matrix init {init!r}; expected one of {INITS}")
        self.n, self.m, self.depth, self.init = n, m, depth, init
        self.increasing = (init == "ifft") if increasing is None else bool(increasing)
        eye = torch.eye(2, dtype=torch.complex128).expand(depth, m, n // 2, 2, 2).clone()
        if init == "random":
            blocks = _haar_unitary_2x2((depth, m, n // 2), generator)
            # Scale only the first butterfly's factors so the product has norm `gain`.
            blocks[0] *= gain ** (1.0 / m)
        else:
            blocks = eye
            if init in ("fft", "ifft"):
                blocks[0] = _fft_twiddles(n, inverse=(init == "ifft"))
        # Built in float64 and rounded once, so a float64 K-matrix is exact to float64 precision.
        real = torch.view_as_real(blocks).to(device=device, dtype=dtype or torch.get_default_dtype())
        self.twiddle = nn.Parameter(real.contiguous())  # (QR's output is column-major)

    # -- structure ------------------------------------------------------------------------
    def strides(self) -> list[list[int]]:
        """Strides of each butterfly's factors, in the order they are applied."""
        up = [1 << k for k in range(self.m)]
        return [up if (b % 2 == 0) == self.increasing else up[::-1] for b in range(self.depth)]

    def blocks(self) -> torch.Tensor:
        """The twiddles as complex (depth, m, n/2, 2, 2)."""
        return torch.view_as_complex(self.twiddle)

    # -- application ----------------------------------------------------------------------
    def forward(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Return K @ x along `dim`.

        Factor by factor (O(depth * n log n) per vector) in general; for small n and at least n
        vectors the matrix is materialised once (O(depth * n^2 log n)) and applied as one GEMM,
        which is far faster in eager PyTorch (same values up to rounding; see docs/PERFORMANCE.md).
        """
        if x.shape[dim] != self.n:
            raise ValueError(f"KMatrix of size {self.n} applied to a dimension of size {x.shape[dim]}")
        blocks = self.blocks()
        x = x.movedim(dim, -1).to(blocks.dtype)
        if self.n <= DENSE_APPLY_MAX_N and x.numel() >= self.n * self.n:
            y = x @ self._transposed_dense(blocks)
        else:
            y = self._butterfly(x, blocks)
        return y.movedim(-1, dim)

    def _butterfly(self, x: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        """K @ x along the last axis, factor by factor (see `_apply_factors`)."""
        strides = [s for st in self.strides() for s in st]
        return _apply_factors(x, blocks.reshape(-1, *blocks.shape[2:]), strides)

    def _transposed_dense(self, blocks: torch.Tensor) -> torch.Tensor:
        """K^T: the butterfly applied to the rows of the identity (row i becomes K e_i)."""
        return self._butterfly(torch.eye(self.n, dtype=blocks.dtype, device=blocks.device), blocks)

    def dense(self) -> torch.Tensor:
        """The n x n complex matrix (O(depth * n^2 log n)); differentiable in the twiddles."""
        return self._transposed_dense(self.blocks()).t()

    @staticmethod
    def dense_many(kmats: Sequence[KMatrix], select: Sequence[tuple[str, torch.Tensor] | None] | None = None):
        """Materialise several K-matrices together: fewer, larger kernels than one `dense()` each.

        select[i]: None (the whole matrix K_i), ("cols", idx) -> K_i[:, idx] or ("rows", idx) ->
        K_i[idx, :]. Returns a list of complex matrices, differentiable in the twiddles.

        Row i of K^T is the butterfly applied to e_i, and row i of K is the *transposed* butterfly
        (factors in reverse order, 2x2 blocks transposed) applied to e_i; a K-matrix's reversed
        stride sequence is that of a K-matrix with the other first stride order, so K_in, L
        (columns) and K_out (rows) of a K-op share one stride sequence and are materialised in one
        batched pass, each on only the basis vectors it needs (padded to a common count).
        """
        select = [None] * len(kmats) if select is None else list(select)
        if all(km.n <= PRODUCT_MAX_N for km in kmats):
            return _dense_many_by_products(kmats, select)
        jobs = []  # (index, key, flat blocks (F, n/2, 2, 2), strides, basis indices)
        for i, (km, sel) in enumerate(zip(kmats, select)):
            blocks = km.blocks()
            flat = blocks.reshape(-1, *blocks.shape[2:])
            strides = [s for st in km.strides() for s in st]
            rows = sel is not None and sel[0] == "rows"
            if rows:
                flat, strides = flat.flip(0).transpose(-1, -2), strides[::-1]
            idx = list(range(km.n)) if sel is None else [int(v) for v in sel[1]]
            jobs.append((i, (km.n, tuple(strides), flat.dtype, flat.device), flat, strides, idx, rows))
        out: list[torch.Tensor | None] = [None] * len(kmats)
        groups: dict[tuple, list] = {}
        for job in jobs:
            groups.setdefault(job[1], []).append(job)
        for (n, strides, dtype, device), grp in groups.items():
            basis = _basis(n, tuple(tuple(j[4]) for j in grp), dtype, device)
            blocks = torch.stack([j[2] for j in grp]) if len(grp) > 1 else grp[0][2].unsqueeze(0)
            res = _apply_factors(basis, blocks, list(strides), batched=True)  # (G, r, n)
            for g, (i, _, _, _, idx, rows) in enumerate(grp):
                m = res[g, : len(idx)]
                out[i] = m if rows else m.t()
        return out

    def extra_repr(self) -> str:
        order = "increasing" if self.increasing else "decreasing"
        return f"n={self.n}, depth={self.depth}, init={self.init!r}, first_strides={order}"
