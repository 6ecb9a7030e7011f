"""`chrysalis sweep SWEEP.yaml`: many search runs from one grid, on this machine or a Ray cluster.

See chrysalis.sweep (the library) and docs/SCALING.md (the sweep file schema, launchers, resume).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def sweep(
    sweep_file: Annotated[Path, typer.Argument(metavar="SWEEP.yaml", help="The sweep file (see docs/SCALING.md).")],
    launcher: Annotated[str, typer.Option(help="local (processes on this machine) | ray (Ray Tune).")] = "local",
    workers: Annotated[int, typer.Option(help="Local launcher: trials at the same time (processes).")] = 1,
    out: Annotated[Path | None, typer.Option(help="Sweep directory (overrides `out` in the file).")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume/--no-resume",
        help="Skip finished trials, resume interrupted ones (default); --no-resume re-runs every trial.")] = True,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the trials and what would run.")] = False,
    address: Annotated[str | None, typer.Option(
        help="Ray launcher: the cluster address (default: RAY_ADDRESS, else a local Ray instance).")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a config key in every trial: --set key=value.")] = None,
) -> None:
    """Run a grid of searches (seeds x methods x inits x tasks ...) from a YAML file."""
    from .. import sweep as sw
    from ..cli import _parse_sets

    if launcher not in sw.LAUNCHERS:
        raise typer.BadParameter(f"--launcher must be one of {', '.join(sw.LAUNCHERS)}, got {launcher!r}")
    if workers < 1:
        raise typer.BadParameter(f"--workers must be >= 1, got {workers}")
    spec = sw.load_sweep(sweep_file, out=out, overrides=_parse_sets(set_))
    if dry_run:
        items = sw.plan(spec, resume)
        typer.echo(sw.format_plan(items))
        counts: dict[str, int] = {}
        for _, action in items:
            counts[action] = counts.get(action, 0) + 1
        summary = ", ".join(f"{n} {a}" for a, n in counts.items())
        typer.echo(f"{len(items)} trials in {spec.out} ({summary}); dry run: nothing was run")
        return
    records = sw.run_sweep(spec, launcher=launcher, workers=workers, resume=resume, address=address,
                           log=typer.echo)
    failed = [r for r in records if r["status"] == "failed"]
    typer.echo(f"results: {spec.out}/<trial>/results.json; status per trial: {spec.out}/trials.jsonl")
    _print_report(spec.out)
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(records)} trials failed (first: {failed[0]['trial']}: "
                           f"{failed[0]['error']}); see {spec.out}/trials.jsonl, then re-run to retry them")


def _print_report(out: str) -> None:
    """The aggregated mean ± std table (`chrysalis report OUT`), and how to get it again."""
    try:
        from ..analysis.report import report
    except ImportError:  # the report module is not there: just say how to aggregate
        report = None
    if report is not None:
        try:
            typer.echo(report([out]), nl=False)
        except Exception as e:  # noqa: BLE001 - the table is a courtesy; the sweep itself is done
            typer.echo(f"(no table: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})")
    typer.echo(f"aggregate again: chrysalis report {out} [--out report.md] [--csv report.csv]")


def register(app: typer.Typer) -> None:
    """Add `chrysalis sweep` to the command line."""
    app.command("sweep")(sweep)
