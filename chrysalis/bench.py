"""Benchmarks: nn.ConvNd vs the fixed-FFT K-op vs searchable K-ops, all in one process.

    from chrysalis.bench import run_benchmarks
    results = run_benchmarks(quick=False, threads=1)

or from the shell `chrysalis bench [--quick] [--out FILE.json] [--threads N]` (which calls
`cli_entry`) or `python benchmarks/run.py`.

What is measured (see docs/PERFORMANCE.md):
- time: every variant of a case is timed interleaved with the others (round-robin, after a
  warm-up), so machine noise hits all of them alike; the median of the repeats is reported, and
  ratios are taken against the conv measured in the same rounds. "fwd" is a forward pass under
  `torch.no_grad()`, "fwd_bwd" a forward pass plus `.sum().backward()` (input and parameter
  gradients).
- memory: bytes of the tensors autograd saves for backward during one training forward pass
  (unique storages, via `torch.autograd.graph.saved_tensors_hooks`) plus the output: what a
  training step holds at its peak besides the parameters. Reliable on CPU, where the allocator
  gives no peak figure; on CUDA `torch.cuda.max_memory_allocated` is reported as well.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
import types
from collections.abc import Callable

import torch
from torch import nn

from .kmatrix import KMatrix
from .kop import KOp

__all__ = ["run_benchmarks", "cli_entry", "format_table", "machine_info"]


# -- measurement -------------------------------------------------------------------------------
def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds of each function, timed round-robin so that noise is shared."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            times[k].append(_timed(f))
    return {k: statistics.median(v) for k, v in times.items()}


def saved_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes autograd saves for backward while running `fn` (unique storages) plus its output."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.layout == torch.strided and t.device.type != "meta":
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()) + out.untyped_storage().nbytes()


def _fwd(m: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def f():
        with torch.no_grad():
            return m(x)

    return f


def _fwd_bwd(m: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def f():
        m.zero_grad(set_to_none=True)
        x.grad = None
        m(x).sum().backward()

    return f


# -- cases ---------------------------------------------------------------------------------------
def _layer_cases(quick: bool) -> list[dict]:
    """(name, conv factory, input shape) of the layers the paper's spaces use."""
    if quick:
        return [
            dict(name="lenet1-tiny", conv=lambda: nn.Conv2d(3, 6, 5), shape=(4, 3, 16, 16)),
            dict(name="kimcnn-tiny", conv=lambda: nn.Conv1d(8, 4, 5), shape=(4, 8, 16)),
            dict(name="3d-tiny", conv=lambda: nn.Conv3d(2, 2, 3, padding=1), shape=(2, 2, 4, 4, 4)),
        ]
    return [
        dict(name="lenet1 3->6 5x5 32x32 b128", conv=lambda: nn.Conv2d(3, 6, 5), shape=(128, 3, 32, 32)),
        dict(name="lenet2 6->16 5x5 14x14 b128", conv=lambda: nn.Conv2d(6, 16, 5), shape=(128, 6, 14, 14)),
        dict(name="kimcnn 300->100 w5 L64 b50", conv=lambda: nn.Conv1d(300, 100, 5), shape=(50, 300, 64)),
        dict(
            name="resnet20 16->16 3x3 p1 32x32 b128",
            conv=lambda: nn.Conv2d(16, 16, 3, padding=1),
            shape=(128, 16, 32, 32),
        ),
        dict(name="3d 4->8 3x3x3 p1 16^3 b8", conv=lambda: nn.Conv3d(4, 8, 3, padding=1), shape=(8, 4, 16, 16, 16)),
    ]


def _variants(conv: nn.Module, size: tuple[int, ...]) -> dict[str, nn.Module]:
    return {
        "conv": conv,
        "fft": KOp.from_conv(conv, size, fixed=True),
        "kop-d1": KOp.from_conv(conv, size, depth=1),
        "kop-d3": KOp.from_conv(conv, size, depth=3),
    }


def bench_layers(quick: bool, repeats: int) -> list[dict]:
    rows = []
    for case in _layer_cases(quick):
        torch.manual_seed(0)
        conv = case["conv"]()
        x = torch.randn(case["shape"], requires_grad=True)
        mods = _variants(conv, tuple(case["shape"][2:]))
        fwd = _interleaved({k: _fwd(m, x) for k, m in mods.items()}, repeats)
        fb = _interleaved({k: _fwd_bwd(m, x) for k, m in mods.items()}, repeats)
        mem = {k: saved_bytes(lambda m=m, x=x: m(x)) for k, m in mods.items()}
        for k, m in mods.items():  # the conv row shows the K-op's transform size
            n = [p.n for p in (m if isinstance(m, KOp) else mods["kop-d1"]).plans]
            rows.append(
                dict(
                    case=case["name"], variant=k, n=n,
                    fwd_ms=fwd[k] * 1e3, fwd_bwd_ms=fb[k] * 1e3, saved_mb=mem[k] / 2**20,
                    fwd_ratio=fwd[k] / fwd["conv"], fwd_bwd_ratio=fb[k] / fb["conv"],
                    mem_ratio=mem[k] / mem["conv"],
                )
            )
    return rows


