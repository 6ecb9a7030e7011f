"""`chrysalis report RUN... [--out report.md] [--csv report.csv]`: mean ± std over seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the `report` command to `app`."""

    @app.command("report")
    def report(
        runs: Annotated[list[Path], typer.Argument(help="Run directories, or directories holding runs.")],
        out: Annotated[Path | None, typer.Option(help="Write the markdown table here.")] = None,
        csv: Annotated[Path | None, typer.Option("--csv", help="Write a CSV table here.")] = None,
        headline: Annotated[bool, typer.Option(help="Per dataset: best fixed baseline vs best K-op only.")] = False,
    ) -> None:
        """Aggregate runs (searched recursively for results.json) into a mean ± std table per setting."""
        from ..analysis.report import report as make_report

        typer.echo(make_report(list(runs), out=out, csv_path=csv, headline_only=headline), nl=False)
