"""Aggregate finished runs into a table of mean ± sample std over seeds (markdown and CSV).

    from chrysalis.analysis.report import collect_runs, aggregate, to_markdown, to_csv
    rows = aggregate(collect_runs(["runs/"]))
    print(to_markdown(rows))

Runs are found by searching the given paths recursively for `results.json`. They are grouped by
data, space, op, method, init (K-ops only; "-" otherwise) and whether the run is a retrain; every
other difference (seed aside) stays inside the group and is listed in the markdown notes so that
runs trained with different recipes are never averaged silently. A search run whose `retrain/`
sub-directory holds a finished retrain contributes that run's test accuracy to its group's
"retrain test acc" column (and is not listed as a row of its own). Standard deviations are
sample ones (n - 1); with one run there is none.
"""

from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .runs import AnalysisError, finite, read_results

GROUP_KEYS = ("data", "space", "op", "method", "init", "retrain")
METRICS = ("val_acc", "test_acc", "retrain_test_acc", "wall_seconds")
METRIC_LABELS = {"val_acc": "val acc", "test_acc": "test acc", "retrain_test_acc": "retrain test acc",
                 "wall_seconds": "wall time (s)"}
# Config keys that may differ between the seeds of one group without comment.
IGNORED_KEYS = {"seed", "out", "quiet", "threads", "device", "tensorboard", "arch_from", "eval_batch_size",
                "checkpoint_every"}


@dataclass
class RunRecord:
    """One finished run as the report sees it."""

    path: Path
    results: dict[str, Any]
    key: tuple[str, ...]
    values: dict[str, float | None]

    @property
    def seed(self) -> Any:
        """The run's seed."""
        return self.results.get("seed", (self.results.get("config") or {}).get("seed"))


@dataclass
class Row:
    """One group of runs: its key, and per metric (mean, sample std or None, n)."""

    key: dict[str, str]
    runs: list[RunRecord]
    stats: dict[str, tuple[float | None, float | None, int]] = field(default_factory=dict)
    differs: list[str] = field(default_factory=list)

    @property
    def seeds(self) -> list[Any]:
        """The seeds of the group's runs, sorted."""
        return sorted((r.seed for r in self.runs), key=str)


def _group_key(results: dict[str, Any]) -> dict[str, str]:
    config = results.get("config") or {}
    op = str(results.get("op", config.get("op", "?")))
    init = results.get("init", config.get("init", "?")) if op == "kop" else "-"
    retrain = bool(results.get("retrain_of") or config.get("arch_from"))
    data = str(config.get("data", (results.get("data") or {}).get("name", "?")))
    # spherical data: NR/NR, NR/R and R/R are different tasks (the resolved options, defaults included)
    options = (results.get("data") or {}).get("options") or config.get("data_options") or {}
    rotation = options.get("rotation")
    if rotation and options.get("train_rotations", 1) > 1:  # rotation-augmented training: another recipe
        rotation = f"{rotation} ({options['train_rotations']} train rotations)"
    return {
        "data": f"{data} {rotation}" if rotation else data,
        "space": str(config.get("space", "?")),
        "op": op,
        "method": str(results.get("method", config.get("method", "?"))),
        "init": str(init),
        "retrain": "yes" if retrain else "no",
    }


def _number(x: Any) -> float | None:
    return float(x) if finite(x) else None


def collect_runs(paths: list[str | Path]) -> list[RunRecord]:
    """Every finished run (a directory with results.json) under `paths`, searched recursively."""
    if not paths:
        raise AnalysisError("no run directories given")
    found: dict[Path, None] = {}
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise AnalysisError(f"no such run directory: {p}")
        if p.is_file():
            if p.name != "results.json":
                raise AnalysisError(f"{p} is neither a directory nor a results.json")
            found[p.parent.resolve()] = None
            continue
        for r in sorted(p.rglob("results.json")):
            found[r.parent.resolve()] = None
    records = []
    for run_dir in found:
        results = read_results(run_dir)
        if results is None:
            continue
        if (results.get("retrain_of") or (results.get("config") or {}).get("arch_from")) and run_dir.parent in found:
            continue  # a retrain of a listed search: it is that row's "retrain test acc", not a row of its own
        final = results.get("final") or {}
        retrain = read_results(run_dir / "retrain") if (run_dir / "retrain").is_dir() else None
        values = {
            "val_acc": _number(final.get("val_acc")),
            "test_acc": _number(final.get("test_acc")),
            "retrain_test_acc": _number(((retrain or {}).get("final") or {}).get("test_acc")),
            "wall_seconds": _number(results.get("wall_seconds")),
        }
        key = _group_key(results)
        records.append(RunRecord(run_dir, results, tuple(key[k] for k in GROUP_KEYS), values))
    if not records:
        raise AnalysisError(f"no finished runs (results.json) under {', '.join(str(p) for p in paths)}")
    return records


def mean_std(values: list[float]) -> tuple[float | None, float | None, int]:
    """(mean, sample standard deviation or None for fewer than 2 values, n)."""
    if not values:
        return None, None, 0
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    return mean, std, len(values)


def aggregate(records: list[RunRecord]) -> list[Row]:
    """Group runs (GROUP_KEYS) and compute mean ± sample std of every metric over each group."""
    groups: dict[tuple[str, ...], list[RunRecord]] = {}
    for r in records:
        groups.setdefault(r.key, []).append(r)
    rows = []
    for key in sorted(groups):
        runs = sorted(groups[key], key=lambda r: (str(r.seed), str(r.path)))
        row = Row(dict(zip(GROUP_KEYS, key)), runs)
        for m in METRICS:
            row.stats[m] = mean_std([r.values[m] for r in runs if r.values[m] is not None])
        configs = [r.results.get("config") or {} for r in runs]
        keys = sorted({k for c in configs for k in c} - IGNORED_KEYS)
        row.differs = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]
        rows.append(row)
    return rows


