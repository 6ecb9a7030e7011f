"""Every compute strategy of a K-op is the same function (values and gradients)."""

import pytest
import torch
from torch import nn

from chrysalis.kop import KOp

CASES = [
    (nn.Conv1d, dict(in_channels=3, out_channels=4, kernel_size=3, padding=1), (2, 3, 12)),
    (nn.Conv2d, dict(in_channels=3, out_channels=5, kernel_size=5), (2, 3, 14, 14)),
    (nn.Conv2d, dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, groups=2, stride=2), (2, 4, 9, 11)),
    (nn.Conv2d, dict(in_channels=4, out_channels=8, kernel_size=3, groups=4, padding_mode="circular", padding=1),
     (2, 4, 8, 8)),
    (nn.Conv3d, dict(in_channels=2, out_channels=3, kernel_size=3, padding=1), (1, 2, 5, 6, 4)),
]


def _grads(op, x):
    x = x.clone().requires_grad_(True)
    y = op(x)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    return [y.detach(), x.grad] + [p.grad.clone() for p in op.parameters() if p.grad is not None]


@pytest.mark.parametrize("cls,kw,shape", CASES)
def test_dense_butterfly_fft_equal_at_conv_init(cls, kw, shape):
    torch.manual_seed(0)
    conv = cls(**kw).double()
    x = torch.randn(shape, dtype=torch.float64)
    ref = conv(x)
    for opts in (dict(strategy="dense"), dict(strategy="butterfly"), dict(fixed=True), dict(depth=3)):
        op = KOp.from_conv(conv, shape[2:], **opts)
        torch.testing.assert_close(op(x), ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("cls,kw,shape", CASES)
def test_dense_equals_butterfly_at_random_init(cls, kw, shape, depth):
    g = torch.Generator().manual_seed(1)
    kw = {k: v for k, v in kw.items()}
    size = shape[2:]
    ops = {}
    for strategy in ("dense", "butterfly"):
        g.manual_seed(1)
        ops[strategy] = KOp(
            kw.pop("in_channels", None) or shape[1], kw["out_channels"], kw["kernel_size"], size,
            **{k: v for k, v in kw.items() if k not in ("out_channels", "kernel_size")},
            init="random", depth=depth, strategy=strategy, generator=g, dtype=torch.float64,
        )
    ops["butterfly"].load_state_dict(ops["dense"].state_dict())
    x = torch.randn(shape, dtype=torch.float64, generator=g)
    for a, b in zip(_grads(ops["dense"], x), _grads(ops["butterfly"], x)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_eval_cache_follows_parameter_updates():
    torch.manual_seed(0)
    op = KOp(3, 4, 3, (8, 8), padding=1, init="random", depth=2, dtype=torch.float64)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        a = op(x)
        assert op(x) is not a and torch.equal(op(x), a)  # second call served from the cache
    opt = torch.optim.SGD(op.parameters(), lr=0.1)
    op(x).square().sum().backward()
    opt.step()  # bumps every parameter's _version
    with torch.no_grad():
        b = op(x)
    torch.set_grad_enabled(True)
    torch.testing.assert_close(b, op(x), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(a, b)
    other = KOp(3, 4, 3, (8, 8), padding=1, init="random", depth=2, dtype=torch.float64)
    with torch.no_grad():
        op.load_state_dict(other.state_dict())
        torch.testing.assert_close(op(x), other(x), rtol=1e-12, atol=1e-12)
        with torch.inference_mode():
            torch.testing.assert_close(op(x), other(x), rtol=1e-12, atol=1e-12)
    op(x).sum().backward()  # tensors cached under inference mode never reach autograd


@pytest.mark.parametrize("cls,kw,shape", CASES)
def test_fixed_gemm_dft_equals_torch_fft(cls, kw, shape, monkeypatch):
    import chrysalis.kop as kop

    torch.manual_seed(0)
    conv = cls(**kw).double()
    op = KOp.from_conv(conv, shape[2:], fixed=True)
    x = torch.randn(shape, dtype=torch.float64)
    gemm = _grads(op, x)
    monkeypatch.setattr(kop, "FIXED_GEMM_MAX_N", 0)
    op.zero_grad()
    for a, b in zip(gemm, _grads(op, x)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("recompute", [0, 2])
@pytest.mark.parametrize("cls,kw,shape", CASES)
def test_dense_backward_variants_agree(cls, kw, shape, recompute, monkeypatch):
    import chrysalis.dense as dense

    g = torch.Generator().manual_seed(3)
    op = KOp(shape[1], kw["out_channels"], kw["kernel_size"], shape[2:],
             **{k: v for k, v in kw.items() if k not in ("in_channels", "out_channels", "kernel_size")},
             init="random", depth=2, strategy="dense", generator=g, dtype=torch.float64)
    x = torch.randn(shape, dtype=torch.float64, generator=g)
    lean = _grads(op, x)
    op.zero_grad()
    monkeypatch.setattr(dense, "DENSE_RECOMPUTE", recompute)
    for a, b in zip(lean, _grads(op, x)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


MIX_CASES = CASES + [  # many input channels: the hand-written backward without recompute
    (nn.Conv1d, dict(in_channels=40, out_channels=6, kernel_size=5, padding=2), (3, 40, 10)),
]


@pytest.mark.parametrize("first,out", [(True, False), (False, False), (True, True)])
@pytest.mark.parametrize("form", ["block", "stacked"])
@pytest.mark.parametrize("recompute", [0, 1, 2])
@pytest.mark.parametrize("cls,kw,shape", MIX_CASES)
def test_mix_forms_and_backwards_equal_butterfly(cls, kw, shape, recompute, form, first, out, monkeypatch):
    """Both layouts of the filter spectrum, under every backward, against the butterfly path."""
    import chrysalis.dense as dense

    g = torch.Generator().manual_seed(4)
    ops = {}
    for strategy in ("dense", "butterfly"):
        g.manual_seed(4)
        ops[strategy] = KOp(shape[1], kw["out_channels"], kw["kernel_size"], shape[2:],
                            **{k: v for k, v in kw.items() if k not in ("in_channels", "out_channels", "kernel_size")},
                            init="random", depth=2, strategy=strategy, generator=g, dtype=torch.float64)
    x = torch.randn(shape, dtype=torch.float64, generator=g)
    ref = _grads(ops["butterfly"], x)
    monkeypatch.setattr(dense, "MIX_FORM", form)
    monkeypatch.setattr(dense, "DENSE_RECOMPUTE", recompute)
    monkeypatch.setattr(dense, "RECOMPUTE_FIRST", first)
    monkeypatch.setattr(dense, "RECOMPUTE_OUT", out)
    monkeypatch.setattr(dense, "BATCH_LAST_MIN_NUMEL", 0)  # the two-copy relayout, even this small
    got = _grads(ops["dense"], x)
    assert len(got) == len(ref) == 2 + len(list(ops["dense"].parameters()))
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_mix_form_follows_the_larger_operand():
    import chrysalis.dense as dense

    assert dense.mix_form(100, 300, 50) == "stacked"  # Kim-CNN: the weights outweigh the batch
    assert dense.mix_form(6, 3, 128) == "block"  # LeNet: the data dominate
    assert dense.mix_form(8, 4, 8) == "block"  # the 3-D case: a tie goes to the block


@pytest.mark.parametrize("shape", [(5, 3, 7), (4, 3, 6, 5), (2, 3, 4, 5, 3)])
@pytest.mark.parametrize("small", [True, False])
def test_batch_relayout_is_the_permutation(shape, small, monkeypatch):
    import chrysalis.dense as dense

    monkeypatch.setattr(dense, "BATCH_LAST_MIN_NUMEL", 1 << 30 if small else 0)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    d = len(shape) - 2
    y = dense.Relayout.apply(x, True)
    assert y.is_contiguous()
    torch.testing.assert_close(y, x.permute(*range(2, 2 + d), 1, 0), rtol=0, atol=0)
    z = dense.Relayout.apply(y * 1.0, False)
    assert z.is_contiguous()
    torch.testing.assert_close(z, x, rtol=0, atol=0)
    gz = torch.randn(shape, dtype=torch.float64)
    (z * gz).sum().backward()
    torch.testing.assert_close(x.grad, gz, rtol=0, atol=0)
    assert torch.autograd.gradcheck(lambda t: dense.Relayout.apply(t, True), (x,))
    assert torch.autograd.gradcheck(lambda t: dense.Relayout.apply(t, False), (y.detach().requires_grad_(),))


def test_lean_backward_saves_less():
    """Recomputing around the mixing and the first transform must shrink what autograd keeps."""
    import chrysalis.dense as dense
    from chrysalis.bench import saved_bytes

    op = KOp(3, 6, 5, (32, 32), init="random", depth=1)
    x = torch.randn(16, 3, 32, 32, requires_grad=True)
    sizes = {}
    for name, recompute, first, out in (("plain", 0, False, False), ("mix", 1, False, False),
                                        ("mix+first", 1, True, False), ("all", 1, True, True)):
        dense.DENSE_RECOMPUTE, dense.RECOMPUTE_FIRST, dense.RECOMPUTE_OUT = recompute, first, out
        try:
            sizes[name] = saved_bytes(lambda: op(x))
        finally:
            dense.DENSE_RECOMPUTE, dense.RECOMPUTE_FIRST, dense.RECOMPUTE_OUT = 1, True, False
    assert sizes["plain"] > sizes["mix"] > sizes["mix+first"] > sizes["all"]
    # per image: the first transform's output is 32 x 2 x 32 x 3 (complex, twice the input), the
    # last K_out stage's input 32 x 2 x 28 x 6 (axis 0 still complex, axis 1 cropped to 28 rows)
    assert sizes["mix"] - sizes["mix+first"] == 16 * 32 * 2 * 32 * 3 * 4
    assert sizes["mix+first"] - sizes["all"] == 16 * 32 * 2 * 28 * 6 * 4


@pytest.mark.parametrize("search", [("K_in",), ("L",), ("K_out",), ("K_in", "K_out")])
@pytest.mark.parametrize("recompute", [1, 2])
def test_lean_backward_with_frozen_kmatrices(search, recompute, monkeypatch):
    """Recompute plans must hold when some stages need no saved input (frozen K-matrices)."""
    import chrysalis.dense as dense

    monkeypatch.setattr(dense, "DENSE_RECOMPUTE", recompute)
    monkeypatch.setattr(dense, "RECOMPUTE_OUT", True)
    g = torch.Generator().manual_seed(5)
    ops = {}
    for strategy in ("dense", "butterfly"):
        g.manual_seed(5)
        ops[strategy] = KOp(3, 4, 3, (9, 7), padding=1, init="random", depth=2, search=search,
                            strategy=strategy, generator=g, dtype=torch.float64)
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64, generator=g)
    for a, b in zip(_grads(ops["dense"], x), _grads(ops["butterfly"], x)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
