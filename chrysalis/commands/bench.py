"""`chrysalis bench [--quick] [--out FILE.json] [--threads N]`: time conv vs FFT vs K-op."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the `bench` command to `app`."""

    @app.command("bench")
    def bench(
        quick: Annotated[bool, typer.Option(help="A < 1 minute version (fewer repeats and sizes).")] = False,
        out: Annotated[Path | None, typer.Option(help="Write the results as JSON here.")] = None,
        threads: Annotated[int | None, typer.Option(help="torch.set_num_threads (default: torch's).")] = None,
    ) -> None:
        """Forward and forward+backward time and memory of nn.ConvNd, fixed-FFT and searchable K-ops,
        KMatrix against torch.fft, and a whole ButterfLeNet training step against LeNet's: ratios to
        the baseline measured in the same process, median of repeats."""
        from ..bench import cli_entry

        if threads is not None and threads < 1:
            raise typer.BadParameter(f"--threads must be >= 1, got {threads}")
        cli_entry(quick=quick, out=None if out is None else str(out), threads=threads)
