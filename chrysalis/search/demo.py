"""`chrysalis demo`: a small, real search on the embedded MNIST digits, in minutes on 2 CPU cores.

On `mnist5k` (convolution is the right operation) and `permuted-mnist5k` (one fixed random
permutation of rows and one of columns: convolution is wrong), LeNet at 32x32 is trained three
ways: the conv baseline (fixed), the K-op warm-started at the conv (joint, init conv) and the K-op
from scratch (joint, init random). Six runs, then a results table.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .config import SearchConfig
from .engine import run_search

DEMO_DATA: list[tuple[str, dict[str, Any], float]] = [
    # (dataset, data options, architecture lr: the authors' 1e-4 for images, 1e-3 for permuted ones)
    ("mnist5k", {"pad_to": 32}, 1e-4),
    ("permuted-mnist5k", {"pad_to": 32, "permute_seed": 0}, 1e-3),
]
DEMO_VARIANTS: list[tuple[str, str, str]] = [  # (method, op, init)
    ("fixed", "conv", "conv"),
    ("joint", "kop", "conv"),
    ("joint", "kop", "random"),
]
# Sized for 2 CPU cores: the K-op LeNet costs many times the conv per batch (see docs/SEARCH.md).
DEMO_EPOCHS = 10
DEMO_LIMIT_TRAIN: int | None = None
DEMO_DEPTH = 3  # the authors' K-matrix depth for images
SMOKE = {"epochs": 1, "limit_train": 128, "limit_val": 128}


def demo_configs(
    out: str | Path = "runs/demo",
    *,
    epochs: int = DEMO_EPOCHS,
    limit_train: int | None = DEMO_LIMIT_TRAIN,
    limit_val: int | None = None,
    seed: int = 0,
    depth: int = DEMO_DEPTH,
    quiet: bool = False,
    threads: int | None = None,
    device: str = "cpu",
) -> list[SearchConfig]:
    """The six demo runs as configs, each writing to `out/<data>-<method>-<op>-<init>`."""
    configs = []
    for data, options, arch_lr in DEMO_DATA:
        for method, op, init in DEMO_VARIANTS:
            name = f"{data}-{method}-{op}" + (f"-{init}" if op == "kop" else "")
            configs.append(SearchConfig(
                data=data, data_options=dict(options), space="lenet", op=op, method=method, init=init,
                depth=depth, epochs=epochs, arch_lr=arch_lr, seed=seed, limit_train=limit_train,
                limit_val=limit_val, out=str(Path(out) / name), quiet=quiet, threads=threads, device=device,
            ).validate())
    return configs


def run_demo(
    out: str | Path = "runs/demo", *, smoke: bool = False, plots: bool = True, **options: Any
) -> list[dict[str, Any]]:
    """Run the six demo runs (overwriting earlier demo runs in `out`); returns the table rows.

    `smoke=True` is a seconds-long version (1 epoch on 128 examples) for tests; `plots` draws each
    K-op run's figures (`chrysalis plot`) into RUN/plots.
    """
    if smoke:
        options = {**SMOKE, **options}
    rows = []
    t0 = time.perf_counter()
    for config in demo_configs(out, **options):
        results = run_search(config, overwrite=True)
        dist = results["conv_distance"]
        rows.append({
            "data": config.data,
            "op": config.op,
            "method": config.method,
            "init": config.init if config.op == "kop" else "-",
            "val_acc": results["final"]["val_acc"],
            "test_acc": results["final"]["test_acc"],
            "conv_distance": sum(dist.values()) / len(dist) if dist else None,
            "seconds": results["wall_seconds"],
            "run": config.out,
        })
    out = Path(out)
    if plots:  # what each K-op found: impulse responses, K-matrices, the permutation figure, curves
        from ..analysis.plots import plot_run

        for r in rows:
            if r["op"] == "kop":
                r["plots"] = str(plot_run(r["run"])[0].parent)
    (out / "summary.json").write_text(json.dumps({"rows": rows, "wall_seconds": time.perf_counter() - t0},
                                                 indent=2) + "\n")
    (out / "summary.md").write_text(format_table(rows) + "\n")
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """The demo results as a markdown table."""
    head = "| data | op | method | init | val acc | test acc | conv distance | seconds |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        dist = "-" if r["conv_distance"] is None else f"{r['conv_distance']:.3f}"
        lines.append(f"| {r['data']} | {r['op']} | {r['method']} | {r['init']} | {r['val_acc']:.4f} | "
                     f"{r['test_acc']:.4f} | {dist} | {r['seconds']:.1f} |")
    return "\n".join(lines)
