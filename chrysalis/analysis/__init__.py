"""Looking at runs: export the found model, plot what it learned, aggregate runs into tables.

    from chrysalis.analysis import export_run, load_exported, plot_run, report
    export_run("runs/x", "exports/x"); model = load_exported("exports/x")
    plot_run("runs/x")                          # PNGs in runs/x/plots/
    print(report(["runs/"]))                    # mean ± std over seeds, markdown

See docs/ANALYSIS.md.
"""

from .export import ExportError, export_run, load_arch, load_exported, read_manifest
from .plots import expected_figures, plot_run
from .report import aggregate, collect_runs, to_csv, to_markdown
from .report import report as report
from .runs import AnalysisError, LoadedRun, load_run

__all__ = [
    "AnalysisError", "ExportError", "LoadedRun", "aggregate", "collect_runs", "expected_figures", "export_run",
    "load_arch", "load_exported", "load_run", "plot_run", "read_manifest", "report", "to_csv", "to_markdown",
]