def bench_kmatrix(quick: bool, repeats: int) -> list[dict]:
    """KMatrix(n).forward (factor by factor) and its dense GEMM vs torch.fft.fft, complex64."""
    sizes = [8, 64, 256] if quick else [2**k for k in range(3, 13)]
    total = 2**12 if quick else 2**18  # complex entries per call: batch = total / n
    rows = []
    for n in sizes:
        torch.manual_seed(0)
        km = KMatrix(n, init="random")
        x = torch.randn(max(1, total // n), n, dtype=torch.complex64)
        with torch.no_grad():
            dense_t = km.dense().t().contiguous()
        fns = {  # defaults bind this iteration's tensors
            "fft": lambda x=x: torch.fft.fft(x),
            "butterfly": lambda x=x, km=km: km(x),
            "dense": lambda x=x, d=dense_t: x @ d,
        }
        with torch.no_grad():
            t = _interleaved(fns, repeats)
        rows.append(
            dict(
                n=n, batch=x.shape[0], fft_ms=t["fft"] * 1e3, butterfly_ms=t["butterfly"] * 1e3,
                dense_ms=t["dense"] * 1e3, butterfly_ratio=t["butterfly"] / t["fft"],
                dense_ratio=t["dense"] / t["fft"],
                butterfly_ns_per_nlogn=t["butterfly"] * 1e9 / (x.shape[0] * n * math.log2(n)),
            )
        )
    return rows


def bench_lenet_step(quick: bool, repeats: int) -> list[dict]:
    """One SGD training step of LeNet (conv) vs ButterfLeNet (K-ops, depth 1 and 3) vs FFT."""
    from .spaces import create_space

    size = 16 if quick else 32
    batch = 8 if quick else 128
    info = types.SimpleNamespace(
        kind="image", input_shape=(3, size, size), num_classes=10, vocab_size=None, name="bench"
    )
    nets = {}
    for key, op, opts in (("conv", "conv", {}), ("fft", "fft", {}), ("kop-d1", "kop", {"depth": 1}),
                          ("kop-d3", "kop", {"depth": 3})):
        torch.manual_seed(0)
        nets[key] = create_space("lenet", info, op=op, **opts)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 10, (batch,))
    loss_fn = nn.CrossEntropyLoss()

    def step_fn(net):
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

        def step():
            opt.zero_grad(set_to_none=True)
            loss_fn(net(x), y).backward()
            opt.step()

        return step

    t = _interleaved({k: step_fn(n) for k, n in nets.items()}, repeats)
    mem = {k: saved_bytes(lambda n=n: loss_fn(n(x), y)) for k, n in nets.items()}
    return [
        dict(variant=k, step_ms=t[k] * 1e3, step_ratio=t[k] / t["conv"], saved_mb=mem[k] / 2**20,
             mem_ratio=mem[k] / mem["conv"])
        for k in nets
    ]


# -- driver -------------------------------------------------------------------------------------
def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return dict(
        cpu=cpu, cores=os.cpu_count(), threads=torch.get_num_threads(), torch=torch.__version__,
        python=platform.python_version(), mkl=torch.backends.mkl.is_available(),
        platform=platform.platform(),
    )


def run_benchmarks(quick: bool = False, threads: int | None = None) -> dict:
    """Run every benchmark in this process; returns a JSON-ready dict (see the module doc)."""
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    repeats = 5 if quick else 9
    try:
        t0 = time.perf_counter()
        results = dict(
            machine=machine_info(),
            quick=bool(quick),
            repeats=repeats,
            statistic="median of repeats, interleaved; ratios against the conv of the same rounds",
            memory="bytes of tensors saved for backward in one training forward (+ output)",
            layers=bench_layers(quick, repeats),
            kmatrix=bench_kmatrix(quick, repeats),
            lenet_step=bench_lenet_step(quick, repeats),
        )
        results["seconds"] = time.perf_counter() - t0
        return results
    finally:
        torch.set_num_threads(old_threads)


def format_table(results: dict) -> str:
    m = results["machine"]
    lines = [f"chrysalis bench: {m['cpu']}, {m['threads']} thread(s), torch {m['torch']}"
             f"{' (quick)' if results['quick'] else ''}", ""]
    lines.append(f"{'layer':36} {'variant':7} {'n':>9} {'fwd ms':>8} {'x conv':>7} "
                 f"{'f+b ms':>8} {'x conv':>7} {'saved MB':>9} {'x conv':>7}")
    for r in results["layers"]:
        n = "x".join(map(str, r["n"]))
        lines.append(
            f"{r['case']:36} {r['variant']:7} {n:>9} {r['fwd_ms']:8.2f} {r['fwd_ratio']:7.2f} "
            f"{r['fwd_bwd_ms']:8.2f} {r['fwd_bwd_ratio']:7.2f} {r['saved_mb']:9.2f} {r['mem_ratio']:7.2f}"
        )
    lines += ["", f"{'KMatrix n':>9} {'batch':>6} {'fft ms':>8} {'butterfly':>10} {'x fft':>6} "
              f"{'dense':>8} {'x fft':>6} {'ns/(n log n)':>12}"]
    for r in results["kmatrix"]:
        lines.append(
            f"{r['n']:9d} {r['batch']:6d} {r['fft_ms']:8.3f} {r['butterfly_ms']:10.3f} "
            f"{r['butterfly_ratio']:6.2f} {r['dense_ms']:8.3f} {r['dense_ratio']:6.2f} "
            f"{r['butterfly_ns_per_nlogn']:12.3f}"
        )
    lines += ["", f"{'LeNet train step':16} {'ms':>8} {'x conv':>7} {'saved MB':>9} {'x conv':>7}"]
    for r in results["lenet_step"]:
        lines.append(f"{r['variant']:16} {r['step_ms']:8.2f} {r['step_ratio']:7.2f} "
                     f"{r['saved_mb']:9.2f} {r['mem_ratio']:7.2f}")
    return "\n".join(lines)


def cli_entry(quick: bool = False, out: str | None = None, threads: int | None = None) -> dict:
    """`chrysalis bench [--quick] [--out FILE.json] [--threads N]`: print the table, write JSON."""
    results = run_benchmarks(quick=quick, threads=threads)
    print(format_table(results))
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            json.dump(results, f, indent=1)
        print(f"\nwrote {out}")
    return results
