"""`chrysalis plot RUN [--out DIR]`: PNG figures of a run (curves, K-op operators, K-matrices)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the `plot` command to `app`."""

    @app.command("plot")
    def plot(
        run: Annotated[Path, typer.Argument(help="A run directory.")],
        out: Annotated[Path | None, typer.Option(help="Where the PNGs go (default RUN/plots).")] = None,
    ) -> None:
        """Draw a run's training curves and, per K-op, what the search found (PNG files)."""
        from ..analysis.plots import plot_run

        paths = plot_run(run, out)
        typer.echo(f"{len(paths)} figures in {paths[0].parent}: {', '.join(p.name for p in paths)}")
