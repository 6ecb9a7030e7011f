"""`chrysalis plot RUN [RUN ...] [--out DIR]`: PNG figures of runs (curves, K-op operators, K-matrices).

One run: its figures in RUN/plots (or --out). Several runs: each one's figures in its own
RUN/plots, plus `compare.png` (their accuracy curves together) in --out (default: the current
directory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the `plot` command to `app`."""

    @app.command("plot")
    def plot(
        runs: Annotated[list[Path], typer.Argument(help="One or more run directories.")],
        out: Annotated[Path | None, typer.Option(
            help="Where the PNGs go (one run: default RUN/plots; several: compare.png here, default .).")] = None,
        compare_only: Annotated[bool, typer.Option(
            "--compare-only", help="Several runs: draw only compare.png.")] = False,
    ) -> None:
        """Draw runs' training curves and, per K-op, what the search found (PNG files)."""
        from ..analysis.plots import plot_compare, plot_run

        if len(runs) == 1:
            paths = plot_run(runs[0], out)
            typer.echo(f"{len(paths)} figures in {paths[0].parent}: {', '.join(p.name for p in paths)}")
            return
        if not compare_only:
            for run in runs:
                paths = plot_run(run)
                typer.echo(f"{len(paths)} figures in {paths[0].parent}")
        path = plot_compare(runs, (out or Path(".")) / "compare.png")
        typer.echo(f"{len(runs)} runs compared in {path}")
