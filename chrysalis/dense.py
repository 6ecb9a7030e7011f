"""The real-GEMM engine behind the dense K-op path (`KOp(strategy="dense")`, and `fixed=True`).

A complex tensor is carried as a real one whose re/im axis (size 2) sits next to the spatial
axis being transformed, so every complex transform becomes one real (batched) GEMM on a view:
no permutes, no complex interleaving. `DenseChain` runs the whole chain (K_in per axis, the
per-frequency channel mixing, K_out per axis) with a hand-written backward that saves only what
a gradient needs and recomputes the spectra around the mixing (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import math

import torch

# Dense backward (`DenseChain`): recompute the mixing's output (1) or also its input (2) instead
# of saving them (0: plain autograd). Only for few input channels per group, where the mixing is
# cheap to redo and the spectra dominate memory (docs/PERFORMANCE.md).
DENSE_RECOMPUTE = 1
# Lean backward, N-d ops: also recompute the first transform's output from the saved input.
RECOMPUTE_FIRST = True
# ... and the inputs of the K_out stages after the first from the mixing's output: saved bytes of
# a LeNet step 2.85x -> 1.77x the conv's for +2-8 % time (docs/PERFORMANCE.md); off by default.
RECOMPUTE_OUT = False
LEAN_MAX_CHANNELS = 32
# Filter spectrum layout in the mixing: "auto" (by `mix_form`), or force "block" / "stacked".
MIX_FORM = "auto"
BATCH_LAST_MIN_NUMEL = 1 << 18  # below: one permuting copy is faster than two (see `batch_last`)


def gemm(m: torch.Tensor, t: torch.Tensor, start: int, stop: int, mid: tuple[int, ...]) -> torch.Tensor:
    """Contract the dims start..stop-1 of `t` (flattened, row-major) with the columns of `m`.

    `t` viewed as (lead, q, tail) gives one batched matmul, a single large GEMM when lead == 1
    (that is why K-ops keep the data spatial-axes-first); the result's contracted dims are
    replaced by `mid` (whose product is m.shape[0]). Only views: no permute, no copy.
    """
    shape = t.shape
    lead, q, tail = math.prod(shape[:start]), math.prod(shape[start:stop]), math.prod(shape[stop:])
    if lead == 1:
        out = m @ t.reshape(q, tail)
    else:
        out = torch.bmm(m.expand(lead, *m.shape), t.reshape(lead, q, tail))  # not matmul: it copies
    return out.reshape(*shape[:start], *mid, *shape[stop:])


def batch_last(x: torch.Tensor) -> torch.Tensor:
    """(B, C, *S) -> contiguous (*S, C, B), in two cache-friendly copies.

    One strided copy of the permutation walks the input with a stride of C*S elements per
    output entry (6.5 ms for Kim-CNN's 50 x 300 x 64 input, 1 thread); a 2-D transpose
    (B, C*S) -> (C*S, B) followed by swapping (C, S) in whole B-runs takes 1.0 ms. Small inputs
    (<= BATCH_LAST_MIN_NUMEL entries) are faster in one copy.
    """
    b, c, *size = x.shape
    if x.numel() <= BATCH_LAST_MIN_NUMEL:
        return x.permute(*range(2, x.dim()), 1, 0).contiguous()
    y = x.reshape(b, c * math.prod(size)).t().contiguous().view(c, -1, b)
    return y.transpose(0, 1).contiguous().view(*size, c, b)


def batch_first(z: torch.Tensor) -> torch.Tensor:
    """The inverse of `batch_last`: (*S, C, B) -> contiguous (B, C, *S)."""
    *size, c, b = z.shape
    if z.numel() <= BATCH_LAST_MIN_NUMEL:
        return z.permute(z.dim() - 1, z.dim() - 2, *range(z.dim() - 2)).contiguous()
    y = z.reshape(-1, c, b).transpose(0, 1).contiguous().view(-1, b)  # (C*S, B)
    return y.t().contiguous().view(b, c, *size)


class Relayout(torch.autograd.Function):
    """`batch_last` (to_last=True) or `batch_first`, whose backward is the other one: the same
    fast copies in both directions, not a strided permute."""

    @staticmethod
    def forward(ctx, x, to_last: bool):
        ctx.to_last = to_last
        return batch_last(x) if to_last else batch_first(x)

    @staticmethod
    def backward(ctx, g):
        return (batch_first(g) if ctx.to_last else batch_last(g)), None


def mix_form(out_per_group: int, in_per_group: int, batch: int) -> str:
    """How the mixing holds the filter spectrum: "block" or "stacked" (see `_mix`).

    "block" copies the weights into a 2O x 2C matrix per frequency (forward and backward);
    "stacked" instead stacks the output's and the gradients' re/im halves (O x B and C x B per
    frequency). So "stacked" when O*C > (O + C)*B per group: Kim-CNN (300 -> 100 channels,
    batch 50: 2.1x instead of 4.1x the conv, fwd+bwd); "block" for LeNet, ResNet and the 3-D
    case, where the batch outweighs the channels (measured, docs/PERFORMANCE.md).
    """
    if MIX_FORM != "auto":
        return MIX_FORM
    o, c = out_per_group, in_per_group
    return "stacked" if o * c > (o + c) * batch else "block"


def _mix(y: torch.Tensor, wblk: torch.Tensor) -> torch.Tensor:
    """Per-frequency complex channel mixing on real re/im layouts.

    y (*f, 2, C, B) -> (*f, 2, O, B), out = W y per frequency, with the filter spectrum W as
    - "block" wblk (F, g, 2O/g, 2C/g): the real block matrix [[Wr, -Wi], [Wi, Wr]], one real
      batched GEMM;
    - "stacked" wblk (F, g, 2O/g, C/g): [Wr; Wi] as it leaves L (no copy). Then
      W y = [Wr; Wi] yr + J([Wr; Wi] yi) with J(a; b) = (-b; a): two GEMMs of half the depth
      (the same flops) and two adds on the small output.
    """
    freq = y.shape[:-3]
    c, b = y.shape[-2:]
    nf, g = wblk.shape[:2]
    o, cg = wblk.shape[2] // 2 * g, c // g
    if wblk.shape[-1] == cg:  # stacked
        yv = y.reshape(nf, 2, g, cg, b)
        if g == 1:
            w3 = wblk[:, 0]
            out, p = torch.bmm(w3, yv[:, 0, 0]), torch.bmm(w3, yv[:, 1, 0])  # (F, 2O, B)
        else:
            out, p = torch.matmul(wblk, yv[:, 0]), torch.matmul(wblk, yv[:, 1])  # (F, g, 2O/g, B)
        out, p = out.view(nf, g, 2, o // g, b), p.view(nf, g, 2, o // g, b)
        out = torch.stack([out[:, :, 0] - p[:, :, 1], out[:, :, 1] + p[:, :, 0]], 1)  # (F, 2, g, O/g, B)
        return out.reshape(*freq, 2, o, b)
    if g == 1:
        out = torch.bmm(wblk.reshape(nf, 2 * o, 2 * c), y.reshape(nf, 2 * c, b))
        return out.reshape(*freq, 2, o, b)
    yg = y.reshape(nf, 2, g, cg, b).transpose(1, 2).reshape(nf, g, 2 * cg, b)
    out = torch.matmul(wblk, yg)  # (F, g, 2*O/g, B), rows (re/im, O/g)
    return out.reshape(nf, g, 2, o // g, b).transpose(1, 2).reshape(*freq, 2, o, b)


def _mix_backward(y, shape, wblk, g_out, need_y: bool, need_w: bool):
    """Gradients of `_mix` with respect to y (of `shape`; only read if need_w) and wblk."""
    nf, g = wblk.shape[:2]
    c, b = shape[-2:]
    o, cg = wblk.shape[2] // 2 * g, c // g
    gg = g_out.reshape(nf, 2, g, o // g, b).transpose(1, 2)  # (F, g, 2, O/g, B)
    gy = gw = None
    if wblk.shape[-1] == cg:  # stacked: out = W yr + J(W yi), so d/d(W yi) = J^T g = (g_im; -g_re)
        jg = torch.stack([gg[:, :, 1], -gg[:, :, 0]], 2).reshape(nf, g, 2 * (o // g), b)
        gg = gg.reshape(nf, g, 2 * (o // g), b)
        if g == 1:  # bmm on 3-D views: matmul would fold (copy) the strided operands
            gg, jg, w3 = gg[:, 0], jg[:, 0], wblk[:, 0]
        else:
            w3 = wblk
        mm = torch.bmm if g == 1 else torch.matmul
        if need_y:
            wt = w3.transpose(-1, -2)
            gy = torch.stack([mm(wt, gg), mm(wt, jg)], 1).reshape(shape)  # (F, 2, [g,] C/g, B)
        if need_w:
            yv = y.reshape(nf, 2, g, cg, b)
            yr, yi = (yv[:, 0, 0], yv[:, 1, 0]) if g == 1 else (yv[:, 0], yv[:, 1])
            gw = mm(gg, yr.transpose(-1, -2))
            gw = (gw.baddbmm_(jg, yi.transpose(-1, -2)) if g == 1 else gw + mm(jg, yi.transpose(-1, -2)))
            gw = gw.reshape(wblk.shape)
        return gy, gw
    if g == 1:
        g3 = g_out.reshape(nf, 2 * o, b)
        w3 = wblk.reshape(nf, 2 * o, 2 * c)
        gy = torch.bmm(w3.transpose(1, 2), g3).reshape(shape) if need_y else None
        gw = torch.bmm(g3, y.reshape(nf, 2 * c, b).transpose(1, 2)).reshape(wblk.shape) if need_w else None
        return gy, gw
    gg = gg.reshape(nf, g, 2 * (o // g), b)
    if need_y:
        gy = torch.matmul(wblk.transpose(-1, -2), gg).reshape(nf, g, 2, cg, b).transpose(1, 2).reshape(shape)
    if need_w:
        yg = y.reshape(nf, 2, g, cg, b).transpose(1, 2).reshape(nf, g, 2 * cg, b)
        gw = torch.matmul(gg, yg.transpose(-1, -2))
    return gy, gw


def _gemm_backward(m, t, shape, start, stop, g_out, need_t: bool, need_m: bool):
    """Gradients of `gemm(m, t, start, stop, mid)` w.r.t. t (of `shape`; read if need_m) and m."""
    lead, q, tail = math.prod(shape[:start]), math.prod(shape[start:stop]), math.prod(shape[stop:])
    p = m.shape[0]
    g3 = g_out.reshape(lead, p, tail)
    gt = gm = None
    if lead == 1:
        if need_t:
            gt = (m.t() @ g3[0]).reshape(shape)
        if need_m:
            gm = g3[0] @ t.reshape(q, tail).t()
    else:
        if need_t:
            gt = torch.bmm(m.t().expand(lead, q, p), g3).reshape(shape)
        if need_m:
            gm = torch.bmm(g3, t.reshape(lead, q, tail).transpose(1, 2)).sum(0)
    return gt, gm


def run_stage(stage, t: torch.Tensor, mats, wblk) -> torch.Tensor:
    if stage[0] == "mix":
        return _mix(t, wblk)
    _, i, start, stop, mid = stage
    return gemm(mats[i], t, start, stop, mid)


class DenseChain(torch.autograd.Function):
    """The dense K-op's data path (K_in per axis, mixing, K_out per axis) with a lean backward.

    A stage's input is saved only if its matrix needs a gradient (constant GEMM-DFT matrices or
    frozen K-matrices need none). With `lean` (spec = (plan, lean)) the spectrum leaving the
    channel mixing (the largest intermediate) is recomputed in backward instead of saved, and
    with DENSE_RECOMPUTE = 2 the one entering it too (one GEMM more); then the hand-written GEMM
    backward runs stage by stage.
    """

    @staticmethod
    def forward(ctx, x, wblk, spec, *mats):
        plan, lean = spec  # lean: recompute around the mixing (else save what backward needs)
        ts = [x]
        for stage in plan:
            ts.append(run_stage(stage, ts[-1], mats, wblk))
        k = next(i for i, st in enumerate(plan) if st[0] == "mix")
        need = ctx.needs_input_grad
        keep = [need[1] if st[0] == "mix" else need[3 + st[1]] for st in plan]
        recompute = []
        if lean and keep[k + 1]:
            keep[k + 1], keep[k] = False, True
            recompute.append(k + 1)
        if lean and DENSE_RECOMPUTE == 2 and keep[k]:
            keep[k], keep[k - 1] = False, True
            recompute.insert(0, k)
        if lean and RECOMPUTE_OUT:
            for j in range(k + 2, len(plan)):  # inputs of the later K_out stages, from the mixing's
                if keep[j] and (keep[j - 1] or j - 1 in recompute):
                    keep[j] = False
                    recompute.append(j)
        if lean and RECOMPUTE_FIRST and k >= 2 and keep[0] and keep[1]:
            # The first transform acts on the real input (half a GEMM, the cheapest stage) and
            # its input is saved anyway: redo it rather than keep its complex output.
            keep[1] = False
            recompute.insert(0, 1)
        ctx.plan, ctx.mix, ctx.recompute = plan, k, recompute
        ctx.shapes = [t.shape for t in ts[: len(plan)]]
        ctx.save_for_backward(wblk, *mats, *(t if kp else None for t, kp in zip(ts, keep)))
        return ts[-1]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        plan = ctx.plan
        saved = ctx.saved_tensors
        nm = len(ctx.needs_input_grad) - 3
        wblk, mats, ts = saved[0], saved[1 : 1 + nm], list(saved[1 + nm :])
        for i in ctx.recompute:  # ascending: the first transform's output, the mixing's input/output
            ts[i] = run_stage(plan[i - 1], ts[i - 1], mats, wblk)
        need = ctx.needs_input_grad
        gmats: list[torch.Tensor | None] = [None] * nm
        gw = None
        for i in range(len(plan) - 1, -1, -1):
            stage, t = plan[i], ts[i]
            need_t = i > 0 or need[0]
            if stage[0] == "mix":
                g, gw = _mix_backward(t, ctx.shapes[i], wblk, g, need_t, need[1])
            else:
                _, j, start, stop, _ = stage
                g, gm = _gemm_backward(mats[j], t, ctx.shapes[i], start, stop, g, need_t, need[3 + j])
                gmats[j] = gm if gmats[j] is None or gm is None else gmats[j] + gm
        return (g if need[0] else None), gw, None, *gmats


def realify(a: torch.Tensor, re_in: str | None, re_out: str | None) -> torch.Tensor:
    """The complex p x q matrix `a` as a real matrix acting on re/im-stacked vectors.

    re_in / re_out: where the re/im index sits in the column / row index: "first" ((re/im, k)),
    "last" ((k, re/im)) or None (columns: the input is real; rows: keep only the real part).
    Block form [[Re a, -Im a], [Im a, Re a]]: (2p or p) x (2q or q).
    """
    ar, ai = a.real, a.imag
    t = torch.stack([torch.stack([ar, -ai]), torch.stack([ai, ar])])  # (r_out, r_in, p, q)
    if re_in is None:
        t = t[:, :1]
    if re_out is None:
        t = t[:1]
    rows = (0, 2) if re_out != "last" else (2, 0)
    cols = (1, 3) if re_in != "last" else (3, 1)
    p, q = a.shape
    return t.permute(*rows, *cols).reshape(t.shape[0] * p, t.shape[1] * q)
