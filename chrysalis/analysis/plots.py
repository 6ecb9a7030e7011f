"""Figures of a run: training curves, distance from the convolution, and what each K-op learned.

    from chrysalis.analysis.plots import plot_run
    paths = plot_run("runs/pmnist-joint")          # PNGs in runs/pmnist-joint/plots/

Figures (PNG, matplotlib's Agg canvas, no pyplot state touched):

- `curves.png`: train/val loss and accuracy over epochs (every run).
- `compare.png` (`plot_compare`, `chrysalis plot RUN RUN ...`): train and val accuracy of
  several runs over epochs, one colour per run.
- `conv_distance.png`: each K-op's `conv_distance()` over epochs, epoch 0 = the model at step 0.
- per K-op layer `<layer>`:
  - `kop_<layer>_impulse.png`: the response to a unit impulse at the centre of one input
    channel, for a few (output, input) channel pairs: the searched op, the convolution with the
    same filter, and the op at step 0 (bias removed: op(delta) - op(0)); the title gives each
    op's `locality` (the share of its impulse-response energy inside the conv's receptive field).
  - `kop_<layer>_operators.png`: per axis and filter tap t, the effective operator
    M_t = K_out diag(L e_t) K_in (real part, the rows/columns the op reads) next to the
    convolution's, which is a shift matrix.
  - `kop_<layer>_kmatrices.png`: |K_in|, |L|, |K_out| per axis (dense), with their relative
    distance from the Fourier matrices the warm start uses.
- `permutation_<layer>.png` (permuted-image data, K-ops that see the full image): per axis, the
  K-op's input transform moved back to pixel space, |F^-1 K_in| (the identity for a conv), next
  to the matrix that undoes the data's row/column permutation, with the share of each column's
  energy that sits where the un-permutation puts it.

Fixed-FFT K-ops and conv models have no architecture: only the curves are drawn.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import nn

from ..chrysalize import kops
from ..kmatrix import KMatrix, bit_reversal_permutation
from ..kop import KOp
from .runs import AnalysisError, LoadedRun, finite, load_run, read_config, read_metrics

MAX_PAIRS = 3  # channel pairs in the impulse-response figure
MAX_TAPS = 3  # filter taps per axis in the operator figure
AXIS_NAMES = {1: ["length"], 2: ["rows (axis 0)", "columns (axis 1)"], 3: ["depth (axis 0)", "rows (axis 1)",
                                                                             "columns (axis 2)"]}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "model"


def _figure(nrows: int, ncols: int, width: float, height: float, **adjust: float) -> tuple[Figure, Any]:
    """A Figure (Agg canvas, no pyplot) with an nrows x ncols grid of axes.

    Spacing is set by hand: constrained layout costs seconds per figure of heatmaps.
    """
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    spacing = {"left": 0.08, "right": 0.92, "bottom": 0.08, "top": 0.86, "hspace": 0.6, "wspace": 0.45}
    spacing.update(adjust)
    fig.subplots_adjust(**spacing)
    return fig, axes


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=100)
    return path


def _title(run: LoadedRun) -> str:
    c = run.config
    parts = [str(c.get("space")), str(c.get("data")), f"op {c.get('op')}", str(c.get("method"))]
    if c.get("op") == "kop":
        parts.append(f"init {c.get('init')}, depth {c.get('depth')}")
    parts.append(f"seed {c.get('seed')}")
    if c.get("arch_from"):
        parts.append("retrain")
    return " | ".join(parts)


# --------------------------------------------------------------------------- curves
def plot_curves(run: LoadedRun, path: Path) -> Path:
    """Train/val loss and accuracy over epochs."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = [m["epoch"] for m in run.metrics]
    for ax, key, label in ((ax_loss, "loss", "cross-entropy loss"), (ax_acc, "acc", "accuracy")):
        for split, style in (("train", "-o"), ("val", "-s")):
            pts = [(e, m.get(f"{split}_{key}")) for e, m in zip(epochs, run.metrics) if finite(m.get(f"{split}_{key}"))]
            if pts:
                ax.plot(*zip(*pts), style, ms=3, label=f"{split}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    final = (run.results or {}).get("final") or {}
    if finite(final.get("test_acc")):
        ax_acc.axhline(final["test_acc"], color="k", ls="--", lw=1, label=f"test {final['test_acc']:.4f}")
        ax_acc.legend()
    ax_loss.set_title("loss")
    ax_acc.set_title("accuracy")
    if not run.metrics:
        ax_loss.text(0.5, 0.5, "no finished epoch yet", ha="center", va="center", transform=ax_loss.transAxes)
    fig.suptitle(_title(run), fontsize=9)
    return _save(fig, path)


def compare_figure(run_dirs: list[str | Path], labels: list[str] | None = None) -> Figure:
    """The figure of `plot_compare`: axes[0] training, axes[1] validation accuracy, a line per run."""
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise AnalysisError("plot_compare: no run directories given")
    if labels is None:  # the directories' names, with as many parent folders as make them unique
        depth = 1
        while depth < 8 and len({"/".join(d.parts[-depth:]) for d in dirs}) < len(dirs):
            depth += 1
        labels = ["/".join(d.parts[-depth:]) for d in dirs]
    if len(labels) != len(dirs):
        raise AnalysisError(f"plot_compare: {len(labels)} labels for {len(dirs)} runs")
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    ax_train, ax_val = fig.subplots(1, 2, sharey=True)
    for i, (d, label) in enumerate(zip(dirs, labels)):
        read_config(d)  # a clear error for a directory that is not a run
        metrics = read_metrics(d)
        for ax, key in ((ax_train, "train_acc"), (ax_val, "val_acc")):
            pts = [(m["epoch"], m[key]) for m in metrics if finite(m.get(key))]
            if pts:
                ax.plot(*zip(*pts), "-o", ms=2.5, color=f"C{i % 10}", label=label)
    for ax, title in ((ax_train, "training accuracy"), (ax_val, "validation accuracy")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    ax_train.set_ylabel("accuracy")
    ax_val.legend(fontsize=7, loc="best")
    fig.suptitle(f"{len(dirs)} runs", fontsize=9)
    return fig


def plot_compare(run_dirs: list[str | Path], path: str | Path, labels: list[str] | None = None) -> Path:
    """Train and val accuracy over epochs of several runs in one PNG, one colour per run.

    `labels` default to the run directories' names (with parent folders where needed to tell
    them apart). Reads only config.yaml and metrics.jsonl: works on unfinished runs.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(compare_figure(run_dirs, labels), path)


def plot_conv_distance(run: LoadedRun, path: Path, initial: dict[str, float]) -> Path:
    """Each K-op's distance from the nearest convolution over epochs (epoch 0: step 0)."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    layers = sorted({k for m in run.metrics for k in (m.get("conv_distance") or {})} | set(initial))
    for name in layers:
        pts = [(0, initial[name])] if name in initial else []
        pts += [(m["epoch"], m["conv_distance"][name]) for m in run.metrics
                if finite((m.get("conv_distance") or {}).get(name))]
        if pts:
            ax.plot(*zip(*pts), "-o", ms=3, label=name)
    ax.set_xlabel("epoch (0 = initialisation)")
    ax.set_ylabel("conv_distance (0 = a convolution)")
    ax.set_title("distance of each K-op from the convolutions")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(_title(run), fontsize=9)
    return _save(fig, path)


# --------------------------------------------------------------------------- K-op figures
def reference_conv(op: KOp) -> KOp:
    """The convolution with `op`'s settings and current filter (exact FFT convolution, no architecture)."""
    ref = KOp(op.in_channels, op.out_channels, op.kernel_size, op.input_size, stride=op.stride, padding=op.padding,
              dilation=op.dilation, groups=op.groups, bias=op.bias is not None, padding_mode=op.padding_mode,
              max_kernel_size=op.max_kernel_size, fixed=True, dtype=op.weight.dtype)
    with torch.no_grad():
        ref.weight.copy_(op.weight)
        if op.bias is not None:
            ref.bias.copy_(op.bias)
    return ref.eval()


@torch.no_grad()
def impulse_response(op: nn.Module, in_channels: int, input_size: tuple[int, ...], channel: int) -> torch.Tensor:
    """op(delta) - op(0) for a unit impulse at the centre of input `channel`: (out_channels, *out)."""
    x = torch.zeros(2, in_channels, *input_size)
    x[(0, channel, *(s // 2 for s in input_size))] = 1.0
    y = op(x)
    return y[0] - y[1]


@torch.no_grad()
def locality(op: KOp) -> float:
    """Share of `op`'s impulse-response energy that falls inside its convolution's receptive field.

    For a unit impulse at the centre of each input channel in turn, the energy of op(delta) - op(0)
    at the output positions (and channels) a conv with `op`'s kernel_size, stride, dilation,
    padding and groups can reach from that pixel, over the energy at all outputs. 1.0 for any
    convolution (a K-op at its warm start), about |receptive field| / |output| for an op that
    spreads its response evenly; a number for "is the searched op still local?".
    """
    reach = KOp(op.in_channels, op.out_channels, op.kernel_size, op.input_size, stride=op.stride,
                padding=op.padding, dilation=op.dilation, groups=op.groups, bias=False,
                padding_mode=op.padding_mode, fixed=True, dtype=op.weight.dtype).eval()
    reach.weight.fill_(1.0)  # positive taps: nonzero exactly on the receptive field, no cancellation
    inside = total = 0.0
    for c in range(op.in_channels):
        energy = impulse_response(op, op.in_channels, op.input_size, c).double() ** 2
        mask = impulse_response(reach, op.in_channels, op.input_size, c).abs() > 1e-6
        inside += float(energy[mask].sum())
        total += float(energy.sum())
    return inside / total if total > 0 else 1.0


def _pairs(op: KOp) -> list[tuple[int, int]]:
    """A few (output, input) channel pairs that are connected (same group)."""
    out_per_group = op.out_channels // op.groups
    in_per_group = op.in_channels // op.groups
    pairs = []
    for o in range(min(MAX_PAIRS, op.out_channels)):
        g = o // out_per_group
        pairs.append((o, g * in_per_group + o % in_per_group))
    return pairs


def _show_image(fig: Figure, ax: Any, data: torch.Tensor, vmax: float, title: str, cmap: str = "RdBu_r") -> Any:
    im = ax.imshow(data.numpy(), cmap=cmap, vmin=-vmax if cmap == "RdBu_r" else 0, vmax=vmax,
                   interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=6)
    return im


def plot_impulse(name: str, op: KOp, op0: KOp | None, path: Path) -> Path:
    """Impulse responses of the searched op, the conv with its filter, and the op at step 0."""
    ref = reference_conv(op)
    cols = [("searched K-op", op), ("conv, same filter", ref)] + ([("K-op at step 0", op0)] if op0 else [])
    pairs = _pairs(op)
    dims = len(op.input_size)
    fig, axes = _figure(len(pairs), len(cols), 3.2 * len(cols) + 1.4, 2.9 * len(pairs) + 0.9,
                        top=1 - 0.75 / (2.9 * len(pairs) + 0.9))
    cache: dict[tuple[int, int], torch.Tensor] = {}
    for r, (o, c) in enumerate(pairs):
        resp = []
        for j, (_, module) in enumerate(cols):
            if (j, c) not in cache:
                cache[(j, c)] = impulse_response(module, op.in_channels, op.input_size, c)
            y = cache[(j, c)][o]
            resp.append(y[y.shape[0] // 2] if dims == 3 else y)  # 3-D: the middle slice
        if dims == 1:
            for ax, (label, _), y in zip(axes[r], cols, resp):
                ax.plot(y.numpy(), lw=1)
                ax.set_title(f"{label}: out {o} <- in {c}", fontsize=8)
                ax.set_xlabel("output position", fontsize=7)
                ax.grid(alpha=0.3)
            continue
        vmax = max(float(y.abs().max()) for y in resp) or 1.0
        im = None
        for ax, (label, _), y in zip(axes[r], cols, resp):
            im = _show_image(fig, ax, y, vmax, f"{label}: out {o} <- in {c}")
            ax.set_xlabel("output column", fontsize=7)
            ax.set_ylabel("output row", fontsize=7)
        fig.colorbar(im, ax=list(axes[r]), shrink=0.8, label="response")
    centre = tuple(s // 2 for s in op.input_size)
    local = f"searched {locality(op):.0%}" + (f", step 0 {locality(op0):.0%}" if op0 is not None else "")
    fig.suptitle(f"{name}: response to a unit impulse at {centre} of one input channel (bias removed)"
                 + (" - middle slice" if dims == 3 else "")
                 + f"\nenergy inside the conv's receptive field: {local}", fontsize=9)
    return _save(fig, path)


@torch.no_grad()
def effective_operators(op: KOp, axis: int, taps: list[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per tap t: M_t = K_out diag(L e_t) K_in on `axis` and the conv's, both restricted to the
    rows/columns the op reads (output rows x input columns); real parts."""
    p = op.plans[axis]
    k_in, l_mat, k_out = op.K_in[axis].dense(), op.L[axis].dense(), op.K_out[axis].dense()
    rows = torch.tensor(p.out_rows)
    cols = torch.tensor(p.in_cols)
    eye = torch.eye(p.n, dtype=torch.complex128)
    learned, conv = [], []
    for t in taps:
        col = p.tap_cols[t]
        m = k_out @ (l_mat[:, col].unsqueeze(1) * k_in)
        e = torch.zeros(p.n, dtype=torch.complex128)
        e[col] = 1
        c = torch.fft.ifft(torch.fft.fft(e).unsqueeze(1) * torch.fft.fft(eye, dim=0), dim=0)
        learned.append(m[rows][:, cols].real.double().cpu())
        conv.append(c[rows][:, cols].real)
    return learned, conv


def plot_operators(name: str, op: KOp, path: Path) -> Path:
    """Per axis, M_t = K_out diag(L e_t) K_in for a few taps t next to the convolution's shift matrices."""
    dims = len(op.plans)
    taps_per_axis = []
    for p in op.plans:
        k = len(p.tap_cols)
        taps_per_axis.append(sorted({round(i * (k - 1) / max(MAX_TAPS - 1, 1)) for i in range(min(k, MAX_TAPS))}))
    ncols = max(len(t) for t in taps_per_axis)
    height = 2.7 * 2 * dims + 0.9
    fig, axes = _figure(2 * dims, ncols, 2.9 * ncols + 1.6, height, top=1 - 0.75 / height)
    names = AXIS_NAMES[dims]
    for a in range(dims):
        learned, conv = effective_operators(op, a, taps_per_axis[a])
        vmax = max(max(float(m.abs().max()) for m in learned), max(float(m.abs().max()) for m in conv)) or 1.0
        for row, mats, label in ((2 * a, learned, "searched"), (2 * a + 1, conv, "conv")):
            im = None
            for j in range(ncols):
                ax = axes[row][j]
                if j >= len(mats):
                    ax.axis("off")
                    continue
                t = taps_per_axis[a][j]
                im = _show_image(fig, ax, mats[j], vmax, f"{label}, {names[a]}, tap {t}")
                ax.set_xlabel("input position", fontsize=7)
                ax.set_ylabel("output position", fontsize=7)
            fig.colorbar(im, ax=list(axes[row]), shrink=0.8, label="Re M_t")
    fig.suptitle(f"{name}: effective operator per tap, M_t = K_out diag(L e_t) K_in (real part), "
                 f"conv_distance {op.conv_distance():.3f}", fontsize=9)
    return _save(fig, path)


@torch.no_grad()
def _fourier_reference(km: KMatrix, kind: str) -> torch.Tensor:
    ref = KMatrix(km.n, km.depth, "ifft" if kind == "K_out" else "fft", increasing=km.increasing,
                  dtype=torch.float64)
    return ref.dense()


def plot_kmatrices(name: str, op: KOp, path: Path) -> Path:
    """|dense()| of K_in, L, K_out per axis, with the relative distance from the warm-start Fourier matrices."""
    dims = len(op.plans)
    fig, axes = _figure(3, dims, 4.2 * dims + 0.8, 10.5, top=0.9, hspace=0.55)
    names = AXIS_NAMES[dims]
    with torch.no_grad():
        for r, (kind, mats) in enumerate(op.kmatrices().items()):
            for a, km in enumerate(mats):
                dense = km.dense().to(torch.complex128).cpu()
                ref = _fourier_reference(km, kind)
                dist = float((dense - ref).norm() / ref.norm())
                ax = axes[r][a]
                mag = dense.abs()
                im = ax.imshow(mag.numpy(), cmap="viridis", vmin=0, interpolation="nearest")
                searched = "searched" if kind in op.search else "frozen"
                ax.set_title(f"|{kind}| {names[a]} (n={km.n}, {searched})\n"
                             f"rel. distance from {'F^-1' if kind == 'K_out' else 'F'}: {dist:.3f}", fontsize=8)
                ax.set_xlabel("column", fontsize=7)
                ax.set_ylabel("row", fontsize=7)
                ax.tick_params(labelsize=6)
                fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(f"{name}: K-matrix magnitudes (bit-reversed Fourier order at warm start)", fontsize=9)
    return _save(fig, path)


def permutation_target(size: int, n: int, perm: torch.Tensor) -> torch.Tensor:
    """(n x size) 0/1 matrix T with T[perm[i], i] = 1: it maps permuted data x_p[i] = x[perm[i]] back to x."""
    t = torch.zeros(n, size)
    t[perm, torch.arange(size)] = 1.0
    return t


@torch.no_grad()
def pixel_space_input_transform(km: KMatrix, size: int) -> torch.Tensor:
    """F^-1 P K_in restricted to the `size` input columns: the identity for the warm start (complex)."""
    dense = km.dense().to(torch.complex128).cpu()
    rev = bit_reversal_permutation(km.n)
    return torch.fft.ifft(dense[rev][:, :size], dim=0)


def plot_permutation(name: str, op: KOp, op0: KOp | None, perms: list[torch.Tensor], seed: Any, path: Path) -> Path:
    """Per axis: |F^-1 K_in| (searched, step 0) next to the matrix that undoes the data's permutation."""
    dims = len(perms)
    ncols = 3 if op0 is not None else 2
    height = 3.8 * dims + 0.9
    fig, axes = _figure(dims, ncols, 4.4 * ncols + 0.8, height, top=1 - 0.8 / height)
    names = AXIS_NAMES[2]
    for a, perm in enumerate(perms):
        size, n = op.plans[a].size, op.plans[a].n
        target = permutation_target(size, n, perm)
        panels = [("searched", pixel_space_input_transform(op.K_in[a], size).abs())]
        if op0 is not None:
            panels.append(("step 0", pixel_space_input_transform(op0.K_in[a], size).abs()))
        for j, (label, mag) in enumerate(panels):
            energy = mag.pow(2)
            total = energy.sum(0).clamp_min(1e-30)
            on_target = float((energy * target).sum(0).div(total).mean())
            on_identity = float(energy[torch.arange(size), torch.arange(size)].div(total).mean())
            ax = axes[a][j]
            im = ax.imshow(mag.numpy(), cmap="viridis", vmin=0, interpolation="nearest")
            ax.set_title(f"|F^-1 K_in|, {label}, {names[a]}\nenergy on un-permutation {on_target:.0%}, "
                         f"on identity {on_identity:.0%}", fontsize=8)
            ax.set_xlabel("input (permuted) position", fontsize=7)
            ax.set_ylabel("pixel-space position", fontsize=7)
            fig.colorbar(im, ax=ax, shrink=0.8)
        ax = axes[a][ncols - 1]
        ax.imshow(target.numpy(), cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"un-permutation of the data, {names[a]}\n(permute_seed {seed})", fontsize=8)
        ax.set_xlabel("input (permuted) position", fontsize=7)
        ax.set_ylabel("original position", fontsize=7)
    fig.suptitle(f"{name}: does K_in undo the row/column permutation? "
                 "(a conv: the identity; undone: the right-hand pattern)", fontsize=9)
    return _save(fig, path)


def _permutations(run: LoadedRun, op: KOp) -> tuple[list[torch.Tensor], Any] | None:
    """The data's row/column permutations if `run` uses permuted images that `op` sees whole."""
    from ..data.transforms import axis_permutations

    data = str(run.config.get("data", ""))
    shape = tuple(int(s) for s in getattr(run.info, "input_shape", ()))
    if not data.startswith("permuted-") or len(shape) != 3 or len(op.plans) != 2:
        return None
    h, w = shape[1:]
    if tuple(p.size for p in op.plans) != (h, w):
        return None
    options = dict(getattr(run.info, "options", None) or {})
    seed = options.get("permute_seed", (run.config.get("data_options") or {}).get("permute_seed", 0))
    rows, cols = axis_permutations(h, w, int(seed))
    return [rows, cols], seed


# --------------------------------------------------------------------------- all figures
def plot_run(run_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    """Write every figure for the run in `run_dir` to `out` (default `run_dir/plots`); return the paths."""
    run = load_run(run_dir)
    out = Path(out) if out is not None else Path(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    paths = [plot_curves(run, out / "curves.png")]
    if run.model is None:
        return paths
    searched = [(n, op) for n, op in kops(run.model) if not op.fixed]
    if not searched:
        return paths
    initial_model = run.initial_model()
    initial = dict(kops(initial_model))
    initial_dist = {n: initial[n].conv_distance() for n, _ in searched if n in initial and not initial[n].fixed}
    paths.append(plot_conv_distance(run, out / "conv_distance.png", initial_dist))
    for name, op in searched:
        op.eval()
        op0 = initial.get(name)
        op0 = op0 if isinstance(op0, KOp) and not op0.fixed else None
        stem = _safe(name)
        paths.append(plot_impulse(name, op, op0, out / f"kop_{stem}_impulse.png"))
        paths.append(plot_operators(name, op, out / f"kop_{stem}_operators.png"))
        paths.append(plot_kmatrices(name, op, out / f"kop_{stem}_kmatrices.png"))
        perm = _permutations(run, op)
        if perm is not None:
            paths.append(plot_permutation(name, op, op0, perm[0], perm[1], out / f"permutation_{stem}.png"))
    return paths


def expected_figures(run_dir: str | Path) -> list[str]:
    """File names `plot_run` writes for this run (without drawing anything)."""
    run = load_run(run_dir)
    names = ["curves.png"]
    if run.model is None:
        return names
    searched = [(n, op) for n, op in kops(run.model) if not op.fixed]
    if searched:
        names.append("conv_distance.png")
    for name, op in searched:
        stem = _safe(name)
        names += [f"kop_{stem}_impulse.png", f"kop_{stem}_operators.png", f"kop_{stem}_kmatrices.png"]
        if _permutations(run, op) is not None:
            names.append(f"permutation_{stem}.png")
    return names


__all__ = ["effective_operators", "expected_figures", "impulse_response", "plot_run"]
