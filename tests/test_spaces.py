"""chrysalis.spaces: backbones, registry, and create_space's conv / kop / fft variants."""

from __future__ import annotations

import sys
import textwrap
import types

import pytest
import torch
from torch import nn

import chrysalis as ch
from chrysalis import spaces
from chrysalis.spaces import create_space, example_input, get_builder, list_spaces, register_space


def image_info(c: int = 3, h: int = 32, w: int = 32, classes: int = 10) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        name="img", kind="image", input_shape=(c, h, w), num_classes=classes, vocab_size=None,
        class_names=(), options={},
    )


def text_info(seq_len: int = 20, vocab: int = 50, classes: int = 4) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        name="txt", kind="text", input_shape=(seq_len,), num_classes=classes, vocab_size=vocab,
        class_names=(), options={},
    )


# name -> (info, space_options); small but real configurations of every built-in backbone.
CASES = {
    "lenet": (image_info(3, 32, 32), {}),
    "kimcnn": (text_info(20, 50), {}),
    "spherical": (image_info(1, 60, 60), {}),
    "resnet20": (image_info(3, 32, 32), {}),
}


def batch(info, b: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if info.kind == "text":
        return torch.randint(0, info.vocab_size, (b, *info.input_shape), generator=g)
    return torch.randn(b, *info.input_shape, generator=g)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def build(name: str, op: str, seed: int = 0, **kop_options) -> nn.Module:
    info, opts = CASES[name]
    torch.manual_seed(seed)
    return create_space(name, info, op, space_options=opts, **kop_options).eval()


def n_weights(model: nn.Module) -> int:
    return sum(p.numel() for p in ch.weight_parameters(model))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Batches of 2: intra-op threads only add synchronisation (and thrash on a busy 2-core machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def conv_models() -> dict[str, nn.Module]:
    return {name: build(name, "conv") for name in CASES}


@pytest.fixture(scope="module")
def conv_outputs(conv_models) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {name: m(batch(CASES[name][0])) for name, m in conv_models.items()}


def test_registry_lists_builtins():
    assert {"lenet", "kimcnn", "spherical", "resnet20"} <= set(list_spaces())
    assert "butterflenet" in list_spaces(aliases=True)
    assert "butterflenet" not in list_spaces()
    assert get_builder("ButterfLeNet") is get_builder("lenet")


@pytest.mark.parametrize("name", list(CASES))
def test_conv_backbone_shapes(name, conv_models, conv_outputs):
    info, _ = CASES[name]
    assert conv_outputs[name].shape == (2, info.num_classes)
    assert torch.isfinite(conv_outputs[name]).all()
    assert not list(ch.arch_parameters(conv_models[name]))
    assert not list(ch.kops(conv_models[name]))


@pytest.mark.parametrize("name", list(CASES))
def test_kop_warm_start_equals_conv(name, conv_models, conv_outputs):
    kop = build(name, "kop", init="conv")
    convs = [n for n, m in conv_models[name].named_modules() if isinstance(m, nn.Conv1d | nn.Conv2d)]
    assert sorted(n for n, _ in ch.kops(kop)) == sorted(convs)
    assert not any(isinstance(m, nn.Conv1d | nn.Conv2d) for m in kop.modules())
    assert list(ch.arch_parameters(kop))
    with torch.no_grad():
        out = kop(batch(CASES[name][0]))
    assert rel_err(out, conv_outputs[name]) < 1e-5
    assert n_weights(kop) == n_weights(conv_models[name])


@pytest.mark.parametrize("name", list(CASES))
def test_fft_equals_conv(name, conv_models, conv_outputs):
    fft = build(name, "fft")
    assert len(list(ch.kops(fft))) == len(
        [m for m in conv_models[name].modules() if isinstance(m, nn.Conv1d | nn.Conv2d)]
    )
    assert all(op.fixed for _, op in ch.kops(fft))
    assert not list(ch.arch_parameters(fft))
    with torch.no_grad():
        out = fft(batch(CASES[name][0]))
    assert rel_err(out, conv_outputs[name]) < 1e-5
    assert n_weights(fft) == n_weights(conv_models[name])


@pytest.mark.parametrize("name", list(CASES))
def test_kop_random_init(name, conv_models):
    kop = build(name, "kop", init="random")
    info, _ = CASES[name]
    with torch.no_grad():
        out = kop(batch(info))
    assert out.shape == (2, info.num_classes)
    assert torch.isfinite(out).all()
    assert len(list(ch.arch_parameters(kop))) > 0
    assert all(op.init == "random" for _, op in ch.kops(kop))
    assert n_weights(kop) == n_weights(conv_models[name])


@pytest.mark.parametrize("name", ["lenet", "kimcnn", "spherical"])
def test_conv_state_dict_loads_into_kop(name, conv_models, conv_outputs):
    # Weights of a conv model drop into a K-op model (built from another seed) under the same names.
    kop = build(name, "kop", seed=123, init="conv")
    missing, unexpected = kop.load_state_dict(conv_models[name].state_dict(), strict=False)
    assert not unexpected
    assert missing and all(any(k in key.split(".") for k in ("K_in", "L", "K_out")) for key in missing)
    with torch.no_grad():
        assert rel_err(kop(batch(CASES[name][0])), conv_outputs[name]) < 1e-5


def test_lenet_gradients_reach_weights_and_architecture():
    kop = build("lenet", "kop", init="conv", depth=2).train()
    loss = kop(batch(CASES["lenet"][0])).logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is not None for p in ch.arch_parameters(kop) if p.requires_grad)
    assert all(p.grad is not None for p in ch.weight_parameters(kop))


def test_kop_options_reach_the_layers():
    kop = build("lenet", "kop", depth=2, search=("L",), overrides={"conv2": {"depth": 3}})
    ops = dict(ch.kops(kop))
    assert ops["conv1"].depth == 2 and ops["conv2"].depth == 3
    assert all(op.search == ("L",) for op in ops.values())
    kop = build("lenet", "kop", include="conv1")
    assert [n for n, _ in ch.kops(kop)] == ["conv1"] and isinstance(kop.conv2, nn.Conv2d)


def test_create_space_does_not_seed():
    info = image_info(1, 28, 28)
    a, b = create_space("lenet", info), create_space("lenet", info)
    assert not torch.equal(a.conv1.weight, b.conv1.weight)
    torch.manual_seed(5)
    a = create_space("lenet", info)
    torch.manual_seed(5)
    b = create_space("lenet", info, op="kop")
    assert torch.equal(a.conv1.weight, b.conv1.weight)


def test_lenet_sizes():
    x = torch.randn(2, 1, 28, 28)
    torch.manual_seed(0)
    net = create_space("butterflenet", image_info(1, 28, 28), op="kop")
    assert net(x).shape == (2, 10)
    assert net.fc1.in_features == 16 * 4 * 4
    assert create_space("lenet", image_info(3, 32, 32)).fc1.in_features == 16 * 5 * 5
    small = create_space("lenet", image_info(1, 8, 8), space_options={"padding": 2})
    assert small(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match="padding=2"):
        create_space("lenet", image_info(1, 8, 8))


def test_kimcnn_options_and_structure():
    info = text_info(12, 30, classes=3)
    net = create_space("kimcnn", info, space_options={"embed_dim": 16, "num_filters": 8, "widths": (2, 3)})
    assert net.embedding.embedding_dim == 16 and net.embedding.padding_idx == 0
    assert [c.kernel_size for c in net.convs] == [(2,), (3,)]
    assert net.fc.in_features == 16 and net.dropout.p == 0.5
    assert net(torch.randint(0, 30, (2, 12))).shape == (2, 3)
    default = create_space("kimcnn", text_info(20, 50))
    assert [c.out_channels for c in default.convs] == [100, 100, 100]
    assert [c.in_channels for c in default.convs] == [300, 300, 300]
    with pytest.raises(ValueError, match="seq_len"):
        create_space("kimcnn", text_info(4, 30))
    with pytest.raises(ValueError, match="text data"):
        create_space("kimcnn", image_info())
    with pytest.raises(ValueError, match="image data"):
        create_space("lenet", text_info())


def test_spherical_longitude_padding_is_circular():
    torch.manual_seed(0)
    net = create_space("spherical", image_info(1, 60, 60), space_options={"channels": (4, 8)}).eval()
    first = net.features[:2]  # LongitudePad + conv 5x5 stride 3
    x = torch.randn(1, 1, 60, 60)
    with torch.no_grad():
        y, y_rolled = first(x), first(torch.roll(x, 3, dims=-1))
    assert y.shape == (1, 4, 20, 20)
    assert torch.allclose(torch.roll(y, 1, dims=-1), y_rolled, atol=1e-6)  # periodic in longitude
    assert net(x).shape == (1, 10)
    plain = create_space("spherical", image_info(1, 60, 60), space_options={"longitude_padding": False})
    assert plain.fc.in_features == 64 * 5 * 5


def test_resnet20_structure():
    net = create_space("resnet20", image_info())
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19 and all(c.kernel_size == (3, 3) for c in convs)  # option A: no 1x1 convs
    assert sum(p.numel() for p in net.parameters()) == 269_722  # the paper's 0.27M
    b = create_space("resnet20", image_info(), space_options={"shortcut": "B"})
    assert len([m for m in b.modules() if isinstance(m, nn.Conv2d)]) == 21
    with pytest.raises(ValueError, match="shortcut"):
        create_space("resnet20", image_info(), space_options={"shortcut": "C"})


def test_unknown_names_and_options_fail_clearly():
    with pytest.raises(ValueError, match=r"unknown space 'lenett'.*'lenet'.*Known spaces: .*resnet20"):
        create_space("lenett", image_info())
    with pytest.raises(ValueError, match="op must be one of"):
        create_space("lenet", image_info(), op="kopp")
    with pytest.raises(ValueError, match="op='kop'"):
        create_space("lenet", image_info(), op="conv", init="random")
    with pytest.raises(ValueError, match="space_options"):
        create_space("lenet", image_info(), op="kop", padding=2)
    with pytest.raises(ValueError, match="op='fft'"):
        create_space("lenet", image_info(), op="kop", fixed=True)
    with pytest.raises(ValueError, match="cannot import"):
        create_space("no_such_module_xyz:build", image_info())
    with pytest.raises(ValueError, match="no attribute"):
        create_space("chrysalis.spaces:no_such_builder", image_info())


@pytest.fixture
def clean_registry():
    builders, aliases = dict(spaces._BUILDERS), dict(spaces._ALIASES)
    yield
    spaces._BUILDERS.clear()
    spaces._BUILDERS.update(builders)
    spaces._ALIASES.clear()
    spaces._ALIASES.update(aliases)


def test_register_user_space(clean_registry):
    @register_space("tiny", aliases=("tiny-net",))
    def build_tiny(info, width: int = 4) -> nn.Module:
        c, h, w = info.input_shape
        return nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(width * h * w, info.num_classes)
        )

    assert "tiny" in list_spaces() and "tiny-net" in list_spaces(aliases=True)
    info = image_info(1, 8, 8)
    torch.manual_seed(0)
    conv = create_space("tiny", info, space_options={"width": 3}).eval()
    torch.manual_seed(0)
    kop = create_space("tiny-net", info, op="kop", space_options={"width": 3}).eval()
    x = torch.randn(2, 1, 8, 8)
    assert isinstance(kop[0], ch.KOp) and kop[0].out_channels == 3
    with torch.no_grad():
        assert rel_err(kop(x), conv(x)) < 1e-5
    with pytest.raises(ValueError, match="already registered"):
        register_space("tiny")(build_tiny)
    with pytest.raises(ValueError, match="already registered"):
        register_space("LeNet")(build_tiny)
    register_space("tiny", overwrite=True)(build_tiny)
    with pytest.raises(ValueError, match="':'"):
        register_space("a:b")


