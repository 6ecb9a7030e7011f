"""The quick benchmark runs and writes the documented JSON structure (no timing assertions)."""

import json

from chrysalis import bench
from chrysalis.cli import main


def test_quick_benchmark_structure(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--out", str(out), "--threads", "1"]) == 0  # through the CLI
    assert "x conv" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["quick"] is True and data["machine"]["threads"] == 1
    for key in ("cpu", "torch", "cores"):
        assert key in data["machine"]
    variants = {r["variant"] for r in data["layers"]}
    assert variants == {"conv", "fft", "kop-d1", "kop-d3"}
    for r in data["layers"]:
        for key in ("fwd_ms", "fwd_bwd_ms", "saved_mb", "fwd_ratio", "fwd_bwd_ratio", "mem_ratio"):
            assert r[key] > 0
        if r["variant"] == "conv":
            assert r["fwd_ratio"] == r["fwd_bwd_ratio"] == r["mem_ratio"] == 1.0
    assert [r["n"] for r in data["kmatrix"]] == sorted(r["n"] for r in data["kmatrix"])
    assert all(r["butterfly_ms"] > 0 and r["fft_ms"] > 0 for r in data["kmatrix"])
    assert {r["variant"] for r in data["lenet_step"]} == {"conv", "fft", "kop-d1", "kop-d3"}


def test_saved_bytes_counts_unique_storages():
    import torch

    x = torch.randn(1000, requires_grad=True)
    n = bench.saved_bytes(lambda: (x * x).sum())  # saves x (twice, one storage) + a scalar output
    assert 4000 <= n <= 4000 + 64


def test_bench_cli_rejects_bad_threads(capsys):
    assert main(["bench", "--threads", "0"]) == 2
    err = capsys.readouterr().err
    assert "--threads" in err and "Traceback" not in err
