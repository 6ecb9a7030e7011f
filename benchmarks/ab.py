"""In-process A/B of a code change: layer cases and the LeNet step, both variants interleaved.

    python benchmarks/ab.py --ref 0d68768 [--threads 1]        # this checkout vs a commit
    python benchmarks/ab.py --set chrysalis.dense.RECOMPUTE_OUT=True   # a module constant toggled

`--ref`: the commit's `chrysalis/` is extracted (git archive) into a temporary directory as a
second package, `chrysalis_ref`, so both versions run in the same process and rounds. Prints
fwd+bwd time and saved bytes as multiples of nn.ConvNd (layers) / the LeNet step, as
`chrysalis bench` does (docs/PERFORMANCE.md: the "What changed" tables).
"""

from __future__ import annotations

import argparse
import importlib
import io
import pathlib
import subprocess
import sys
import tarfile
import tempfile
import types

import torch
from torch import nn

from chrysalis.bench import _fwd_bwd, _interleaved, _layer_cases, saved_bytes


def _package_at(ref: str) -> types.ModuleType:
    root = pathlib.Path(tempfile.mkdtemp(prefix="chrysalis-ab-"))
    tar = subprocess.run(["git", "archive", ref, "chrysalis"], check=True, capture_output=True,
                         cwd=pathlib.Path(__file__).resolve().parents[1]).stdout
    tarfile.open(fileobj=io.BytesIO(tar)).extractall(root, filter="data")
    (root / "chrysalis").rename(root / "chrysalis_ref")
    for f in (root / "chrysalis_ref").rglob("*.py"):  # absolute self-imports -> the copy
        f.write_text(f.read_text().replace("from chrysalis.", "from chrysalis_ref.")
                     .replace("import chrysalis.", "import chrysalis_ref."))
    sys.path.insert(0, str(root))
    return importlib.import_module("chrysalis_ref")


def _with(setting: tuple[types.ModuleType, str, object] | None, fn):
    if setting is None:
        return fn
    module, name, value = setting

    def run():
        old = getattr(module, name)
        setattr(module, name, value)
        try:
            return fn()
        finally:
            setattr(module, name, old)

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--ref", help="git commit to compare this checkout against")
    g.add_argument("--set", help="module.NAME=value to toggle in variant B (a Python literal)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=9)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import chrysalis
    from chrysalis.spaces import create_space

    if args.ref:
        other, setting, names = _package_at(args.ref), None, (args.ref, "this")
        importlib.import_module("chrysalis_ref.spaces")
    else:
        target, value = args.set.split("=", 1)
        mod, name = target.rsplit(".", 1)
        other, setting, names = chrysalis, (importlib.import_module(mod), name, eval(value)), ("A", "B")
        print(f"A: as checked out; B: {args.set}")

    def variants(conv, size, kop_cls_a, kop_cls_b):
        out = {"conv": (conv, None)}
        for tag, cls, st in ((names[0], kop_cls_a, None), (names[1], kop_cls_b, setting)):
            for v, opts in (("fft", dict(fixed=True)), ("d1", dict(depth=1)), ("d3", dict(depth=3))):
                out[f"{v} {tag}"] = (cls.from_conv(conv, size, **opts), st)
        return out

    for case in _layer_cases(False):
        torch.manual_seed(0)
        conv, x = case["conv"](), torch.randn(case["shape"], requires_grad=True)
        mods = variants(conv, tuple(case["shape"][2:]), other.KOp, chrysalis.KOp)
        t = _interleaved({k: _with(s, _fwd_bwd(m, x)) for k, (m, s) in mods.items()},
                         max(3, args.repeats // 2) if "resnet" in case["name"] else args.repeats)
        mem = {k: _with(s, lambda m=m, x=x: saved_bytes(lambda: m(x)))() for k, (m, s) in mods.items()}
        print(case["name"], f"(conv {t['conv'] * 1e3:.1f} ms):",
              ", ".join(f"{k} {t[k] / t['conv']:.2f}x / mem {mem[k] / mem['conv']:.2f}x" for k in mods if k != "conv"),
              flush=True)

    info = types.SimpleNamespace(kind="image", input_shape=(3, 32, 32), num_classes=10, vocab_size=None, name="ab")
    x, y = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))
    spaces = (other.spaces.create_space if args.ref else create_space, create_space)
    nets = {"conv": (create_space("lenet", info, op="conv"), None)}
    for tag, cs, st in ((names[0], spaces[0], None), (names[1], spaces[1], setting)):
        for v, op, opts in (("fft", "fft", {}), ("d1", "kop", {"depth": 1}), ("d3", "kop", {"depth": 3})):
            torch.manual_seed(0)
            nets[f"{v} {tag}"] = (cs("lenet", info, op=op, **opts), st)

    def step_fn(net):
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

        def step():
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()

        return step

    t = _interleaved({k: _with(s, step_fn(n)) for k, (n, s) in nets.items()}, args.repeats)
    mem = {k: _with(s, lambda n=n: saved_bytes(lambda: nn.functional.cross_entropy(n(x), y)))()
           for k, (n, s) in nets.items()}
    print(f"LeNet step (conv {t['conv'] * 1e3:.1f} ms):",
          ", ".join(f"{k} {t[k] / t['conv']:.2f}x / mem {mem[k] / mem['conv']:.2f}x" for k in nets if k != "conv"))


if __name__ == "__main__":
    main()
