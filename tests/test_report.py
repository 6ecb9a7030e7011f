"""chrysalis report: mean ± sample std over seeds, grouped by setting, on real tiny runs."""

from __future__ import annotations

import csv
import io
import json
import statistics

import pytest

from chrysalis.analysis.report import AnalysisError, aggregate, collect_runs, report, to_csv
from chrysalis.cli import main
from chrysalis.search import SearchConfig, retrain, run_search

RUN = dict(data="permuted-digits", space="lenet", space_options={"padding": 2}, epochs=1, batch_size=32,
           limit_train=64, limit_val=32, quiet=True, tensorboard=False, threads=1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report_runs")
    for seed in (0, 1):
        run_search(SearchConfig(**RUN, op="kop", method="joint", init="conv", arch_lr=1e-2, seed=seed,
                                out=str(root / "kop" / f"seed{seed}")))
        run_search(SearchConfig(**RUN, op="conv", method="fixed", seed=seed, lr=0.05,
                                out=str(root / "nested" / "conv" / f"seed{seed}")))
    retrain(root / "kop" / "seed0")  # -> kop/seed0/retrain
    return root


def results(path) -> dict:
    return json.loads((path / "results.json").read_text())


def test_groups_means_and_stds(runs):
    rows = {(r.key["op"], r.key["method"], r.key["retrain"]): r for r in aggregate(collect_runs([runs]))}
    # the retrain of a listed search is that row's retrain column, not a row of its own
    assert set(rows) == {("kop", "joint", "no"), ("conv", "fixed", "no")}
    for (op, method, _), folder in ((("kop", "joint", "no"), "kop"), (("conv", "fixed", "no"), "nested/conv")):
        row = rows[(op, method, "no")]
        rs = [results(runs / folder / f"seed{s}") for s in (0, 1)]
        assert len(row.runs) == 2 and row.seeds == [0, 1]
        for metric, values in (("test_acc", [r["final"]["test_acc"] for r in rs]),
                               ("val_acc", [r["final"]["val_acc"] for r in rs]),
                               ("wall_seconds", [r["wall_seconds"] for r in rs])):
            mean, std, n = row.stats[metric]
            assert n == 2
            assert mean == pytest.approx(sum(values) / 2, abs=1e-12)
            assert std == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5, abs=1e-12)  # sample std, n=2
    assert rows[("kop", "joint", "no")].key["init"] == "conv" and rows[("conv", "fixed", "no")].key["init"] == "-"
    # the retrain column: only seed0 was retrained
    retrained = results(runs / "kop" / "seed0" / "retrain")
    mean, std, n = rows[("kop", "joint", "no")].stats["retrain_test_acc"]
    assert (mean, std, n) == (retrained["final"]["test_acc"], None, 1)
    assert rows[("conv", "fixed", "no")].stats["retrain_test_acc"] == (None, None, 0)
    # a retrain listed without its search is a row of its own
    alone = {(r.key["op"], r.key["method"], r.key["retrain"]): r for r in aggregate(
        collect_runs([runs / "kop" / "seed0" / "retrain"]))}
    assert alone[("kop", "fixed", "yes")].stats["test_acc"] == (retrained["final"]["test_acc"], None, 1)


def test_markdown_and_csv(runs, tmp_path):
    text = report([runs / "kop", runs / "nested"], out=tmp_path / "r" / "report.md", csv_path=tmp_path / "r.csv")
    assert (tmp_path / "r" / "report.md").read_text() == text
    lines = [ln for ln in text.splitlines() if ln.startswith("| permuted-digits")]
    assert len(lines) == 2
    rs = [results(runs / "nested" / "conv" / f"seed{s}")["final"]["test_acc"] for s in (0, 1)]
    conv_line = next(ln for ln in lines if "| conv |" in ln)
    assert f"{100 * statistics.mean(rs):.2f} ± {100 * statistics.stdev(rs):.2f}" in conv_line
    assert conv_line.rstrip(" |").endswith("2")
    table = list(csv.DictReader(io.StringIO((tmp_path / "r.csv").read_text())))
    assert len(table) == 2
    conv = next(r for r in table if r["op"] == "conv")
    assert float(conv["test_acc_mean"]) == pytest.approx(statistics.mean(rs))
    assert float(conv["test_acc_std"]) == pytest.approx(statistics.stdev(rs))
    assert conv["n_runs"] == "2" and conv["seeds"] == "0 1" and conv["retrain_test_acc_n"] == "0"
    assert to_csv(aggregate(collect_runs([runs]))).splitlines()[0].startswith("data,space,op,method,init,retrain")


def test_mixed_recipes_are_flagged(runs, tmp_path):
    rows = aggregate(collect_runs([runs / "nested" / "conv" / "seed0", runs / "kop"]))
    assert all(not r.differs for r in rows)
    # a run of the same setting with another number of epochs is listed as a difference
    run_search(SearchConfig(**{**RUN, "epochs": 2}, op="conv", method="fixed", seed=5, lr=0.05,
                            out=str(tmp_path / "conv5")))
    text = report([runs / "nested", tmp_path / "conv5"])
    assert "differ in: epochs" in text


def test_errors(tmp_path, capsys):
    with pytest.raises(AnalysisError, match="no finished runs"):
        collect_runs([tmp_path])
    assert main(["report", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("chrysalis: error: no such run directory") and "Traceback" not in err


def test_cli_report(runs, tmp_path, capsys):
    assert main(["report", str(runs), "--out", str(tmp_path / "a.md"), "--csv", str(tmp_path / "a.csv")]) == 0
    out = capsys.readouterr().out
    assert "| data | space | op | method | init | retrain |" in out
    assert (tmp_path / "a.md").read_text() == out and (tmp_path / "a.csv").is_file()


def test_headline_best_fixed_against_best_kop(runs):
    from chrysalis.analysis.report import headline

    text = headline(aggregate(collect_runs([runs])))
    line = next(ln for ln in text.splitlines() if ln.startswith("| permuted-digits"))
    conv = [results(runs / "nested" / "conv" / f"seed{s}")["final"]["test_acc"] for s in (0, 1)]
    kop = [results(runs / "kop" / f"seed{s}")["final"]["test_acc"] for s in (0, 1)]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2] == "conv" and cells[4] == "joint, warm start"
    assert cells[7] == f"{100 * (statistics.mean(kop) - statistics.mean(conv)):+.1f}"
    assert cells[-1] == "2"


def test_spherical_rotation_settings_are_separate_tasks(tmp_path):
    cfg = dict(RUN, data="spherical-digits", space="spherical", space_options={}, op="conv", method="fixed")
    cfg["data_options"] = {"grid": 8}
    for rotation in ("NR/R", "R/R"):
        run_search(SearchConfig(**{**cfg, "data_options": {"grid": 8, "rotation": rotation}},
                                out=str(tmp_path / rotation.replace("/", "") / "seed0")))
    run_search(SearchConfig(**cfg, out=str(tmp_path / "default" / "seed0")))  # the default rotation: NR/NR
    # rotation-augmented training (train_rotations > 1) is another recipe on the same task: its own row
    run_search(SearchConfig(**{**cfg, "data_options": {"grid": 8, "rotation": "R/R", "train_rotations": 2}},
                            out=str(tmp_path / "RR2" / "seed0")))
    rows = aggregate(collect_runs([tmp_path]))
    assert sorted(r.key["data"] for r in rows) == ["spherical-digits NR/NR", "spherical-digits NR/R",
                                                   "spherical-digits R/R",
                                                   "spherical-digits R/R (2 train rotations)"]
    assert all(len(r.runs) == 1 and not r.differs for r in rows)
