"""chrysalis plot: one valid, non-trivial PNG per expected figure; conv runs get only the curves."""

from __future__ import annotations

import struct

import pytest
import torch

from chrysalis.analysis.plots import (
    compare_figure,
    effective_operators,
    expected_figures,
    impulse_response,
    locality,
    plot_run,
)
from chrysalis.cli import main
from chrysalis.kop import KOp
from chrysalis.search import run_search
from chrysalis.search.config import SearchConfig

RUN = dict(data="permuted-digits", space="lenet", space_options={"padding": 2}, epochs=2, batch_size=32,
           limit_train=64, limit_val=32, quiet=True, tensorboard=False, threads=1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("plot_runs")
    # conv1 only as a K-op (keeps the test fast); conv2 stays a convolution
    run_search(SearchConfig(**RUN, op="kop", method="joint", init="conv", arch_lr=1e-2,
                            kop_options={"include": "conv1"}, out=str(root / "kop")))
    run_search(SearchConfig(**RUN, op="conv", method="fixed", out=str(root / "conv")))
    return root


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_kop_run_figures(runs):
    paths = plot_run(runs / "kop")
    assert all(p.parent == runs / "kop" / "plots" for p in paths)
    names = [p.name for p in paths]
    assert names == expected_figures(runs / "kop") == [
        "curves.png", "conv_distance.png", "kop_conv1_impulse.png", "kop_conv1_operators.png",
        "kop_conv1_kmatrices.png", "permutation_conv1.png"]
    assert sorted(p.name for p in (runs / "kop" / "plots").iterdir()) == sorted(names)
    for p in paths:
        w, h = png_size(p)
        assert w >= 400 and h >= 300 and p.stat().st_size > 10_000, p.name


def test_conv_run_gets_only_curves(runs, tmp_path):
    paths = plot_run(runs / "conv", tmp_path / "figs")
    assert [p.name for p in paths] == ["curves.png"]
    assert png_size(paths[0])[0] >= 400 and paths[0].stat().st_size > 10_000


def test_warm_start_operators_are_the_convs():
    op = KOp(1, 2, 3, (8, 8), padding=1).double()
    learned, conv = effective_operators(op, 0, [0, 1, 2])
    for m, c in zip(learned, conv):
        assert torch.allclose(m, c, atol=1e-6)
    # a conv's impulse response is its flipped filter around the impulse
    y = impulse_response(op, 1, (8, 8), 0)
    assert torch.allclose(y[0, 3:6, 3:6], op.weight[0, 0].flip(0, 1), atol=1e-6)


def test_locality_counts_energy_inside_the_receptive_field():
    # a conv is fully local; a 5x5 filter around a 3x3 conv's kernel puts energy outside it:
    # taps 1 on the central 3x3 (energy 9) and 2 on one outer tap (energy 4) -> 9 / 13
    torch.manual_seed(0)
    assert locality(KOp(2, 3, 3, (12, 12), padding=1, depth=2).double()) == pytest.approx(1.0, abs=1e-9)
    op = KOp(1, 1, 3, (16, 16), padding=2, max_kernel_size=5, fixed=True, bias=False).double()
    with torch.no_grad():
        op.weight.zero_()
        op.weight[0, 0, 1:4, 1:4] = 1.0
        op.weight[0, 0, 0, 4] = 2.0
    assert locality(op) == pytest.approx(9 / 13, abs=1e-9)
    # strided and grouped: the receptive field is where the strided conv can see the impulse
    assert locality(KOp(4, 4, 3, (15, 15), stride=2, groups=2).double()) == pytest.approx(1.0, abs=1e-9)
    # a random (from scratch) op spreads its response over the whole output
    assert locality(KOp(1, 2, 3, (16, 16), padding=1, init="random").double()) < 0.5


def test_cli_plot(runs, tmp_path, capsys):
    assert main(["plot", str(runs / "conv"), "--out", str(tmp_path / "p")]) == 0
    assert "1 figures" in capsys.readouterr().out and (tmp_path / "p" / "curves.png").is_file()
    assert main(["plot", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("chrysalis: error:") and "config.yaml" in err and "Traceback" not in err


def test_compare_draws_each_runs_accuracy(runs, tmp_path, capsys):
    import json

    from chrysalis.analysis import AnalysisError

    dirs = sorted(p.parent for p in runs.rglob("metrics.jsonl"))
    assert len(dirs) >= 2
    fig = compare_figure(dirs)
    ax_train, ax_val = fig.axes[:2]
    for d, line in zip(dirs, ax_val.get_lines()):
        metrics = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines() if x.strip()]
        assert list(line.get_ydata()) == [m["val_acc"] for m in metrics]
        assert line.get_label() != "" and line.get_label() in {t.get_text() for t in ax_val.get_legend().get_texts()}
    assert len({line.get_label() for line in ax_val.get_lines()}) == len(dirs)  # labels tell runs apart
    with pytest.raises(AnalysisError, match="labels"):
        compare_figure(dirs, labels=["one"])
    assert main(["plot", *map(str, dirs[:2]), "--compare-only", "--out", str(tmp_path / "cmp")]) == 0
    assert "2 runs compared" in capsys.readouterr().out and (tmp_path / "cmp" / "compare.png").stat().st_size > 10_000
    assert main(["plot", str(dirs[0]), str(tmp_path), "--compare-only", "--out", str(tmp_path / "cmp")]) == 1
    assert "Traceback" not in capsys.readouterr().err
