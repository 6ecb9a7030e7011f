"""The `chrysalis` command line: one entry point, subcommands.

    chrysalis demo                      the main job: a small real search on embedded data
    chrysalis search --space lenet --data mnist5k --method joint --init conv --seed 0,1,2
    chrysalis retrain RUN               fresh weights, the found architecture frozen
    chrysalis eval RUN                  test accuracy of a run's checkpoint

More subcommands plug in from their own modules: for each name in PLUGIN_COMMANDS, the module
`chrysalis.commands.<name>` (if it exists) is imported and its `register(app: typer.Typer)`
adds the command. Nothing is registered for a name whose module is absent.

Errors (bad values, unknown names, missing files) print one line and exit non-zero; run
`chrysalis --debug ...` (or set CHRYSALIS_DEBUG=1) for the traceback.
"""

from __future__ import annotations

import importlib
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

PLUGIN_COMMANDS = ("export", "plot", "report", "bench", "sweep")

app = typer.Typer(
    name="chrysalis",
    help="Neural architecture search over K-operations (learnable generalised convolutions).",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        import chrysalis

        typer.echo(f"chrysalis {chrysalis.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Neural architecture search over K-operations."""


def _parse_seeds(values: list[str] | None) -> list[int] | None:
    """`--seed 0 --seed 1` or `--seed 0,1,2` (or both) -> [0, 1, 2]."""
    if not values:
        return None
    seeds = []
    for v in values:
        for part in v.split(","):
            part = part.strip()
            if part:
                try:
                    seeds.append(int(part))
                except ValueError:
                    raise typer.BadParameter(f"--seed takes integers, got {part!r}") from None
    return seeds


def _parse_sets(values: list[str] | None) -> dict[str, Any]:
    """`--set key=value` (value parsed as YAML, e.g. `--set data_options={pad_to: 32}`)."""
    import yaml

    out = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"--set takes key=value, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or e
            raise typer.BadParameter(f"--set {key.strip()}: not valid YAML ({problem})") from None
    return out


@app.command()
def search(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")] = None,
    space: Annotated[str | None, typer.Option(help="Backbone: lenet, kimcnn, spherical, resnet20.")] = None,
    data: Annotated[str | None, typer.Option(help="Dataset name, e.g. mnist5k, permuted-mnist5k.")] = None,
    method: Annotated[str | None, typer.Option(help="fixed | joint | bilevel.")] = None,
    op: Annotated[str | None, typer.Option(help="conv | kop | fft.")] = None,
    init: Annotated[str | None, typer.Option(help="K-op init: conv (warm start) | random.")] = None,
    depth: Annotated[int | None, typer.Option(help="Butterflies per K-matrix.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs.")] = None,
    seed: Annotated[list[str] | None, typer.Option(help="Seed(s): repeat, or 0,1,2: one run each.")] = None,
    lr: Annotated[float | None, typer.Option(help="Weight learning rate (SGD).")] = None,
    arch_lr: Annotated[float | None, typer.Option(help="Architecture learning rate.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size.")] = None,
    warmup_epochs: Annotated[int | None, typer.Option(help="Epochs with the architecture frozen.")] = None,
    grad_clip: Annotated[float | None, typer.Option(help="Max gradient norm (0 = off).")] = None,
    second_order: Annotated[bool | None, typer.Option(
        "--second-order/--first-order", help="Bilevel: unrolled architecture gradient.")] = None,
    limit_train: Annotated[int | None, typer.Option(help="Use only the first N training examples.")] = None,
    limit_val: Annotated[int | None, typer.Option(help="Use only the first N validation examples.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu | cuda | auto.")] = None,
    threads: Annotated[int | None, typer.Option(help="torch.set_num_threads.")] = None,
    dist_backend: Annotated[str | None, typer.Option(
        help="Under torchrun: auto (nccl on CUDA, gloo on CPU) | gloo | nccl.")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(
        help="Also checkpoint every N steps (0: at each epoch end only); a crash loses at most N steps.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Any config key: --set key=value.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (several seeds: OUT/seed<N>).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the interrupted run in --out.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a previous run in --out.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No bars; one line per epoch.")] = False,
) -> None:
    """Search (or train) a backbone on a dataset; one run directory per seed."""
    from .search import SearchConfig, run_search
    from .search.config import read_yaml
    from .search.distributed import distributed_session

    values: dict[str, Any] = {}
    if config is not None:
        values.update(read_yaml(config))
    elif resume and out is not None and (out / "config.yaml").is_file():
        values.update(read_yaml(out / "config.yaml"))  # resume needs no flags but --out
    flags = dict(space=space, data=data, method=method, op=op, init=init, depth=depth, epochs=epochs, lr=lr,
                 arch_lr=arch_lr, batch_size=batch_size, warmup_epochs=warmup_epochs, grad_clip=grad_clip,
                 second_order=second_order, limit_train=limit_train, limit_val=limit_val, device=device,
                 threads=threads, checkpoint_every=checkpoint_every, dist_backend=dist_backend)
    values.update({k: v for k, v in flags.items() if v is not None})
    values.update(_parse_sets(set_))
    if quiet:
        values["quiet"] = True
    seeds = _parse_seeds(seed) or [int(values.get("seed", 0))]
    base = SearchConfig.from_dict(values)
    root = out if out is not None else (Path(base.out) if base.out else None)
    results = []
    # Under torchrun (`torchrun --nproc-per-node N -m chrysalis search ...`) every process runs
    # this: one process group for all seeds, each run data-parallel; rank 0 writes and prints.
    with distributed_session(base.dist_backend, base.device) as ctx:
        for s in seeds:
            # One seed: OUT itself; several: OUT/seed<N>; no OUT: runs/<space>-<data>-...-s<N>.
            run_out = None if root is None else str(root if len(seeds) == 1 else root / f"seed{s}")
            results.append(run_search(base.replace(seed=s, out=run_out), resume=resume, overwrite=overwrite))
        if ctx.is_main:
            _print_summary(results)


def _print_summary(results: list[dict[str, Any]]) -> None:
    accs = [r["final"]["test_acc"] for r in results]
    for r in results:
        final = r["final"]
        typer.echo(f"seed {r['seed']}: val_acc {final['val_acc']:.4f} test_acc {final['test_acc']:.4f} "
                   f"({r['wall_seconds']:.0f}s) -> {r['config']['out']}")
    if len(accs) > 1:
        mean, std = statistics.mean(accs), statistics.stdev(accs)
        typer.echo(f"test_acc mean {mean:.4f} ± {std:.4f} over {len(accs)} seeds")


@app.command()
def retrain(
    run: Annotated[Path, typer.Argument(help="The search run directory whose architecture is retrained.")],
    out: Annotated[Path | None, typer.Option(help="Run directory (default RUN/retrain).")] = None,
    seed: Annotated[int | None, typer.Option(help="Weight seed (default: the search seed + 1000).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs (default: as the search).")] = None,
    limit_train: Annotated[int | None, typer.Option(help="Use only the first N training examples.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu | cuda | auto.")] = None,
    threads: Annotated[int | None, typer.Option(help="torch.set_num_threads.")] = None,
    match_gain: Annotated[bool, typer.Option(
        help="Rescale the fresh K-op weights to the conv's output scale (for architectures that amplify).")] = False,
    max_init_gain: Annotated[float | None, typer.Option(
        help="Rescale anyway when a found op scales by more than this factor (default 4; 0 = never).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted retrain.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a previous retrain in --out.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Fresh weights, the architecture found in RUN frozen: the standard NAS evaluation."""
    from .search import retrain as retrain_run

    r = retrain_run(run, out=out, seed=seed, epochs=epochs, resume=resume, overwrite=overwrite,
                    match_gain=match_gain or None, max_init_gain=max_init_gain,
                    limit_train=limit_train, device=device, threads=threads, quiet=quiet or None)
    _print_summary([r])


@app.command("eval")
def eval_(
    run: Annotated[Path, typer.Argument(help="A run directory.")],
    split: Annotated[str, typer.Option(help="test | val.")] = "test",
    device: Annotated[str | None, typer.Option(help="cpu | cuda | auto.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object.")] = False,
) -> None:
    """Accuracy and loss of a run's checkpoint on the test split."""
    from .search import evaluate_run

    if split not in ("test", "val"):
        raise typer.BadParameter(f"--split must be test or val, got {split!r}")
    r = evaluate_run(run, split=split, device=device)
    if as_json:
        typer.echo(json.dumps(r))
    else:
        typer.echo(f"{run}: {split}_acc {r[f'{split}_acc']:.4f} {split}_loss {r[f'{split}_loss']:.4f} "
                   f"({r['examples']} examples, checkpoint after epoch {r['epoch']})")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where the six run directories go.")] = Path("runs/demo"),
    epochs: Annotated[int | None, typer.Option(help="Epochs per run (default 10).")] = None,
    limit_train: Annotated[int | None, typer.Option(help="Training examples per run (default all).")] = None,
    depth: Annotated[int, typer.Option(help="Butterflies per K-matrix.")] = 3,
    seed: Annotated[int, typer.Option(help="Seed of every run.")] = 0,
    threads: Annotated[int | None, typer.Option(help="torch.set_num_threads.")] = None,
    smoke: Annotated[bool, typer.Option(help="A seconds-long version (1 epoch, 128 examples).")] = False,
    plots: Annotated[bool, typer.Option(help="Draw each K-op run's figures into RUN/plots.")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """The main job: conv vs warm-started vs from-scratch K-op LeNet on MNIST and permuted MNIST."""
    import time

    from .search.demo import run_demo

    options: dict[str, Any] = {"depth": depth, "seed": seed, "threads": threads, "quiet": quiet}
    if epochs is not None:
        options["epochs"] = epochs
    if limit_train is not None:
        options["limit_train"] = limit_train
    t0 = time.perf_counter()
    rows = run_demo(out, smoke=smoke, plots=plots, **options)
    _print_table(rows)
    typer.echo(f"demo finished in {time.perf_counter() - t0:.0f}s; run directories under {out}/ "
               f"(table in {out / 'summary.md'})")
    for r in rows:
        if r.get("plots"):
            typer.echo(f"figures: {r['plots']}")


def _print_table(rows: list[dict[str, Any]]) -> None:
    """A rich table in a terminal; markdown (never truncated, easy to paste) in logs and pipes."""
    from .search.demo import format_table

    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        Console = None
    if Console is None or not sys.stdout.isatty():
        typer.echo(format_table(rows))
        return
    table = Table(title="chrysalis demo: LeNet on MNIST (5k) and row/column-permuted MNIST")
    for col in ("data", "op", "method", "init", "val acc", "test acc", "conv dist", "seconds"):
        numeric = col in ("val acc", "test acc", "conv dist", "seconds")
        table.add_column(col, justify="right" if numeric else "left")
    for r in rows:
        dist = "-" if r["conv_distance"] is None else f"{r['conv_distance']:.3f}"
        table.add_row(r["data"], r["op"], r["method"], r["init"], f"{r['val_acc']:.4f}",
                      f"{r['test_acc']:.4f}", dist, f"{r['seconds']:.0f}")
    Console().print(table)


def _register_plugins() -> None:
    """Add the subcommands that live in their own modules (chrysalis.commands.<name>)."""
    for name in PLUGIN_COMMANDS:
        module_name = f"chrysalis.commands.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is not None and module_name.startswith(e.name):
                continue  # not written (yet): no command
            raise
        module.register(app)


_register_plugins()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 success, 1 error, 2 usage error, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("CHRYSALIS_DEBUG", "") not in ("", "0")
    try:
        rv = app(args=argv, prog_name="chrysalis", standalone_mode=False)
    except KeyboardInterrupt:
        print("chrysalis: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line, not a traceback: these are the user's errors, mostly
        if debug:
            raise
        exit_code = getattr(e, "exit_code", None)
        if hasattr(e, "format_message") and isinstance(exit_code, int):  # usage errors from typer
            print(f"chrysalis: error: {e.format_message()}", file=sys.stderr)
            return exit_code or 2
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"chrysalis: error: {msg}", file=sys.stderr)
        return 1
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
