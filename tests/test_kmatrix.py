"""KMatrix against independent references: torch.fft, its own dense matrix, autograd."""

import math

import pytest
import torch

from chrysalis import KMatrix
from chrysalis.kmatrix import bit_reversal_permutation

SIZES = [2**k for k in range(1, 11)]  # 2 ... 1024


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("n", SIZES)
def test_fft_init_is_dft_with_bit_reversed_output(n):
    x = torch.randn(4, n, dtype=torch.complex64)
    perm = bit_reversal_permutation(n)
    assert rel(KMatrix(n, init="fft")(x), torch.fft.fft(x)[:, perm]) < 1e-5


@pytest.mark.parametrize("n", SIZES)
def test_ifft_init_is_inverse_dft_of_bit_reversed_input(n):
    x = torch.randn(4, n, dtype=torch.complex64)
    perm = bit_reversal_permutation(n)
    assert rel(KMatrix(n, init="ifft")(x[:, perm]), torch.fft.ifft(x)) < 1e-5


def test_bit_reversal_is_an_involution():
    p = bit_reversal_permutation(64)
    assert torch.equal(p[p], torch.arange(64))
    assert p[1].item() == 32 and p[3].item() == 48


@pytest.mark.parametrize("init", ["fft", "ifft", "identity", "random"])
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_forward_equals_dense(init, depth, dim):
    k = KMatrix(16, depth=depth, init=init)
    x = torch.randn(16, 16, 3, dtype=torch.complex64) if dim != -1 else torch.randn(5, 2, 16)
    y = k(x, dim=dim)
    ref = torch.tensordot(k.dense(), x.to(torch.complex64), dims=([1], [dim % x.dim()]))
    ref = ref.movedim(0, dim % x.dim())
    assert rel(y, ref) < 1e-5


def test_identity_and_random_inits():
    assert torch.allclose(KMatrix(8, depth=2, init="identity").dense(), torch.eye(8, dtype=torch.complex64))
    k = KMatrix(32, depth=3, init="random", generator=torch.Generator().manual_seed(0))
    s = torch.linalg.svdvals(k.dense().detach())
    assert torch.allclose(s, torch.ones(32), atol=1e-4)  # unitary: perfectly conditioned
    kg = KMatrix(32, init="random", gain=math.sqrt(32))
    assert torch.allclose(torch.linalg.svdvals(kg.dense().detach()), torch.full((32,), math.sqrt(32)), rtol=1e-4)
    # no trace of the Fourier structure: far from the DFT in both orderings
    f = KMatrix(32, init="fft").dense()
    assert rel(k.dense().detach(), f) > 0.5


def test_parameter_count_and_repr():
    k = KMatrix(64, depth=3)
    assert k.twiddle.shape == (3, 6, 32, 2, 2, 2)
    assert sum(p.numel() for p in k.parameters()) == 3 * 6 * 32 * 8
    assert "n=64" in repr(k) and "depth=3" in repr(k)


def test_gradients_reach_every_twiddle():
    k = KMatrix(16, depth=2, init="random")
    x = torch.randn(8, 16, dtype=torch.complex64)
    target = torch.randn(8, 16, dtype=torch.complex64)
    (k(x) * target).real.sum().backward()
    assert (k.twiddle.grad.abs().sum(-1) > 0).all()


@pytest.mark.parametrize("init", ["fft", "random"])
def test_gradcheck_double(init):
    k = KMatrix(8, depth=2, init=init).double()
    x = torch.randn(3, 8, dtype=torch.complex128, requires_grad=True)
    tw = k.twiddle.detach().clone().requires_grad_(True)

    def f(tw, x):  # the module as a function of its twiddles and its input
        return torch.view_as_real(torch.func.functional_call(k, {"twiddle": tw}, (x,)))

    assert torch.autograd.gradcheck(f, (tw, x))


def test_double_gives_complex128():
    k = KMatrix(8).double()
    assert k.dense().dtype == torch.complex128


@pytest.mark.parametrize("bad", [0, 1, 3, 12, 2.0])
def test_bad_size(bad):
    with pytest.raises(ValueError, match="power of two"):
        KMatrix(bad)


def test_bad_depth_init_and_input():
    with pytest.raises(ValueError, match="depth"):
        KMatrix(8, depth=0)
    with pytest.raises(ValueError, match="init"):
        KMatrix(8, init="dct")
    with pytest.raises(ValueError, match="size 8"):
        KMatrix(8)(torch.randn(2, 4))


@pytest.mark.parametrize("products", [True, False])
@pytest.mark.parametrize("n", [4, 8, 32, 64])  # 8, 32: odd factor counts (3, 5 per butterfly)
def test_dense_many_equals_dense(n, products, monkeypatch):
    """Both materialisations (dense factor products, batched factor application) against dense()."""
    import chrysalis.kmatrix as kmatrix

    monkeypatch.setattr(kmatrix, "PRODUCT_MAX_N", 1 << 20 if products else 0)
    g = torch.Generator().manual_seed(n)
    kms = [KMatrix(n, d, "random", increasing=inc, generator=g, dtype=torch.float64)
           for d in (1, 2, 3) for inc in (False, True)]
    cols, rows = torch.tensor([0, n - 1, 1]), torch.arange(n // 2)
    select = [None, ("cols", cols), ("rows", rows), ("cols", cols), ("rows", rows), None]
    got = KMatrix.dense_many(kms, select)
    want = [km.dense() for km in kms]
    want = [w if s is None else (w[:, s[1]] if s[0] == "cols" else w[s[1]]) for w, s in zip(want, select)]
    weights = [torch.randn(w.shape, dtype=w.dtype, generator=g) for w in want]
    grads = []
    for mats in (got, want):
        loss = sum((m * c).real.sum() for m, c in zip(mats, weights))
        grads.append(torch.autograd.grad(loss, [km.twiddle for km in kms]))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("factors", [1, 2, 3, 4, 5])
def test_paired_factors_gradcheck(factors):
    from chrysalis.kmatrix import _factor_index, _PairedFactors

    n = 4
    strides = tuple([1, 2, 1, 2, 1][:factors])
    idx = torch.stack([_factor_index(n, strides, torch.device("cpu"))] * 2)  # (G=2, F, 2n)
    blocks = torch.randn(2, factors, 2 * n, dtype=torch.complex128, requires_grad=True)
    assert torch.autograd.gradcheck(lambda b: _PairedFactors.apply(b, idx, n), (blocks,))
