"""KOp against nn.ConvNd: the warm-started op must *be* the convolution, for every setting."""

import itertools
import math
import random

import pytest
import torch
from torch import nn

from chrysalis import KOp, arch_parameters, weight_parameters

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
SIZES = {1: [7, 15, 16, 28, 33], 2: [(7, 15), (16, 16), (28, 28), (33, 7), (15, 16)], 3: [(7, 8, 5), (6, 6, 6)]}
MODES = ["zeros", "circular", "reflect", "replicate"]


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def legal_padding(mode, size, span):
    """Largest padding PyTorch accepts for this mode (zeros/replicate: any; we cap at the span)."""
    if mode == "reflect":
        return min(size) - 1
    if mode == "circular":
        return min(size)
    return span


def conv_cases(count=240, seed=0):
    """A seeded random sample of the full grid of conv settings (every value of every axis occurs)."""
    rng = random.Random(seed)
    cases = []
    while len(cases) < count:
        dims = rng.choice([1, 1, 2, 2, 2, 3])
        size = rng.choice(SIZES[dims])
        size = (size,) if isinstance(size, int) else size
        kernel = tuple(rng.randint(1, 7 if dims < 3 else 3) for _ in range(dims))
        stride = tuple(rng.randint(1, 3) for _ in range(dims))
        dilation = tuple(rng.randint(1, 3) for _ in range(dims))
        mode = rng.choice(MODES)
        span = max(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
        same = rng.random() < 0.15 and all(s == 1 for s in stride)
        padding = "same" if same else rng.randint(0, max(0, legal_padding(mode, size, span)))
        if same and mode == "reflect":
            tot = [d * (k - 1) for k, d in zip(kernel, dilation)]
            if any(t - t // 2 >= s for t, s in zip(tot, size)):
                continue
        pad = [(d * (k - 1)) for k, d in zip(kernel, dilation)] if same else [2 * padding] * dims
        if any(s + p < d * (k - 1) + 1 for s, p, k, d in zip(size, pad, kernel, dilation)):
            continue  # kernel larger than the padded input: nn.ConvNd refuses it too
        cin, cout, groups = rng.choice([(1, 1, 1), (3, 5, 1), (2, 4, 1), (4, 4, 4), (3, 6, 3), (4, 6, 2)])
        cases.append(
            dict(dims=dims, size=size, kernel=kernel, stride=stride, dilation=dilation, padding=padding,
                 mode=mode, cin=cin, cout=cout, groups=groups, bias=rng.random() < 0.7)
        )
    return cases


def make_conv(c, dtype=torch.float32):
    torch.manual_seed(0)
    return CONV[c["dims"]](
        c["cin"], c["cout"], c["kernel"], stride=c["stride"], padding=c["padding"], dilation=c["dilation"],
        groups=c["groups"], bias=c["bias"], padding_mode=c["mode"],
    ).to(dtype)


def check_equal(c, tol=1e-5, dtype=torch.float32, **options):
    conv = make_conv(c, dtype)
    x = torch.randn(2, c["cin"], *c["size"], dtype=dtype)
    op = KOp.from_conv(conv, c["size"], **options)
    ref = conv(x)
    out = op(x)
    assert out.shape == ref.shape
    err = rel(out, ref)
    assert err < tol, (c, options, err)
    return err


CASES = conv_cases()


def test_grid_covers_every_setting():
    seen = {k: {str(c[k]) if k != "kernel" else None for c in CASES} for k in ("dims", "mode", "groups")}
    assert seen["dims"] == {"1", "2", "3"} and seen["mode"] == set(MODES) and len(seen["groups"]) > 2
    flat = lambda key: {v for c in CASES for v in c[key]}  # noqa: E731
    assert flat("kernel") == set(range(1, 8)) and flat("stride") == {1, 2, 3} and flat("dilation") == {1, 2, 3}
    assert any(c["padding"] == "same" for c in CASES) and any(c["padding"] == 0 for c in CASES)
    assert any(c["cin"] == 1 for c in CASES) and any(c["groups"] == c["cin"] > 1 for c in CASES)


@pytest.mark.parametrize("c", CASES, ids=lambda c: f"{c['dims']}d-{c['mode']}-k{c['kernel']}-s{c['stride']}")
def test_warm_start_equals_conv(c):
    check_equal(c)


@pytest.mark.parametrize("c", CASES[:60:3])
@pytest.mark.parametrize("depth", [2, 3])
def test_warm_start_exact_at_every_depth_and_max_kernel(c, depth):
    mk = tuple(k + 2 * (i + 1) for i, k in enumerate(c["kernel"]))
    check_equal(c, depth=depth, max_kernel_size=mk)


@pytest.mark.parametrize("c", CASES[:80:4])
@pytest.mark.parametrize("options", [dict(strategy="butterfly"), dict(strategy="dense"), dict(fixed=True)])
def test_every_strategy_is_exact(c, options):
    check_equal(c, **options)


@pytest.mark.parametrize("c", CASES, ids=lambda c: f"{c['dims']}d-{c['mode']}-k{c['kernel']}-s{c['stride']}")
def test_fixed_op_exact_at_its_smallest_transform_size(c, monkeypatch):
    """The fixed op uses the smallest safe (not power-of-two) size: the edge of wrap-around."""
    import chrysalis.kop as kop

    check_equal(c, fixed=True)  # GEMM-DFT
    monkeypatch.setattr(kop, "FIXED_GEMM_MAX_N", 0)
    check_equal(c, fixed=True)  # torch.fft at the same, often odd or prime, sizes


def test_fixed_transform_sizes():
    from chrysalis.kop import _fixed_size

    resnet = KOp(16, 16, 3, (32, 32), padding=1, fixed=True)
    assert [p.n for p in resnet.plans] == [33, 33]  # reads positions -1 .. 32: 33, not 64
    assert [p.n for p in KOp(16, 16, 3, (32, 32), padding=1).plans] == [64, 64]  # K-matrices: 2^m
    assert _fixed_size(64) == 64 and _fixed_size(67) == 72 and _fixed_size(1031) == 1080  # 5-smooth


@pytest.mark.parametrize("c", CASES[:40:4])
def test_float64(c):
    err = check_equal(c, tol=1e-12, dtype=torch.float64)
    assert err < 1e-12


def test_double_uses_complex128():
    op = KOp(2, 3, 3, (8, 8), dtype=torch.float64)
    assert op.K_in[0].dense().dtype == torch.complex128
    assert op(torch.randn(1, 2, 8, 8, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("depth", [1, 2])
def test_random_architecture_strategies_agree(depth):
    g = torch.Generator().manual_seed(1)
    op = KOp(3, 4, 3, (12, 10), padding=1, init="random", depth=depth, generator=g)
    x = torch.randn(2, 3, 12, 10)
    dense = op(x)
    op.strategy = "butterfly"
    assert rel(op(x), dense) < 1e-5
    assert torch.isfinite(dense).all()


def test_random_init_parameter_counts_and_scale():
    op = KOp(3, 6, 5, (32, 28), init="random", depth=2)
    n_arch = sum(p.numel() for p in arch_parameters(op))
    # per axis 3 K-matrices, each depth * log2(n) factors of n/2 complex 2x2 blocks (8 reals)
    assert n_arch == 3 * 2 * 2 * (5 * 16 * 8)
    assert sum(p.numel() for p in weight_parameters(op)) == 6 * 3 * 25 + 6
    assert {id(p) for p in arch_parameters(op)}.isdisjoint({id(p) for p in weight_parameters(op)})
    assert len(list(op.parameters())) == len(list(arch_parameters(op))) + len(list(weight_parameters(op)))
    conv = KOp(3, 6, 5, (32, 28), init="conv", bias=False)
    with torch.no_grad():
        conv.weight.copy_(op.weight)
    x = torch.randn(8, 3, 32, 28)
    ratio = (op(x) - op.bias.view(1, -1, 1, 1)).std() / conv(x).std()
    assert 0.2 < ratio < 5, ratio  # random arch keeps the conv's output scale


def test_random_kop_learns_a_toy_task():
    """From scratch, a K-op (weights + architecture) fits a target convolution's outputs."""
    torch.manual_seed(0)
    target = nn.Conv1d(2, 2, 3, padding=1)
    op = KOp(2, 2, 3, 16, padding=1, init="random")
    opt = torch.optim.Adam(op.parameters(), lr=3e-2)
    x = torch.randn(64, 2, 16)
    with torch.no_grad():
        y = target(x)
    losses = []
    for _ in range(150):
        opt.zero_grad()
        loss = ((op(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])


def test_fixed_has_no_architecture():
    op = KOp(3, 4, 3, (9, 9), fixed=True)
    assert list(arch_parameters(op)) == [] and op.kmatrices() == {}
    assert op.conv_distance() == 0.0


def test_search_option_freezes_kmatrices():
    op = KOp(2, 2, 3, (8, 8), search=("L",))
    assert all(p.requires_grad for p in op.L.parameters())
    assert not any(p.requires_grad for p in op.K_in.parameters())
    assert not any(p.requires_grad for p in op.K_out.parameters())
    op(torch.randn(1, 2, 8, 8)).sum().backward()
    assert op.K_in[0].twiddle.grad is None and op.L[0].twiddle.grad is not None


def test_gradients_reach_weights_and_all_kmatrices():
    op = KOp(2, 3, 3, (8, 8), padding=1, depth=2)
    op(torch.randn(2, 2, 8, 8)).pow(2).sum().backward()
    for p in op.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_gradcheck_double():
    op = KOp(2, 2, 3, (6, 5), padding=1, init="random", depth=1, dtype=torch.float64)
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(op, (x,))
    tw = op.L[0].twiddle.detach().clone().requires_grad_(True)
    f = lambda t: torch.func.functional_call(op, {"L.0.twiddle": t}, (x,))  # noqa: E731
    assert torch.autograd.gradcheck(f, (tw,))


def test_conv_distance():
    op = KOp(2, 2, 3, (16, 16), depth=2)
    assert op.conv_distance() < 1e-5
    assert KOp(2, 2, 3, (16, 16), init="random").conv_distance() > 0.3


def test_wrong_input_raises_naming_sizes():
    op = KOp(3, 4, 3, (16, 16))
    with pytest.raises(ValueError, match=r"\(16, 16\).*\(15, 16\)"):
        op(torch.randn(1, 3, 15, 16))
    with pytest.raises(ValueError, match="3 input channels, got 2"):
        op(torch.randn(1, 2, 16, 16))
    with pytest.raises(ValueError, match="shape"):
        op(torch.randn(16, 16))


def test_unbatched_input_like_conv():
    conv = nn.Conv2d(2, 3, 3)
    op = KOp.from_conv(conv, (9, 9))
    x = torch.randn(2, 9, 9)
    assert rel(op(x), conv(x)) < 1e-5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kernel_size=20, input_size=(8, 8)), "larger than the padded input"),
        (dict(padding_mode="mirror"), "padding_mode"),
        (dict(stride=0), "stride"),
        (dict(padding=-1), "padding"),
        (dict(padding="same", stride=2), "same"),
        (dict(groups=2, in_channels=3), "divisible"),
        (dict(depth=0), "depth"),
        (dict(init="fourier"), "init"),
        (dict(search=("K_mid",)), "K_mid"),
        (dict(max_kernel_size=1), "max_kernel_size"),
        (dict(input_size=(8, 8, 8, 8)), "1, 2 or 3"),
        (dict(padding_mode="reflect", padding=8), "reflect"),
    ],
)
def test_bad_settings_raise(kwargs, match):
    base = dict(in_channels=2, out_channels=2, kernel_size=3, input_size=(8, 8))
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        KOp(**base)


def test_state_dict_round_trip_and_repr():
    a = KOp(3, 4, 3, (10, 12), init="random", depth=2, max_kernel_size=5, padding=2)
    b = KOp(3, 4, 3, (10, 12), init="conv", depth=2, max_kernel_size=5, padding=2)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 10, 12)
    assert torch.equal(a(x), b(x))
    r = repr(a)
    for text in ("3, 4", "input_size=(10, 12)", "max_kernel_size=(5, 5)", "depth=2", "init='random'"):
        assert text in r