def _fmt(stat: tuple[float | None, float | None, int], percent: bool, n_total: int) -> str:
    mean, std, n = stat
    if mean is None:
        return "-"
    scale, digits = (100.0, 2) if percent else (1.0, 1)
    s = f"{mean * scale:.{digits}f}"
    if std is not None:
        s += f" ± {std * scale:.{digits}f}"
    if n != n_total:
        s += f" (n={n})"
    return s


def to_markdown(rows: list[Row]) -> str:
    """A markdown table (accuracies in %, mean ± sample std), with notes on mixed recipes."""
    head = [*GROUP_KEYS, *(METRIC_LABELS[m] + (" %" if m != "wall_seconds" else "") for m in METRICS), "n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < len(GROUP_KEYS) else "---:"
                                                          for i in range(len(head))) + "|"]
    notes = []
    for i, row in enumerate(rows, 1):
        n = len(row.runs)
        cells = [row.key[k] for k in GROUP_KEYS]
        cells += [_fmt(row.stats[m], m != "wall_seconds", n) for m in METRICS]
        cells.append(str(n))
        lines.append("| " + " | ".join(cells) + " |")
        if row.differs:
            notes.append(f"- row {i} ({row.key['data']}, {row.key['op']}, {row.key['method']}) mixes runs that "
                         f"differ in: {', '.join(row.differs)}")
    text = "\n".join(lines) + "\n\nMean ± sample standard deviation over the runs (seeds) of each row; n = runs."
    if notes:
        text += "\n\nNotes:\n" + "\n".join(notes)
    return text + "\n"


def to_csv(rows: list[Row]) -> str:
    """CSV with one line per group: the keys, then mean, std (empty if n < 2) and n per metric, seeds, runs."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = list(GROUP_KEYS)
    for m in METRICS:
        header += [f"{m}_mean", f"{m}_std", f"{m}_n"]
    header += ["n_runs", "seeds", "differs", "runs"]
    writer.writerow(header)
    for row in rows:
        line: list[Any] = [row.key[k] for k in GROUP_KEYS]
        for m in METRICS:
            mean, std, n = row.stats[m]
            line += ["" if mean is None else repr(mean), "" if std is None else repr(std), n]
        line += [len(row.runs), " ".join(str(s) for s in row.seeds), " ".join(row.differs),
                 " ".join(str(r.path) for r in row.runs)]
        writer.writerow(line)
    return buf.getvalue()


def headline(rows: list[Row]) -> str:
    """Per dataset: the best fixed baseline (op conv/fft) against the best K-op row, by mean test accuracy.

    The research protocol's summary (DESIGN §3): "best" ranks rows by their mean test accuracy
    (a K-op row by the better of its searched and retrained means); it chooses nothing during the
    search. Gains are in points, for the searched model as is and after retraining.
    """
    by_data: dict[str, list[Row]] = {}
    for r in rows:
        if r.key["retrain"] == "no":
            by_data.setdefault(r.key["data"], []).append(r)
    lines = ["| data | space | best fixed | test acc % | best K-op | test acc % | retrain test acc % "
             "| gain (points) | gain after retrain | seeds |", "|---|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for data, rs in by_data.items():
        fixed = [r for r in rs if r.key["op"] in ("conv", "fft") and r.stats["test_acc"][0] is not None]
        kop = [r for r in rs if r.key["op"] == "kop" and r.stats["test_acc"][0] is not None]
        if not fixed or not kop:
            continue
        f = max(fixed, key=lambda r: r.stats["test_acc"][0])
        k = max(kop, key=lambda r: max(r.stats["test_acc"][0], r.stats["retrain_test_acc"][0] or 0.0))
        base, searched, retrained = f.stats["test_acc"][0], k.stats["test_acc"][0], k.stats["retrain_test_acc"][0]
        name = f"{k.key['method']}, {'warm start' if k.key['init'] == 'conv' else 'from scratch'}"
        cells = [data, f.key["space"], f.key["op"], _fmt(f.stats["test_acc"], True, len(f.runs)), name,
                 _fmt(k.stats["test_acc"], True, len(k.runs)), _fmt(k.stats["retrain_test_acc"], True, len(k.runs)),
                 f"{100 * (searched - base):+.1f}", "-" if retrained is None else f"{100 * (retrained - base):+.1f}",
                 str(min(len(f.runs), len(k.runs)))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report(
    paths: list[str | Path], *, out: str | Path | None = None, csv_path: str | Path | None = None,
    headline_only: bool = False,
) -> str:
    """Collect, aggregate and format; write the markdown to `out` and the CSV to `csv_path` if given.

    `headline_only`: the per-dataset best-fixed vs best-K-op summary instead of the full table.
    """
    rows = aggregate(collect_runs(paths))
    text = headline(rows) if headline_only else to_markdown(rows)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
    if csv_path is not None:
        Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
        Path(csv_path).write_text(to_csv(rows))
    return text


__all__ = ["GROUP_KEYS", "METRICS", "Row", "RunRecord", "aggregate", "collect_runs", "headline", "mean_std", "report",
           "to_csv", "to_markdown"]
