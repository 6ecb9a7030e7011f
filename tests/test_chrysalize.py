"""chrysalize: a copy of the model with every conv a K-op, equal at warm start."""

import pytest
import torch
from torch import nn

import chrysalis as ch


def lenet():
    return nn.Sequential(
        nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.short(x))


def resnet20_shaped():
    layers = [nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    cin = 16
    for cout, stride in [(16, 1), (32, 2), (64, 2)]:
        for i in range(3):
            layers.append(Block(cin, cout, stride if i == 0 else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)]
    return nn.Sequential(*layers)


def count(params):
    return sum(p.numel() for p in params)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("make", [lenet, resnet20_shaped])
@pytest.mark.parametrize("depth", [1, 3])
def test_warm_start_model_equals_original(make, depth):
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(4, 3, 32, 32)
    new = ch.chrysalize(model, x, depth=depth).eval()
    assert rel(new(x), model(x)) < 1e-5
    assert count(ch.weight_parameters(new)) == count(model.parameters())
    assert count(ch.arch_parameters(new)) > 0
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(list(ch.kops(new))) == len(convs)


def test_arch_parameter_count_grows_with_depth_and_is_zero_when_fixed():
    model, x = lenet(), torch.randn(2, 3, 32, 32)
    n = [count(ch.arch_parameters(ch.chrysalize(model, x, depth=d))) for d in (1, 2, 3)]
    assert n[0] < n[1] < n[2] and n[2] == 3 * n[0]
    fixed = ch.chrysalize(model, x, fixed=True)
    assert count(ch.arch_parameters(fixed)) == 0
    assert rel(fixed.eval()(x), model.eval()(x)) < 1e-5


def test_original_is_untouched():
    torch.manual_seed(0)
    model = resnet20_shaped().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    new = ch.chrysalize(model, torch.randn(8, 3, 32, 32))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics included
    assert all(isinstance(m, nn.Conv2d) for m in model.modules() if "conv" in type(m).__name__.lower())
    assert new.training and all(m.training for m in new.modules())  # train/eval flags preserved


def test_layer_selection_and_overrides():
    model, x = lenet(), torch.randn(2, 3, 32, 32)
    only_first = ch.chrysalize(model, x, include="0")
    assert isinstance(only_first[0], ch.KOp) and isinstance(only_first[3], nn.Conv2d)
    not_first = ch.chrysalize(model, x, exclude=["0"])
    assert isinstance(not_first[0], nn.Conv2d) and isinstance(not_first[3], ch.KOp)
    mixed = ch.chrysalize(
        model, x, init="random", overrides={"3": {"depth": 2, "search": ("L",), "max_kernel_size": 7}}
    )
    assert mixed[0].depth == 1 and mixed[0].init == "random"
    assert mixed[3].depth == 2 and mixed[3].search == ("L",) and mixed[3].max_kernel_size == (7, 7)
    assert not any(p.requires_grad for p in mixed[3].K_in.parameters())
    assert all(p.requires_grad for p in mixed[3].L.parameters())


def test_input_sizes_come_from_the_example():
    model = lenet()
    new = ch.chrysalize(model, torch.randn(1, 3, 32, 32))
    assert new[0].input_size == (32, 32) and new[3].input_size == (14, 14)
    with pytest.raises(ValueError, match=r"\(32, 32\).*\(28, 28\)"):
        new[0](torch.randn(1, 3, 28, 28))


def test_conv_used_at_two_sizes_is_refused():
    conv = nn.Conv2d(1, 1, 3, padding=1)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, x):
            return self.conv(x).mean() + self.conv(x[..., ::2, ::2]).mean()

    with pytest.raises(ValueError, match="sizes"):
        ch.chrysalize(Twice(), torch.randn(1, 1, 8, 8))


def test_unused_conv_warns_and_stays():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.spare = nn.Conv1d(1, 1, 3), nn.Conv1d(1, 1, 3)

        def forward(self, x):
            return self.used(x)

    with pytest.warns(UserWarning, match="spare"):
        new = ch.chrysalize(Unused(), torch.randn(1, 1, 10))
    assert isinstance(new.used, ch.KOp) and isinstance(new.spare, nn.Conv1d)


def test_not_a_module():
    with pytest.raises(TypeError):
        ch.chrysalize(lambda x: x, torch.zeros(1))
    with pytest.raises(TypeError):
        ch.KOp.from_conv(nn.Linear(2, 2), 4)


def test_match_conv_gain_restores_the_conv_output_scale():
    torch.manual_seed(0)
    model = lenet().eval()
    x = torch.randn(16, 3, 32, 32)
    warm = ch.chrysalize(model, x, depth=2)
    factors = ch.match_conv_gain_(warm, generator=torch.Generator().manual_seed(0))
    assert all(abs(f - 1) < 1e-4 for f in factors.values())  # the conv itself: nothing to change
    loud = ch.chrysalize(model, x, depth=2)
    with torch.no_grad():
        loud[0].L[0].twiddle[0].mul_(2 ** (1 / 5))  # first butterfly, n=32: 5 factors -> this K-matrix gains x2
    before = loud[0].weight.clone()
    gains = ch.conv_gains(loud, generator=torch.Generator().manual_seed(0))
    assert abs(gains["0"] - 2) < 0.2 and abs(gains["3"] - 1) < 1e-4  # measured, nothing changed
    assert torch.equal(loud[0].weight, before)
    factors = ch.match_conv_gain_(loud, generator=torch.Generator().manual_seed(0))
    assert factors["0"] == pytest.approx(1 / gains["0"])
    assert abs(factors["0"] - 0.5) < 0.05 and abs(factors["3"] - 1) < 1e-4
    assert torch.allclose(loud[0].weight, before * factors["0"])
    conv_out = model[0](x) - model[0].bias.view(1, -1, 1, 1)
    kop_out = loud[0](x) - loud[0].bias.view(1, -1, 1, 1)
    assert abs(kop_out.std() / conv_out.std() - 1) < 0.1