def test_max_kernel_size_lets_the_kernel_grow():
    conv = nn.Conv2d(1, 1, 3, padding=2, bias=False)
    op = KOp.from_conv(conv, (12, 12), max_kernel_size=5)
    assert op.weight.shape == (1, 1, 5, 5)
    assert op.weight[..., 0, :].abs().sum() == 0  # new taps start at zero
    op(torch.randn(1, 1, 12, 12)).pow(2).sum().backward()
    assert op.weight.grad[..., 0, :].abs().sum() > 0  # ... and receive gradient
    with torch.no_grad():  # a 5x5 kernel through the K-op equals a 5x5 conv with centred taps
        op.weight.normal_()
        big = nn.Conv2d(1, 1, 5, padding=3, bias=False)
        big.weight.copy_(op.weight)
    x = torch.randn(1, 1, 12, 12)
    assert rel(op(x), big(x)) < 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_matches_conv():
    conv = nn.Conv2d(3, 6, 5).cuda()
    op = KOp.from_conv(conv, (32, 32), depth=2)
    x = torch.randn(4, 3, 32, 32, device="cuda")
    assert rel(op(x), conv(x)) < 1e-4


def test_all_padding_values_for_one_shape():
    """Padding 0 up to the largest legal value, for every mode, on one non-power-of-two shape."""
    for mode in MODES:
        for p in range(0, legal_padding(mode, (7,), 7) + 1):
            c = dict(dims=1, size=(7,), kernel=(4,), stride=(2,), dilation=(2,), padding=p, mode=mode,
                     cin=2, cout=3, groups=1, bias=True)
            check_equal(c)


def test_general_groups_and_depthwise_multiplier():
    for cin, cout, g in [(4, 8, 2), (6, 6, 3), (3, 9, 3)]:
        c = dict(dims=2, size=(9, 11), kernel=(3, 2), stride=(1, 2), dilation=(2, 1), padding=1, mode="zeros",
                 cin=cin, cout=cout, groups=g, bias=False)
        check_equal(c)


def test_power_of_two_sizes_need_no_extra_padding_when_circular():
    op = KOp(1, 1, 3, (16,), padding=1, padding_mode="circular")
    assert op.plans[0].n in (16, 32) and math.log2(op.plans[0].n).is_integer()
    assert list(itertools.chain(op.plans[0].out_rows)) == list(range(16))
