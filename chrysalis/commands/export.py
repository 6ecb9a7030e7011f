"""`chrysalis export RUN [--out DIR]`: the found architecture and model as safetensors + a manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the `export` command to `app`."""

    @app.command("export")
    def export(
        run: Annotated[Path, typer.Argument(help="A run directory (with config.yaml and checkpoint.pt).")],
        out: Annotated[Path | None, typer.Option(help="Export directory (default RUN/export).")] = None,
    ) -> None:
        """Export the found architecture (arch.safetensors), the model (model.safetensors) and manifest.json."""
        from ..analysis.export import export_run

        target = out if out is not None else run / "export"
        manifest = export_run(run, target)
        kops = ", ".join(k["name"] for k in manifest["kops"]) or "none"
        typer.echo(f"exported {run} (epoch {manifest['source']['epoch']}) -> {target}: "
                   f"{len(manifest['tensors'])} tensors, {manifest['num_arch_params']} architecture numbers, "
                   f"K-ops: {kops}")