def test_import_path_space(tmp_path, monkeypatch):
    (tmp_path / "user_space_mod.py").write_text(textwrap.dedent("""
        from torch import nn

        def build(info, hidden=5):
            return nn.Sequential(
                nn.Conv1d(1, hidden, 3), nn.ReLU(), nn.Flatten(),
                nn.Linear(hidden * (info.input_shape[-1] - 2), info.num_classes),
            )
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    info = types.SimpleNamespace(kind="image", input_shape=(1, 16), num_classes=3, vocab_size=None)
    torch.manual_seed(0)
    conv = create_space("user_space_mod:build", info, space_options={"hidden": 2}).eval()
    torch.manual_seed(0)
    kop = create_space("user_space_mod:build", info, op="kop").eval()
    assert kop[0].out_channels == 5 and isinstance(kop[0], ch.KOp)
    torch.manual_seed(0)
    fft = create_space("user_space_mod:build", info, op="fft").eval()
    x = torch.randn(2, 1, 16)
    with torch.no_grad():
        assert conv(x).shape == (2, 3)
        assert fft(x).shape == (2, 3)
    sys.modules.pop("user_space_mod", None)


def test_example_input():
    x = example_input(image_info(3, 8, 9))
    assert x.shape == (2, 3, 8, 9) and x.dtype == torch.float32
    t = example_input(text_info(7, 10), batch=3)
    assert t.shape == (3, 7) and t.dtype == torch.int64 and (t == 1).all()


def test_real_dataset_info_class():
    base = pytest.importorskip("chrysalis.data.base")
    info = base.DatasetInfo(name="x", kind="image", input_shape=(1, 28, 28), num_classes=10)
    torch.manual_seed(0)
    net = create_space("lenet", info, op="fft")
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)
